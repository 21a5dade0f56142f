"""The Ollama provider against a fake Ollama on a real loopback socket, and the fake itself.

What is asserted is what crosses the wire: the JSON the fake recorded for the request mapping, and
for the reply the Anthropic event sequence, checked against the Anthropic event grammar and
validated with the official ``anthropic`` SDK's types — and, end to end, parsed by the SDK client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from trooper.config import Config, OllamaConfig
from trooper.providers.base import (
    AuthError,
    BadRequest,
    LocalProvider,
    LocalRequest,
    ModelNotFound,
    Overloaded,
    ProviderError,
    Unreachable,
)
from trooper.providers.ollama import (
    EventTranslator,
    NDJSONDecoder,
    OllamaProvider,
    classify,
    context_length_from_show,
    to_ollama_request,
)
from trooper.providers.registry import discover
from trooper.testing._runner import LoopbackServer
from trooper.testing.fake_ollama import FakeModel, FakeOllama, HttpError, RawReply, Reply, unused_port_url
from trooper.wire import JSON, MessageAccumulator, encode_sse

pytestmark = pytest.mark.timeout(30)

_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeOllama]:
    models = [
        FakeModel("qwen3", context_length=32768),
        FakeModel("llama3.1", context_length=131072, capabilities=("completion", "tools"), architecture="llama"),
    ]
    with FakeOllama(models) as fake:
        yield fake


@pytest.fixture
def fake(_server: FakeOllama) -> FakeOllama:
    _server.reset()
    return _server


@pytest.fixture
async def provider(fake: FakeOllama) -> AsyncIterator[OllamaProvider]:
    p = OllamaProvider(fake.url, connect_timeout=2, first_byte_timeout=5, idle_timeout=5)
    yield p
    await p.aclose()


def body(*messages: JSON, **extra: Any) -> JSON:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "messages": list(messages) or [{"role": "user", "content": "hi"}],
        **extra,
    }


async def collect(provider: OllamaProvider, request: LocalRequest) -> list[JSON]:
    return [event async for event in provider.events(request)]


async def collect_until_error(provider: OllamaProvider, request: LocalRequest) -> tuple[list[JSON], ProviderError]:
    events: list[JSON] = []
    with pytest.raises(ProviderError) as info:
        async for event in provider.events(request):
            events.append(event)
    return events, info.value


def check_grammar(events: list[JSON], *, complete: bool = True) -> None:
    """message_start, then per block start/delta+/stop in index order, then message_delta, message_stop."""
    for event in events:
        _EVENT.validate_python(event)  # every event parses as the SDK's own type
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start"
    assert kinds.count("message_start") == 1
    open_index: int | None = None
    next_index = 0
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_index is None and event["index"] == next_index
            open_index = next_index
            next_index += 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        elif kind == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
        else:
            assert open_index is None, f"{kind} while block {open_index} is open"
    if complete:
        assert kinds[-2:] == ["message_delta", "message_stop"]
        assert open_index is None
    else:
        assert "message_stop" not in kinds


def accumulate(events: list[JSON]) -> Message:
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    assert accumulator.message is not None
    return Message.model_validate(accumulator.message)


# ------------------------------------------------------------------------------ request mapping


FULL_BODY: JSON = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 512,
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 40,
    "stop_sequences": ["END"],
    "stream": True,
    "system": [
        {"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ],
    "metadata": {"user_id": "user_abc"},
    "tool_choice": {"type": "auto"},
    "context_management": {"edits": []},
    "output_config": {"effort": "high"},
    "cache_control": {"type": "ephemeral"},
    "thinking": {"type": "adaptive"},
    "tools": [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look at this"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "text", "text": "and tell me", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "The user wants weather", "signature": "EqQBsig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "is_error": True,
                    "content": [{"type": "text", "text": "no clock"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
        {"role": "assistant", "content": "You're welcome."},
        {"role": "user", "content": "Bye"},
    ],
}

EXPECTED_MESSAGES: list[JSON] = [
    {"role": "system", "content": "You are helpful.\n\nBe brief."},
    {
        "role": "user",
        "content": "Look at this\n\n[image at https://example.com/cat.png — not available to the local "
        "model]\n\nand tell me",
        "images": ["iVBORw0KGgo="],
    },
    {
        "role": "assistant",
        "content": "Checking.",
        "thinking": "The user wants weather",
        "tool_calls": [
            {"id": "toolu_01A", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "toolu_01B", "function": {"name": "get_time", "arguments": {}}},
        ],
    },
    {"role": "tool", "content": "18C sunny", "tool_name": "get_weather", "tool_call_id": "toolu_01A"},
    {"role": "tool", "content": "Error: no clock", "tool_name": "get_time", "tool_call_id": "toolu_01B"},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome."},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.anyio
async def test_full_request_mapping_on_the_wire(fake: FakeOllama, provider: OllamaProvider) -> None:
    await collect(provider, LocalRequest(FULL_BODY, model="qwen3", stream=True, num_ctx=16384))
    sent = fake.last_json("/api/chat")
    assert sent["model"] == "qwen3"
    assert sent["stream"] is True
    assert sent["think"] is True
    assert sent["messages"] == EXPECTED_MESSAGES
    assert sent["options"] == {
        "num_predict": 512,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "num_ctx": 16384,
    }
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    for dropped in (
        "tool_choice",
        "metadata",
        "context_management",
        "output_config",
        "cache_control",
        "thinking",
        "system",
        "max_tokens",
        "stop_sequences",
        "keep_alive",
    ):
        assert dropped not in sent
    raw = fake.requests[-1].body
    assert b"cache_control" not in raw and b"EqQBsig" not in raw and b"opaque" not in raw
    assert fake.requests[-1].header("content-type") == "application/json"


def test_mapping_details_without_a_network() -> None:
    out = to_ollama_request(
        {
            "max_tokens": 10,
            "system": "plain system",
            "thinking": {"type": "disabled"},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_unknown",
                            "content": [
                                {"type": "text", "text": "see"},
                                {
                                    "type": "image",
                                    "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                                },
                            ],
                        },
                        {
                            "type": "document",
                            "title": "notes",
                            "source": {"type": "text", "media_type": "text/plain", "data": "doc body"},
                        },
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"}]},
            ],
        },
        model="m",
        stream=False,
        keep_alive="10m",
    )
    assert out["messages"] == [
        {"role": "system", "content": "plain system"},
        {"role": "tool", "content": "see", "images": ["AAA"], "tool_call_id": "toolu_unknown"},
        {"role": "user", "content": "[document 'notes']\ndoc body"},
        {"role": "assistant", "content": "a\n\nb"},
    ]
    assert out["think"] is False
    assert out["stream"] is False
    assert out["keep_alive"] == "10m"
    assert out["options"] == {"num_predict": 10}
    assert "tools" not in out
    assert "think" not in to_ollama_request({"messages": []}, model="m", stream=True)


# ------------------------------------------------------------------------------ replies


@pytest.mark.anyio
async def test_streamed_text_becomes_the_full_event_grammar(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(text="Hello from the local model", prompt_eval_count=321, eval_count=45))
    events = await collect(provider, LocalRequest(body(), model="qwen3", stream=True, num_ctx=4096))
    check_grammar(events)
    start = events[0]["message"]
    assert start["id"].startswith("msg_01") and len(start["id"]) == len("msg_") + 24
    assert start["model"] == "qwen3"
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert len(deltas) == 5 and "".join(deltas) == "Hello from the local model"
    assert events[-2]["usage"] == {"input_tokens": 321, "output_tokens": 45}
    message = accumulate(events)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 321 and message.usage.output_tokens == 45
    assert [b.type for b in message.content] == ["text"]
    assert fake.last_json()["stream"] is True


@pytest.mark.anyio
async def test_non_streaming_uses_stream_false_and_yields_the_same_grammar(
    fake: FakeOllama, provider: OllamaProvider
) -> None:
    fake.enqueue(Reply(text="All in one", thinking="quietly", prompt_eval_count=50, eval_count=7))
    events = await collect(
        provider, LocalRequest(body(thinking={"type": "enabled", "budget_tokens": 2048}), model="qwen3", stream=False)
    )
    assert fake.last_json()["stream"] is False
    check_grammar(events)
    assert events[0]["message"]["usage"]["input_tokens"] == 50  # known up front without streaming
    message = accumulate(events)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "quietly"  # type: ignore[union-attr]
    assert message.content[1].text == "All in one"  # type: ignore[union-attr]
    assert message.usage.output_tokens == 7


@pytest.mark.anyio
async def test_thinking_then_text_without_an_invented_signature(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(thinking="Let me think about it", text="Answer"))
    events = await collect(provider, LocalRequest(body(thinking={"type": "adaptive"}), model="qwen3", stream=True))
    check_grammar(events)
    assert fake.last_json()["think"] is True
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""}]
    assert not any(e.get("delta", {}).get("type") == "signature_delta" for e in events)
    message = accumulate(events)
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == "Let me think about it"
    assert message.content[0].signature == ""


@pytest.mark.anyio
async def test_thinking_display_omitted_emits_no_thinking_block(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(thinking="hidden thoughts", text="visible"))
    events = await collect(
        provider, LocalRequest(body(thinking={"type": "adaptive", "display": "omitted"}), model="qwen3", stream=True)
    )
    check_grammar(events)
    assert [b.type for b in accumulate(events).content] == ["text"]


@pytest.mark.anyio
async def test_tool_call_round_trip(fake: FakeOllama, provider: OllamaProvider) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "w",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    fake.enqueue(
        Reply(
            text="Let me check.",
            tool_calls=[
                {"name": "get_weather", "arguments": {"city": "Tokyo", "units": {"temp": "C"}}},  # no id: one is made
                {"id": "call_x1", "name": "get_weather", "arguments": {"city": "Oslo"}},  # an id: it is kept
            ],
        )
    )
    first = body({"role": "user", "content": "Weather in Tokyo and Oslo?"}, tools=tools)
    events = await collect(provider, LocalRequest(first, model="qwen3", stream=True))
    check_grammar(events)
    tool_starts = [e for e in events if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"]
    assert all(e["content_block"]["input"] == {} for e in tool_starts)
    json_deltas = [e for e in events if e.get("delta", {}).get("type") == "input_json_delta"]
    assert len(json_deltas) == 2  # one delta carrying the whole JSON per call
    message = accumulate(events)
    assert message.stop_reason == "tool_use"
    text, call_a, call_b = message.content
    assert text.type == "text" and call_a.type == "tool_use" and call_b.type == "tool_use"
    assert call_a.id.startswith("toolu_01") and call_a.input == {"city": "Tokyo", "units": {"temp": "C"}}
    assert call_b.id == "call_x1" and call_b.input == {"city": "Oslo"}

    # The client runs the tools and sends the results back; the next local request carries them.
    second = body(
        {"role": "user", "content": "Weather in Tokyo and Oslo?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call_a.id, "content": "25C"},
                {"type": "tool_result", "tool_use_id": call_b.id, "content": [{"type": "text", "text": "-3C"}]},
            ],
        },
        tools=tools,
    )
    fake.enqueue(Reply(text="Tokyo is warm, Oslo is cold."))
    events = await collect(provider, LocalRequest(second, model="qwen3", stream=True))
    assert accumulate(events).stop_reason == "end_turn"
    sent = fake.last_json("/api/chat")["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": call_a.id,
                "function": {"name": "get_weather", "arguments": {"city": "Tokyo", "units": {"temp": "C"}}},
            },
            {"id": "call_x1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        ],
    }
    assert sent[2:] == [
        {"role": "tool", "content": "25C", "tool_name": "get_weather", "tool_call_id": call_a.id},
        {"role": "tool", "content": "-3C", "tool_name": "get_weather", "tool_call_id": "call_x1"},
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(done_reason="stop"), "end_turn"),
        (Reply(done_reason="length"), "max_tokens"),
        (Reply(done_reason="stop", tool_calls=[{"name": "x", "arguments": {}}]), "tool_use"),
        (Reply(done_reason="length", tool_calls=[{"name": "x", "arguments": {}}]), "tool_use"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_stop_reasons(
    fake: FakeOllama, provider: OllamaProvider, reply: Reply, expected: str, stream: bool
) -> None:
    fake.enqueue(reply)
    events = await collect(provider, LocalRequest(body(), model="qwen3", stream=stream))
    check_grammar(events)
    assert events[-2]["delta"] == {"stop_reason": expected, "stop_sequence": None}


@pytest.mark.anyio
async def test_chunks_are_relayed_as_they_arrive(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(text="one two three four", delay=0.15))
    started = time.monotonic()
    stamps: list[tuple[str, float]] = []
    async for event in provider.events(LocalRequest(body(), model="qwen3", stream=True)):
        stamps.append((event["type"], time.monotonic() - started))
    first_text = next(t for kind, t in stamps if kind == "content_block_delta")
    assert first_text < 0.3  # the first word did not wait for the others
    assert stamps[-1][1] >= 0.4


# ------------------------------------------------------------------------------ errors


@pytest.mark.anyio
async def test_unknown_model_is_model_not_found_naming_it(fake: FakeOllama, provider: OllamaProvider) -> None:
    with pytest.raises(ModelNotFound) as info:
        await collect(provider, LocalRequest(body(), model="mistral-nemo", stream=True))
    error = info.value
    assert "'mistral-nemo'" in error.message and "ollama pull mistral-nemo" in error.message
    assert fake.url in error.message
    assert error.status == 404 and error.error_type == "not_found_error"
    assert error.body == b'{"error":"model \'mistral-nemo\' not found"}'
    assert isinstance(error, BadRequest)


@pytest.mark.anyio
async def test_closed_port_is_unreachable_before_any_event() -> None:
    provider = OllamaProvider(unused_port_url(), connect_timeout=2)
    try:
        events: list[JSON] = []
        with pytest.raises(Unreachable):
            async for event in provider.events(LocalRequest(body(), model="qwen3", stream=True)):
                events.append(event)
        assert events == []
        assert await provider.health() is False
        assert await provider.context_length("qwen3") is None
    finally:
        await provider.aclose()


@pytest.mark.anyio
async def test_mid_stream_error_is_raised_after_the_partial_events(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(text="one two three four", error="CUDA error: out of memory", error_after=2))
    events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
    assert type(error) is ProviderError and "CUDA error: out of memory" in error.message
    check_grammar(events, complete=False)
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "one two "


@pytest.mark.anyio
async def test_error_as_the_first_line_is_raised_before_any_event(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(RawReply([{"error": "llama runner process has terminated"}]))
    events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
    assert events == [] and "llama runner" in error.message


@pytest.mark.anyio
async def test_dropped_connection_mid_stream(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(text="one two three four", drop_after=2))
    events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
    assert isinstance(error, Unreachable)
    check_grammar(events, complete=False)
    assert any(e["type"] == "content_block_delta" for e in events)


@pytest.mark.anyio
async def test_dropped_connection_without_streaming(fake: FakeOllama, provider: OllamaProvider) -> None:
    fake.enqueue(Reply(text="cut short", drop_after=1))
    events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=False))
    assert isinstance(error, Unreachable) and events == []


@pytest.mark.anyio
async def test_stream_that_ends_without_done_is_an_error(fake: FakeOllama, provider: OllamaProvider) -> None:
    line = {
        "model": "qwen3",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": "partial"},
        "done": False,
    }
    fake.enqueue(RawReply([line]))
    events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
    assert "final chunk" in error.message
    check_grammar(events, complete=False)


@pytest.mark.anyio
async def test_idle_timeout_mid_stream(fake: FakeOllama) -> None:
    provider = OllamaProvider(fake.url, first_byte_timeout=5, idle_timeout=0.2)
    try:
        fake.enqueue(Reply(text="one two three", delay=1.0))
        started = time.monotonic()
        events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
        assert isinstance(error, Unreachable) and "silent" in error.message
        assert events and time.monotonic() - started < 0.9
    finally:
        await provider.aclose()


@pytest.mark.anyio
async def test_first_byte_timeout_before_any_event(fake: FakeOllama) -> None:
    provider = OllamaProvider(fake.url, first_byte_timeout=0.2, idle_timeout=5)
    try:
        fake.enqueue(Reply(headers_delay=1.0))
        events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
        assert isinstance(error, Unreachable) and events == []
    finally:
        await provider.aclose()


@pytest.mark.anyio
async def test_slow_model_load_is_fine_within_first_byte_timeout(fake: FakeOllama) -> None:
    # The idle gap is shorter than the load time: only first_byte_timeout applies before the first line.
    provider = OllamaProvider(fake.url, first_byte_timeout=5, idle_timeout=0.2)
    try:
        fake.enqueue(Reply(text="loaded", headers_delay=0.4))
        events = await collect(provider, LocalRequest(body(), model="qwen3", stream=True))
        check_grammar(events)
    finally:
        await provider.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, AuthError),
        (429, Overloaded),
        (500, ProviderError),
        (503, Overloaded),
    ],
)
async def test_http_error_statuses(
    fake: FakeOllama, provider: OllamaProvider, status: int, kind: type[ProviderError]
) -> None:
    fake.enqueue(HttpError(status, "something went wrong"))
    events, error = await collect_until_error(provider, LocalRequest(body(), model="qwen3", stream=True))
    assert type(error) is kind and events == []
    assert error.status == status and "something went wrong" in error.message
    assert error.body == b'{"error":"something went wrong"}'


@pytest.mark.anyio
async def test_model_without_thinking_is_retried_without_think(fake: FakeOllama, provider: OllamaProvider) -> None:
    request = LocalRequest(body(thinking={"type": "enabled", "budget_tokens": 1024}), model="llama3.1", stream=True)
    events = await collect(provider, request)
    check_grammar(events)
    assert [r.get("think") for r in fake.chat_requests()] == [True, None]
    fake.clear()
    await collect(provider, request)  # remembered: no second 400
    assert [r.get("think") for r in fake.chat_requests()] == [None]


# ------------------------------------------------------------------------------ context, health, config


@pytest.mark.anyio
async def test_context_length_from_api_show(fake: FakeOllama, provider: OllamaProvider) -> None:
    assert await provider.context_length("qwen3") == 32768
    assert await provider.context_length("llama3.1:latest") == 131072
    assert fake.last_json("/api/show") == {"model": "llama3.1:latest"}
    assert await provider.context_length("not-installed") is None
    shows = len([r for r in fake.requests if r.path == "/api/show"])
    assert await provider.context_length("qwen3") == 32768  # cached
    assert len([r for r in fake.requests if r.path == "/api/show"]) == shows
    assert await provider.health() is True


def test_context_length_from_show_prefers_the_declared_architecture() -> None:
    show = {"model_info": {"general.architecture": "qwen3", "clip.context_length": 512, "qwen3.context_length": 40960}}
    assert context_length_from_show(show) == 40960
    assert context_length_from_show({"model_info": {"x.context_length": 2048}}) == 2048
    assert context_length_from_show({"model_info": {}}) is None
    assert context_length_from_show({}) is None


@pytest.mark.anyio
async def test_from_config_and_registry(fake: FakeOllama) -> None:
    config = Config(
        ollama=OllamaConfig(
            base_url=fake.url, keep_alive="10m", connect_timeout=1.5, first_byte_timeout=20, idle_timeout=7
        )
    )
    factory = discover()["ollama"]
    provider = factory.from_config(config)
    assert isinstance(provider, OllamaProvider)
    assert isinstance(provider, LocalProvider)
    assert (provider.name, provider.kind) == ("ollama", "local")
    assert (provider.connect_timeout, provider.first_byte_timeout, provider.idle_timeout) == (1.5, 20, 7)
    assert isinstance(provider._client._transport, AiohttpTransport)  # the default transport
    try:
        await collect(provider, LocalRequest(body(), model="qwen3", stream=True, num_ctx=2048))
        assert fake.last_json()["keep_alive"] == "10m"
        assert fake.last_json()["options"]["num_ctx"] == 2048
    finally:
        await provider.aclose()


# ------------------------------------------------------------------------------ pure translation


def test_translator_is_pure_and_handles_interleaving() -> None:
    ids = iter(["toolu_fixed1", "toolu_fixed2"])
    translator = EventTranslator("m", input_tokens=9, message_id="msg_x", new_tool_id=lambda: next(ids))
    events: list[JSON] = []
    for chunk in [
        {"message": {"role": "assistant", "content": "", "thinking": "a"}, "done": False},
        {"message": {"role": "assistant", "content": "b"}, "done": False},
        {
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "bad id!", "function": {"name": "t", "arguments": '{"k": 1}'}}],
            },
            "done": False,
        },
        {"message": {"role": "assistant", "content": "c"}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop", "eval_count": 4},
    ]:
        events += translator.feed(chunk)
    events += translator.finish()
    check_grammar(events)
    assert events[0]["message"]["usage"]["input_tokens"] == 9
    assert events[-2]["usage"] == {"input_tokens": 9, "output_tokens": 4}
    message = accumulate(events)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "text"]
    assert message.content[2].id == "toolu_fixed1"  # type: ignore[union-attr]
    assert message.content[2].input == {"k": 1}  # type: ignore[union-attr]
    assert translator.feed({"message": {"content": "late"}}) == []  # nothing after done


def test_ndjson_decoder_handles_split_lines() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [{"a": 1}]
    assert decoder.feed(b":2}\n\n") == [{"b": 2}]
    assert decoder.feed(b'{"c":3}') == []
    assert decoder.flush() == [{"c": 3}]
    with pytest.raises(ProviderError):
        decoder.feed(b"not json\n")


def test_classify_404_without_model_is_not_model_not_found() -> None:
    error = classify(404, [], b"404 page not found", model="qwen3", base_url="http://h:1")
    assert type(error) is ProviderError and "is it an Ollama server" in error.message


# ------------------------------------------------------------------------------ the official SDK, end to end


def _sdk_app(ollama_url: str) -> Starlette:
    """A minimal stand-in for the engine: provider events → SSE or JSON, nothing else."""

    async def messages(request: Request) -> Response:
        payload = await request.json()
        provider = OllamaProvider(ollama_url)
        local = LocalRequest(payload, model="qwen3", stream=payload.get("stream") is True, num_ctx=4096)
        if local.stream:

            async def sse() -> AsyncIterator[bytes]:
                try:
                    async for event in provider.events(local):
                        yield encode_sse(event)
                finally:
                    await provider.aclose()

            return StreamingResponse(sse(), media_type="text/event-stream")
        accumulator = MessageAccumulator()
        try:
            async for event in provider.events(local):
                accumulator.feed(event)
        finally:
            await provider.aclose()
        return Response(orjson.dumps(accumulator.message), media_type="application/json")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def test_the_anthropic_sdk_parses_the_output(fake: FakeOllama) -> None:
    fake.enqueue(
        Reply(
            thinking="Thinking hard",
            text="Calling a tool",
            prompt_eval_count=77,
            eval_count=11,
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Lima"}}],
        ),
        Reply(text="Plain answer", prompt_eval_count=5, eval_count=2),
    )
    with LoopbackServer(_sdk_app(fake.url)) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="test-key", max_retries=0)
        with client.messages.stream(
            model="claude-test",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream:
            streamed = stream.get_final_message()
        created = client.messages.create(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        client.close()
    assert [b.type for b in streamed.content] == ["thinking", "text", "tool_use"]
    assert streamed.stop_reason == "tool_use"
    assert streamed.usage.input_tokens == 77 and streamed.usage.output_tokens == 11
    tool = streamed.content[2]
    assert tool.type == "tool_use" and tool.input == {"city": "Lima"} and tool.id.startswith("toolu_")
    assert created.content[0].type == "text" and created.content[0].text == "Plain answer"
    assert created.stop_reason == "end_turn" and created.id.startswith("msg_")


# ------------------------------------------------------------------------------ the fake itself


def test_fake_speaks_ollama(fake: FakeOllama) -> None:
    with httpx.Client(base_url=fake.url) as client:
        root = client.get("/")
        assert root.text == "Ollama is running" and root.headers["content-type"].startswith("text/plain")
        head = client.head("/")
        assert head.status_code == 200 and head.content == b""
        assert client.get("/api/version").json() == {"version": "0.14.2"}
        names = [m["name"] for m in client.get("/api/tags").json()["models"]]
        assert names == ["qwen3:latest", "llama3.1:latest"]
        show = client.post("/api/show", json={"model": "ghost"})
        assert show.status_code == 404
        assert show.content == b'{"error":"model \\"ghost\\" not found, try pulling it first"}'
        shown = client.post("/api/show", json={"model": "qwen3"}).json()
        assert shown["model_info"]["qwen3.context_length"] == 32768
        assert "tools" in shown["capabilities"] and shown["details"]["family"] == "qwen3"
        missing = client.post("/api/chat", json={"model": "ghost", "messages": []})
        assert missing.status_code == 404 and missing.content == b'{"error":"model \'ghost\' not found"}'
        assert client.get("/nope").status_code == 404

        with client.stream("POST", "/api/chat", json={"model": "qwen3", "messages": []}) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = [orjson.loads(line) for line in response.iter_lines() if line]
        assert "".join(line["message"]["content"] for line in lines) == "local ok"
        final = lines[-1]
        assert final["done"] is True and final["done_reason"] == "stop"
        for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration"):
            assert isinstance(final[key], int)

        fake.enqueue(lambda request: Reply(text=f"echo {request.json()['messages'][0]['content']}"))
        one = client.post(
            "/api/chat", json={"model": "qwen3", "stream": False, "messages": [{"role": "user", "content": "ping"}]}
        )
        assert one.headers["content-type"].startswith("application/json")
        assert one.json()["message"] == {"role": "assistant", "content": "echo ping"}
    assert b'"content":"ping"' in fake.received_bytes()
    assert fake.received_bytes().startswith(b"GET / HTTP/1.1\r\n")
    assert [r.method for r in fake.requests][:2] == ["GET", "HEAD"]


def test_fake_stops_quickly_with_a_slow_reply_in_flight() -> None:
    fake = FakeOllama().start()
    fake.enqueue(Reply(text="a b c d e f g h", delay=5.0))
    outcome: list[str] = []

    def slow_client() -> None:
        try:
            with httpx.stream("POST", fake.url + "/api/chat", json={"model": "qwen3"}, timeout=10) as response:
                for _ in response.iter_bytes():
                    pass
            outcome.append("finished")
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=slow_client)
    thread.start()
    deadline = time.monotonic() + 5
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2.0
    thread.join(timeout=5)
    assert outcome and outcome != ["finished"]  # the slow stream was cut, not completed
