"""The fake Anthropic upstream, checked with the official SDK as client (and httpx for raw bytes).

If the SDK parses what the fake sends and raises the right typed exception for each scripted failure,
tests that put Trooper between the two are testing Trooper, not the fake.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from trooper.testing.fake_anthropic import (
    CREDIT_BALANCE_TOO_LOW,
    ErrorReply,
    FakeAnthropic,
    RecordedRequest,
    Reply,
    Text,
    Thinking,
    ToolUse,
    Usage,
    credit_balance_too_low,
    disconnect,
    estimate_tokens,
    forbidden,
    hang,
    overloaded,
    rate_limited,
    redacted_thinking,
    server_error,
    spend_limit_reached,
    text,
    thinking,
    token_count,
    tool_use,
    unauthorized,
    unified_quota_rejected,
)
from trooper.wire import SSEDecoder

MODEL = "claude-sonnet-5"
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(shared: FakeAnthropic) -> Iterator[FakeAnthropic]:
    shared.reset()
    yield shared
    shared.reset()


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0) as sdk:
        yield sdk


def create(client: anthropic.Anthropic, **kwargs: Any) -> dict[str, Any]:
    """A non-streamed call, as a plain dict (the SDK's block union is awkward to index)."""
    message: anthropic.types.Message = client.messages.create(
        model=MODEL, max_tokens=kwargs.pop("max_tokens", 64), messages=kwargs.pop("messages", HELLO), **kwargs
    )
    return message.model_dump()


def streamed(client: anthropic.Anthropic, **kwargs: Any) -> dict[str, Any]:
    """A streamed call through the SDK's accumulator, as a plain dict."""
    with client.messages.stream(
        model=MODEL, max_tokens=kwargs.pop("max_tokens", 64), messages=kwargs.pop("messages", HELLO), **kwargs
    ) as stream:
        return stream.get_final_message().model_dump()


Call = Callable[..., dict[str, Any]]


def first_text(message: dict[str, Any]) -> str:
    return str(message["content"][0]["text"])


def sse(response: httpx.Response) -> list[tuple[str, Any]]:
    decoder = SSEDecoder()
    frames = [frame for chunk in response.iter_raw() for frame in decoder.feed(chunk)]
    return [(event, orjson.loads(data)) for event, data in frames]


# ----------------------------------------------------------------------------------------- replies


def test_default_reply_is_ok_with_real_message_shape(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    message = create(client)
    assert message["id"].startswith("msg_01") and len(message["id"]) == len("msg_01") + 22
    assert message["content"] == [{"type": "text", "text": "ok", "citations": None}]
    assert (message["model"], message["role"], message["stop_reason"], message["stop_sequence"]) == (
        MODEL,
        "assistant",
        "end_turn",
        None,
    )
    usage = message["usage"]
    assert usage["input_tokens"] == estimate_tokens({"messages": HELLO})
    assert usage["output_tokens"] >= 1 and usage["cache_read_input_tokens"] == 0
    assert usage["service_tier"] == "standard"


def test_describe_summarises_the_request(
    fake: FakeAnthropic, client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "describe", True)
    history = [*HELLO, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "what is 2+2?"}]
    assert first_text(create(client, messages=history)) == f"ok [model={MODEL} messages=3 last_user='what is 2+2?']"


def test_scripts_are_consumed_in_order_then_default(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(text("one"), text("two", "three", stop_reason="max_tokens", usage=Usage(7, 9)))
    assert first_text(create(client)) == "one"
    second = create(client)
    assert [block["text"] for block in second["content"]] == ["two", "three"]
    assert (second["stop_reason"], second["usage"]["input_tokens"], second["usage"]["output_tokens"]) == (
        "max_tokens",
        7,
        9,
    )
    assert fake.pending == 0
    assert first_text(create(client)) == "ok"
    fake.default = overloaded()
    with pytest.raises(anthropic.OverloadedError):
        create(client)


def test_stream_text_deltas_and_final_message(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    sentence = "The quick brown fox jumps over the lazy dog."
    fake.enqueue(text(sentence, usage=Usage(input_tokens=120, output_tokens=11, cache_read_input_tokens=100)))
    with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message().model_dump()
    assert len(deltas) > 1 and "".join(deltas) == sentence
    assert first_text(final) == sentence
    usage = final["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_input_tokens"]) == (120, 11, 100)
    assert fake.last_json()["stream"] is True


@pytest.mark.parametrize("call", [create, streamed])
def test_tool_use(fake: FakeAnthropic, client: anthropic.Anthropic, call: Call) -> None:
    arguments = {"city": "Paris", "units": "metric", "days": [1, 2, 3]}
    fake.enqueue(tool_use("get_weather", arguments, text="Let me check."), tool_use("noop", id="toolu_fixed"))
    generated, fixed = call(client), call(client)
    assert generated["stop_reason"] == fixed["stop_reason"] == "tool_use"
    assert first_text(generated) == "Let me check."
    block = generated["content"][1]
    assert block["id"].startswith("toolu_01")
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", arguments)
    assert [(b["type"], b["id"], b["name"], b["input"]) for b in fixed["content"]] == [
        ("tool_use", "toolu_fixed", "noop", {})
    ]


@pytest.mark.parametrize("call", [create, streamed])
def test_thinking_signature_and_redacted_thinking_survive(
    fake: FakeAnthropic, client: anthropic.Anthropic, call: Call
) -> None:
    fake.enqueue(
        thinking("Considering the question at some length.", "42", signature="sig-EqQBCgIYAhIM"),
        redacted_thinking("opaque-data", "done"),
    )
    signed, redacted = (
        call(client, max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}) for _ in range(2)
    )
    assert [(b["type"], b.get("thinking"), b.get("signature"), b.get("text")) for b in signed["content"]] == [
        ("thinking", "Considering the question at some length.", "sig-EqQBCgIYAhIM", None),
        ("text", None, None, "42"),
    ]
    assert [(b["type"], b.get("data"), b.get("text")) for b in redacted["content"]] == [
        ("redacted_thinking", "opaque-data", None),
        ("text", None, "done"),
    ]


def test_callable_script_sees_the_request(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    def answer(request: RecordedRequest) -> Reply | ErrorReply:
        body = request.json()
        return text(f"{len(body['messages'])} messages") if body["max_tokens"] > 1 else unauthorized()

    fake.enqueue(answer, answer)
    assert first_text(create(client)) == "1 messages"
    with pytest.raises(anthropic.AuthenticationError):
        create(client, max_tokens=1)


# ------------------------------------------------------------------------------------------ raw wire


def test_sse_grammar_byte_for_byte(fake: FakeAnthropic) -> None:
    fake.enqueue(
        Reply(
            [
                Thinking("hmm, thinking about the weather", "c2lnbmF0dXJl"),
                Text("Checking the weather."),
                ToolUse("get_weather", {"city": "Paris, France"}),
            ],
            stop_reason="tool_use",
        )
    )
    body = {"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{fake.url}/v1/messages", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["request-id"].startswith("req_01")
        assert response.headers["anthropic-organization-id"]
        events = sse(response)
    assert all(event == data["type"] for event, data in events)
    names = [event for event, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    per_block: dict[int, list[Any]] = {}
    for event, data in events:
        if event.startswith("content_block"):
            per_block.setdefault(data["index"], []).append(data)
    assert sorted(per_block) == [0, 1, 2]
    for block_events in per_block.values():
        assert block_events[0]["type"] == "content_block_start" and block_events[-1]["type"] == "content_block_stop"
    thinking_deltas = [e["delta"]["type"] for e in per_block[0][1:-1]]
    assert thinking_deltas[-1] == "signature_delta" and set(thinking_deltas[:-1]) == {"thinking_delta"}
    json_fragments = [e["delta"]["partial_json"] for e in per_block[2][1:-1]]
    assert json_fragments[0] == "" and len(json_fragments) > 2
    assert orjson.loads("".join(json_fragments)) == {"city": "Paris, France"}
    start, delta = events[0][1], events[-2][1]
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == start["message"]["usage"]["input_tokens"]
    assert delta["usage"]["output_tokens"] >= start["message"]["usage"]["output_tokens"]


def test_frames_are_written_as_produced(fake: FakeAnthropic) -> None:
    fake.enqueue(text("a b c d e f g h i j k l m n o p q r s t u v w x y z").slow(events=0.03))
    body = {"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True}
    arrivals: list[float] = []
    decoder = SSEDecoder()
    with httpx.stream("POST", f"{fake.url}/v1/messages", json=body) as response:
        for chunk in response.iter_raw():
            arrivals += [time.monotonic() for _ in decoder.feed(chunk)]
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] >= 0.03 * (len(arrivals) - 1) * 0.8


def test_header_delay(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(text("late").slow(headers=0.2))
    started = time.monotonic()
    assert first_text(create(client)) == "late"
    assert time.monotonic() - started >= 0.2


# ---------------------------------------------------------------------------------------- recording


def test_records_method_path_query_headers_and_raw_body(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "canary-7f3a"}],
        extra_query={"beta": "true"},
        extra_headers={"anthropic-beta": "b1,b2"},
    )
    (request,) = fake.requests
    assert (request.method, request.path, request.query) == ("POST", "/v1/messages", "beta=true")
    assert "sk-ant-test" in (request.header("X-Api-Key") or request.header("Authorization") or "")
    assert request.header("anthropic-version")
    assert ("anthropic-beta", "b1,b2") in request.headers
    assert (
        request.json()
        == fake.last_json()
        == {"max_tokens": 64, "messages": [{"role": "user", "content": "canary-7f3a"}], "model": MODEL}
    )
    assert b"canary-7f3a" in fake.received_bytes() and b"sk-ant-test" in fake.received_bytes()
    raw_body = b'{"model": "m",   "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}'
    httpx.post(f"{fake.url}/v1/messages", content=raw_body, headers={"x-probe": "header-canary"})
    assert fake.requests[-1].body == raw_body
    assert b"header-canary" in fake.received_bytes()
    fake.clear()
    assert fake.requests == [] and fake.received_bytes() == b""


def test_other_routes(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    assert httpx.head(f"{fake.url}/").status_code == 200
    assert httpx.get(f"{fake.url}/").status_code == 200
    missing = httpx.get(f"{fake.url}/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Not Found"},
        "request_id": missing.headers["request-id"],
    }
    assert [r.path for r in fake.requests] == ["/", "/", "/v1/nothing-here"]


# ------------------------------------------------------------------------------ count_tokens, models


def test_count_tokens(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO, system="be brief")
    assert counted.input_tokens == estimate_tokens({"messages": HELLO, "system": "be brief"})
    assert client.messages.count_tokens(model=MODEL, messages=HELLO, system="be brief") == counted
    fake.enqueue_count_tokens(token_count(4242), credit_balance_too_low())
    assert client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens == 4242
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        client.messages.count_tokens(model=MODEL, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError, match="x_force_local: Extra inputs are not permitted"):
        client.messages.count_tokens(model=MODEL, messages=HELLO, extra_body={"x_force_local": True})


def test_models_list(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    assert [model.id for model in client.models.list()] == fake.models
    first = client.models.list(limit=2)
    assert [m.id for m in first.data] == fake.models[:2] and first.has_more
    assert (first.first_id, first.last_id) == (fake.models[0], fake.models[1])
    assert first.data[0].display_name == "Claude Opus 5" and first.data[0].type == "model"
    rest = client.models.list(limit=1000, after_id=fake.models[1])
    assert [m.id for m in rest.data] == fake.models[2:] and not rest.has_more
    assert client.models.retrieve(fake.models[-1]).created_at.year == 2025
    with pytest.raises(anthropic.BadRequestError):
        client.models.list(limit=0)


# ------------------------------------------------------------------------------------------- errors


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict)
    return dict(exc.body["error"])


ERRORS = [
    (rate_limited(retry_after=7), anthropic.RateLimitError, "rate_limit_error"),
    (spend_limit_reached(), anthropic.RateLimitError, "rate_limit_error"),
    (unified_quota_rejected(), anthropic.RateLimitError, "rate_limit_error"),
    (credit_balance_too_low(), anthropic.BadRequestError, "invalid_request_error"),
    (unauthorized(), anthropic.AuthenticationError, "authentication_error"),
    (forbidden(), anthropic.PermissionDeniedError, "permission_error"),
    (server_error(), anthropic.InternalServerError, "api_error"),
    (overloaded(), anthropic.APIStatusError, "overloaded_error"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[f"{e[0].status}-{e[0].message[:20]}" for e in ERRORS])
@pytest.mark.parametrize("call", [create, streamed])
def test_errors_surface_as_typed_sdk_exceptions(
    fake: FakeAnthropic,
    client: anthropic.Anthropic,
    call: Call,
    case: tuple[ErrorReply, type[anthropic.APIStatusError], str],
) -> None:
    script, exception, error_type = case
    fake.enqueue(script)
    with pytest.raises(exception) as caught:
        call(client)
    error = caught.value
    request_id = error.response.headers["request-id"]
    assert error.status_code == script.status and request_id.startswith("req_01") and error.request_id == request_id
    details = {"details": dict(script.details)} if script.details else {}
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": script.message, **details},
        "request_id": request_id,
    }
    for name, value in script.headers:
        assert error.response.headers[name] == value


def test_quota_signals(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(rate_limited(retry_after=7), spend_limit_reached(), unified_quota_rejected(), credit_balance_too_low())
    with pytest.raises(anthropic.RateLimitError) as limited:
        create(client)
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.RateLimitError) as spent:
        create(client)
    assert error_of(spent.value)["details"] == {"error_code": "enforced_spend_limit_reached"}
    with pytest.raises(anthropic.RateLimitError) as unified:
        create(client)
    assert unified.value.response.headers["anthropic-ratelimit-unified-status"] == "rejected"
    with pytest.raises(anthropic.BadRequestError) as broke:
        create(client)
    assert error_of(broke.value)["message"] == CREDIT_BALANCE_TOO_LOW


# ------------------------------------------------------------------------------------------- strict


def test_extra_top_level_key_is_rejected_without_consuming_a_script(
    fake: FakeAnthropic, client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.enqueue(text("kept"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, extra_body={"x_force_local": True})
    assert error_of(caught.value) == {
        "type": "invalid_request_error",
        "message": "x_force_local: Extra inputs are not permitted",
    }
    assert fake.pending == 1
    with pytest.raises(anthropic.BadRequestError, match="compaction: Extra inputs"):
        create(client, extra_body={"compaction": {}})
    assert first_text(create(client, extra_query={"beta": "true"}, extra_body={"compaction": {}})) == "kept"
    monkeypatch.setattr(fake, "strict", False)
    assert first_text(create(client, extra_body={"x_force_local": True})) == "ok"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", "messages": []}', "max_tokens: Field required"),
        (b'{"max_tokens": 1, "messages": []}', "model: Field required"),
        (b'{"model": "m", "max_tokens": 1}', "messages: Field required"),
        (b'{"model": "m", "max_tokens": 1, "messages": [}', "The request body is not valid JSON: "),
        (b"", "The request body is not valid JSON: "),
    ],
)
def test_malformed_requests_get_400(fake: FakeAnthropic, body: bytes, message: str) -> None:
    response = httpx.post(f"{fake.url}/v1/messages", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"].startswith(message)


def tool_turn(tool_id: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "checking"},
            {"type": "tool_use", "id": tool_id, "name": "t", "input": {}},
        ],
    }


def result(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "42"}


def test_tool_use_must_be_answered_in_the_next_message(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    answered = [*HELLO, tool_turn("toolu_a"), {"role": "user", "content": [result("toolu_a")]}]
    create(client, messages=answered)
    unanswered = [*HELLO, tool_turn("toolu_a"), {"role": "user", "content": "never mind"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, messages=unanswered)
    assert error_of(caught.value)["message"] == (
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_a. "
        "Each `tool_use` block must have a corresponding `tool_result` block in the next message."
    )
    orphan = [*HELLO, {"role": "assistant", "content": "hi"}, {"role": "user", "content": [result("toolu_z")]}]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.2\.content\.0: unexpected `tool_use_id`"):
        create(client, messages=orphan)


# ---------------------------------------------------------------------------------------- breakage


def stream_text(client: anthropic.Anthropic, received: list[str]) -> None:
    with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
        received.extend(stream.text_stream)


def test_mid_stream_error_event(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(text("partial answer that will not finish").then_error(after=4), text("x").then_error(after=4))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream_text(client, received)
    assert received and error_of(caught.value) == {"type": "overloaded_error", "message": "Overloaded"}
    with pytest.raises(anthropic.OverloadedError):  # not streamed: the error is the whole answer
        create(client)


def test_dropped_connection_breaks_the_stream(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(text("a longer answer that is cut off halfway").then_drop(after=4), text("cut").then_drop(after=0))
    received: list[str] = []
    with pytest.raises(Exception, match="incomplete chunked read"):  # the SDK's transport error, unwrapped
        stream_text(client, received)
    assert received
    with pytest.raises(anthropic.APIConnectionError):  # not streamed: half a body, then the socket closes
        create(client)
    fake.enqueue(text("raw").then_drop(after=3))
    body = {"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True}
    with (
        httpx.stream("POST", f"{fake.url}/v1/messages", json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        response.read()


def test_disconnect_before_any_response(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(disconnect())
    with pytest.raises(anthropic.APIConnectionError):
        create(client)
    assert first_text(create(client)) == "ok"


def test_garbage_in_the_stream(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.enqueue(text("fine until it is not").then_garbage(after=3), text("raw").then_garbage(after=2, data=b"%%%\n\n"))
    with pytest.raises(ValueError, match="line 1 column"):  # the SDK cannot parse the cut-off event
        streamed(client)
    body = {"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{fake.url}/v1/messages", json=body) as response:
        raw = response.read()
    assert b"%%%\n\n" in raw and raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_hang_times_out_and_stop_is_quick() -> None:
    fake = FakeAnthropic().start()
    sdk = anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0)
    try:
        fake.enqueue(hang(), hang(), text("slow").slow(headers=30))
        with pytest.raises(anthropic.APITimeoutError):
            sdk.with_options(timeout=0.2).messages.create(model=MODEL, max_tokens=1, messages=HELLO)
        outcomes: list[BaseException | None] = []

        def in_flight() -> None:
            try:
                sdk.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
                outcomes.append(None)
            except anthropic.APIError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=in_flight) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2
        while len(fake.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        started = time.monotonic()
        fake.stop()
        stopped_in = time.monotonic() - started
        sdk.close()
    for thread in threads:
        thread.join(timeout=5)
    assert stopped_in < 1.5
    assert len(outcomes) == 2 and all(isinstance(o, anthropic.APIConnectionError) for o in outcomes)
