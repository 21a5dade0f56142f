"""Trooper as a faithful Anthropic proxy: the SDK through Trooper against the fake Anthropic.

Every test here talks over real loopback sockets — Trooper served by uvicorn as ``trooper serve``
serves it, the fake on its own — because what is checked is what crosses the wire: headers once
each, bytes as they were, SSE as it arrives.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import anthropic
import attrs
import httpx
import orjson
import pytest

from tests.conftest import API_KEY, Harness, make_config
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url
from trooper.testing import fake_anthropic as script

MODEL = "claude-sonnet-4-6"


@pytest.fixture
def trooper(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> Iterator[Harness]:
    harness = Harness(make_config(), MemoryStore(), fake_cloud, fake_local, in_process=False).start()
    yield harness
    harness.stop()


@pytest.fixture
def client(trooper: Harness) -> anthropic.Anthropic:
    return trooper.client()


@pytest.fixture
def cloud_only(fake_cloud: FakeAnthropic) -> Iterator[Harness]:
    """No local provider: upstream errors reach the client as they are (no fallback), after Trooper's
    own retries of 5xx answers, here a few milliseconds apart."""
    config = make_config()
    config = attrs.evolve(config, anthropic=attrs.evolve(config.anthropic, overload_backoff=0.01))
    harness = Harness(config, MemoryStore(), fake_cloud.url, None, in_process=False).start()
    yield harness
    harness.stop()


def _raw_post(url: str, body: bytes, **headers: str) -> httpx.Response:
    base = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    return httpx.post(url, content=body, headers={**base, **headers}, timeout=30)


def test_create_forwards_the_original_bytes(trooper: Harness, fake_cloud: FakeAnthropic) -> None:
    fake_cloud.enqueue(script.text("hello from the cloud"))
    body = orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi  there"}],
            "metadata": {"user_id": "u1"},
        }
    )
    reply = _raw_post(f"{trooper.url}/v1/messages", body)
    assert reply.status_code == 200
    assert reply.json()["content"][0]["text"] == "hello from the cloud"
    assert reply.headers["x-trooper-route"] == "cloud"
    assert reply.headers["request-id"].startswith("req_")
    assert fake_cloud.requests[-1].body == body


def test_each_response_header_appears_once(trooper: Harness, fake_cloud: FakeAnthropic) -> None:
    """The upstream's ``date`` and ``server`` come through once, not beside uvicorn's own."""
    body = orjson.dumps({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    direct = _raw_post(f"{fake_cloud.url}/v1/messages", body)
    for stream in (False, True):
        relayed = _raw_post(f"{trooper.url}/v1/messages", orjson.dumps({**orjson.loads(body), "stream": stream}))
        assert relayed.status_code == 200
        for name in ("date", "server", "content-type", "request-id"):
            assert len(relayed.headers.get_list(name)) == len(direct.headers.get_list(name)) == 1, name
        assert relayed.headers["server"] == direct.headers["server"]
    # A response Trooper makes itself (here an error) is dated once too.
    own = _raw_post(f"{trooper.url}/v1/messages", b"{not json")
    assert own.status_code == 400 and len(own.headers.get_list("date")) == 1
    assert "server" not in own.headers


def test_sdk_create(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    fake_cloud.enqueue(script.text("first", "second"))
    message = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert [block.text for block in message.content if block.type == "text"] == ["first", "second"]
    assert message.id.startswith("msg_")
    assert message.usage.input_tokens > 0


def test_sdk_stream_text_deltas_and_final_message(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    fake_cloud.enqueue(script.text("streamed words arrive one by one"))
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(deltas) == "streamed words arrive one by one"
    assert len(deltas) > 1
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx-aiohttp", "httpx"])
def test_every_transport_relays_the_same_bytes(fake_cloud: FakeAnthropic, transport: str) -> None:
    """The three client stacks of ``anthropic.transport`` are interchangeable: same bytes both ways."""
    config = make_config()
    config = attrs.evolve(config, anthropic=attrs.evolve(config.anthropic, transport=transport))
    harness = Harness(config, MemoryStore(), fake_cloud.url, None, in_process=False).start()
    try:
        fake_cloud.enqueue(script.text("plain"), script.text("streamed", "twice"))
        body = orjson.dumps({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        reply = _raw_post(f"{harness.url}/v1/messages", body, **{"anthropic-beta": "x-1"})
        assert reply.json()["content"][0]["text"] == "plain"
        assert fake_cloud.requests[-1].body == body
        assert dict(fake_cloud.requests[-1].headers)["anthropic-beta"] == "x-1"
        with harness.client().messages.stream(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            assert "".join(stream.text_stream) == "streamedtwice"
        fake_cloud.enqueue(script.rate_limited(retry_after=3))
        with pytest.raises(anthropic.RateLimitError) as info:
            harness.client().messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
        assert info.value.response.headers["retry-after"] == "3"
    finally:
        harness.stop()


def test_sse_is_relayed_as_it_arrives(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    fake_cloud.enqueue(script.text("one two three four five six").slow(events=0.15))
    started = time.monotonic()
    first_at = None
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        for _ in stream.text_stream:
            if first_at is None:
                first_at = time.monotonic() - started
        done_at = time.monotonic() - started
    assert first_at is not None
    # The upstream needs well over a second to finish; the first delta must not wait for that.
    assert done_at > 1.0
    assert first_at < done_at / 2


def test_tool_use_round_trip(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    fake_cloud.enqueue(script.tool_use("get_weather", {"city": "Paris"}), script.text("It is sunny."))
    tools = [
        {
            "name": "get_weather",
            "description": "weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    history: list[dict[str, object]] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=history)  # type: ignore[arg-type]
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.input == {"city": "Paris"}
    history += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24C"}]},
    ]
    second = client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=history)  # type: ignore[arg-type]
    assert second.content[0].type == "text"
    sent = fake_cloud.last_json()
    assert sent["messages"][-1]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": "sunny, 24C",
    }


@pytest.mark.parametrize("force_field", [False, True])
def test_thinking_blocks_stay_byte_exact(
    client: anthropic.Anthropic, fake_cloud: FakeAnthropic, force_field: bool
) -> None:
    fake_cloud.enqueue(script.thinking('Let me think about ünïcode "quotes"\n and lines', "answer"))
    first = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=[{"role": "user", "content": "q"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    thought = first.content[0]
    assert thought.type == "thinking"
    history = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": "next"},
    ]
    extra = {"x_force_local": False} if force_field else None
    client.messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=history,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body=extra,
    )
    sent = fake_cloud.last_json()
    block = sent["messages"][1]["content"][0]
    assert block == {"type": "thinking", "thinking": thought.thinking, "signature": thought.signature}
    assert "x_force_local" not in sent


def test_count_tokens(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    fake_cloud.enqueue_count_tokens(script.token_count(1234))
    counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 1234
    assert fake_cloud.requests[-1].path == "/v1/messages/count_tokens"


def test_models_list(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    models = client.models.list(limit=2)
    assert len(models.data) == 2
    assert all(model.id for model in models.data)
    assert fake_cloud.requests[-1].query == "limit=2"


def test_unknown_fields_and_beta_headers_arrive_verbatim(trooper: Harness, fake_cloud: FakeAnthropic) -> None:
    body = orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "medium"},
            "stream": False,
        }
    )
    reply = _raw_post(
        f"{trooper.url}/v1/messages?beta=true",
        body,
        **{
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
            "x-app": "cli",
            "X-Claude-Code-Session-Id": "5f1b3c8e-0000-4000-8000-000000000001",
        },
    )
    assert reply.status_code == 200
    received = fake_cloud.requests[-1]
    assert received.query == "beta=true"
    assert received.body == body
    assert received.header("anthropic-beta") == "claude-code-20250219,interleaved-thinking-2025-05-14"
    assert received.header("x-app") == "cli"
    assert received.header("x-api-key") == API_KEY
    assert received.header("anthropic-version") == "2023-06-01"


def test_upstream_gets_the_clients_headers_and_nothing_the_proxy_made_up(
    trooper: Harness, fake_cloud: FakeAnthropic
) -> None:
    """No User-Agent, Accept, Accept-Encoding or Content-Type of the HTTP client's own: only the client's."""
    body = orjson.dumps({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    host, port = trooper.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/messages", skip_host=False, skip_accept_encoding=True)
    for name, value in (
        ("x-api-key", API_KEY),
        ("anthropic-version", "2023-06-01"),
        ("X-Custom", "a"),
        ("X-Custom", "b"),
    ):
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    assert connection.getresponse().status == 200
    connection.close()
    received = fake_cloud.requests[-1]
    names = sorted(name.lower() for name, _ in received.headers)
    assert names == ["anthropic-version", "content-length", "host", "x-api-key", "x-custom", "x-custom"]
    assert [v for k, v in received.headers if k.lower() == "x-custom"] == ["a", "b"]


def test_x_force_local_false_never_reaches_the_cloud(client: anthropic.Anthropic, fake_cloud: FakeAnthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}], extra_body={"x_force_local": False}
    )
    assert message.content[0].type == "text"
    assert b"x_force_local" not in fake_cloud.received_bytes()


@pytest.mark.parametrize(
    ("reply", "exception"),
    [
        (script.rate_limited(retry_after=7), anthropic.RateLimitError),
        (script.unauthorized(), anthropic.AuthenticationError),
        (script.forbidden(), anthropic.PermissionDeniedError),
        (script.server_error(), anthropic.InternalServerError),
        (script.overloaded(), anthropic.APIStatusError),
        (script.error(400, "messages.0.content: bad"), anthropic.BadRequestError),
        (script.error(404, "model: not found"), anthropic.NotFoundError),
    ],
)
def test_upstream_errors_surface_as_typed_sdk_exceptions(
    cloud_only: Harness, fake_cloud: FakeAnthropic, reply: script.ErrorReply, exception: type[anthropic.APIStatusError]
) -> None:
    fake_cloud.default = reply
    with pytest.raises(exception) as info:
        cloud_only.client().messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}])
    error = info.value
    assert error.status_code == reply.status
    assert error.body["type"] == "error"  # type: ignore[index]
    assert error.response.headers["request-id"].startswith("req_")
    if reply.status == 429:
        assert error.response.headers["retry-after"] == "7"
        assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def _assert_error(reply: httpx.Response, status: int, error_type: str, mentions: str) -> None:
    assert reply.status_code == status, reply.text
    payload = reply.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == error_type
    assert mentions in payload["error"]["message"]


def test_trooper_errors_use_anthropic_shape_and_the_server_keeps_serving(
    fake_cloud: FakeAnthropic, client: anthropic.Anthropic, trooper: Harness
) -> None:
    url = f"{trooper.url}/v1/messages"
    _assert_error(_raw_post(url, b"{not json"), 400, "invalid_request_error", "not valid JSON")
    _assert_error(_raw_post(url, b"[1, 2]"), 400, "invalid_request_error", "JSON object")
    _assert_error(_raw_post(url, b"\xff\xfe{}"), 400, "invalid_request_error", "not valid JSON")
    _assert_error(
        _raw_post(url, orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": "hi"})),
        400,
        "invalid_request_error",
        "messages",
    )
    _assert_error(
        _raw_post(
            url,
            orjson.dumps(
                {
                    "model": MODEL,
                    "max_tokens": 5,
                    "x_force_local": "yes",
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ),
        ),
        400,
        "invalid_request_error",
        "x_force_local",
    )
    _assert_error(httpx.get(f"{trooper.url}/v1/nope"), 404, "not_found_error", "/v1/nope")
    _assert_error(httpx.post(f"{trooper.url}/elsewhere"), 404, "not_found_error", "/elsewhere")
    assert fake_cloud.requests == []
    assert client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "ok?"}]).content


def test_body_over_the_limit_is_413(fake_cloud: FakeAnthropic) -> None:
    config = make_config()
    import attrs

    config = attrs.evolve(config, server=attrs.evolve(config.server, max_body_bytes=1000))
    harness = Harness(config, MemoryStore(), fake_cloud.url, None, in_process=False).start()
    try:
        big = orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 5000}]})
        _assert_error(_raw_post(f"{harness.url}/v1/messages", big), 413, "request_too_large", "1000 bytes")
        small = orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        assert _raw_post(f"{harness.url}/v1/messages", small).status_code == 200
    finally:
        harness.stop()


def test_unreachable_upstream_is_a_clear_error_not_a_hang() -> None:
    harness = Harness(make_config(), MemoryStore(), unused_port_url(), None, in_process=False).start()
    try:
        started = time.monotonic()
        with pytest.raises(anthropic.InternalServerError) as info:
            harness.client().messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert time.monotonic() - started < 10
        assert info.value.status_code == 502
        assert "cannot reach" in info.value.message
        assert httpx.get(f"{harness.url}/").status_code == 200
    finally:
        harness.stop()


def test_health_endpoints(trooper: Harness) -> None:
    head = httpx.head(f"{trooper.url}/")
    assert head.status_code == 200 and len(head.headers.get_list("date")) == 1
    health = httpx.get(f"{trooper.url}/").json()
    assert health["status"] == "ok"
    assert API_KEY not in httpx.get(f"{trooper.url}/").text
