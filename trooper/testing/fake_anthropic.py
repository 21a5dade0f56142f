"""A fake Anthropic Messages API on a real loopback socket: records every byte, plays scripted replies.

Trooper's promises (local content never reaches the cloud, Trooper's own fields never reach it, SSE is
relayed faithfully, quota errors are recognised) can only be proven against an upstream that speaks the
real protocol over a real socket and remembers exactly what it received. This module is that upstream:

* every request is recorded as it arrived (:class:`RecordedRequest`), so privacy tests can search the raw
  bytes for canaries (:meth:`FakeAnthropic.received_bytes`);
* like the real API it rejects unknown top-level fields and unanswered ``tool_use`` blocks with a 400, so a
  proxy that leaks ``x_force_local`` or drops a ``tool_result`` fails loudly (``strict=False`` turns this
  off);
* replies come from a queue of scripts — text, tool use, thinking, every quota/auth/overload error the
  real API sends, mid-stream errors, dropped connections, slow or hanging answers, malformed SSE — or
  from a callable that sees the request.

It ships in the package so Trooper's users can test their own integrations the same way::

    with FakeAnthropic() as fake:
        fake.enqueue(text("hello"), rate_limited(retry_after=5))
        client = anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test")
        ...
        assert b"canary" not in fake.received_bytes()

The wire grammar (SSE framing, ids, error shape, the event sequence of a message) comes from
:mod:`trooper.wire`; this module only adds what a real server does on top (fragmented deltas, ``ping``,
cumulative usage, headers) and the faults.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias

import attrs
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trooper.testing._recording import RecordedRequest, RequestLog
from trooper.testing._runner import LoopbackServer
from trooper.wire import (
    ERROR_STATUS,
    JSON,
    encode_sse,
    error_payload,
    message_events,
    new_message_id,
    new_request_id,
    new_tool_use_id,
)

__all__ = [
    "BETA_FIELDS",
    "CREDIT_BALANCE_TOO_LOW",
    "DEFAULT_MODELS",
    "MESSAGES_FIELDS",
    "Block",
    "CountScript",
    "Disconnect",
    "Drop",
    "ErrorReply",
    "FakeAnthropic",
    "Fault",
    "Garbage",
    "Hang",
    "RecordedRequest",
    "RedactedThinking",
    "Reply",
    "Script",
    "StreamError",
    "Text",
    "Thinking",
    "TokenCount",
    "ToolUse",
    "Usage",
    "credit_balance_too_low",
    "disconnect",
    "error",
    "estimate_tokens",
    "forbidden",
    "hang",
    "overloaded",
    "rate_limited",
    "redacted_thinking",
    "render_message",
    "server_error",
    "spend_limit_reached",
    "stream_events",
    "text",
    "thinking",
    "token_count",
    "tool_use",
    "unauthorized",
    "unified_quota_rejected",
    "validate",
]

# ------------------------------------------------------------------------------------------ constants

#: Top-level fields ``POST /v1/messages`` accepts. Anything else is a 400, exactly what Trooper must
#: never provoke by forwarding its own fields. ``diagnostics`` and ``speed`` are in the current SDK.
MESSAGES_FIELDS: Final = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "cache_control",
        "output_config",
        "context_management",
        "service_tier",
        "container",
        "inference_geo",
        "mcp_servers",
        "diagnostics",
        "speed",
    }
)

#: Extra fields the beta surface (``?beta=true``) accepts on top of :data:`MESSAGES_FIELDS`.
BETA_FIELDS: Final = frozenset(
    {
        "output_format",
        "thread",
        "fallbacks",
        "billing_policy",
        "fallback_credit_token",
        "compaction",
    }
)

CREDIT_BALANCE_TOO_LOW: Final = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)

DEFAULT_MODELS: Final = (
    "claude-opus-5",
    "claude-sonnet-5",
    "claude-opus-4-8",
    "claude-sonnet-4-6",
    "claude-haiku-4-5-20251001",
)

DEFAULT_ORGANIZATION_ID: Final = "5b0c3e4f-7a1d-4e2b-9c8f-0d6a1e2f3b4c"

#: A line no SSE field looks like, then an event whose JSON is cut off: a client must notice.
DEFAULT_GARBAGE: Final = (
    b"@@ \x01 not an sse line @@\n"
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_del\n\n'
)

_REDACTED_DATA: Final = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"
_FRAGMENT: Final = 12  # characters per streamed text/thinking/json fragment
_SCOPE_RECORDED: Final = "trooper.fake.recorded"
_SCOPE_TRANSPORT: Final = "trooper.fake.transport"
_ERROR_TYPES: Final[Mapping[int, str]] = {status: kind for kind, status in ERROR_STATUS.items()}

Headers: TypeAlias = tuple[tuple[str, str], ...]


def _header_pairs(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Headers:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(name), str(val)) for name, val in items)


# ------------------------------------------------------------------------------------------ recording


# -------------------------------------------------------------------------------------------- scripts


@attrs.frozen
class Text:
    text: str


@attrs.frozen
class ToolUse:
    """A ``tool_use`` block; ``id=None`` gets a fresh ``toolu_…`` id each time it is played."""

    name: str
    input: Mapping[str, Any] = attrs.field(factory=dict)
    id: str | None = None


@attrs.frozen
class Thinking:
    thinking: str
    signature: str


@attrs.frozen
class RedactedThinking:
    data: str


Block: TypeAlias = Text | ToolUse | Thinking | RedactedThinking


@attrs.frozen
class Usage:
    """Token counts to report; ``None`` means a deterministic estimate (about 4 characters a token)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@attrs.frozen
class StreamError:
    """After ``after`` SSE events, an ``event: error`` (the stream then ends cleanly, as the API does).

    On a non-streaming request the same error is the whole answer, with its HTTP status.
    """

    after: int
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


@attrs.frozen
class Drop:
    """After ``after`` SSE events the TCP connection is closed with no terminating chunk.

    On a non-streaming request, half of the JSON body is sent (with the full ``content-length``).
    """

    after: int


@attrs.frozen
class Garbage:
    """After ``after`` SSE events, ``data`` is written raw; the rest of the stream follows unchanged.

    On a non-streaming request the whole body is ``data`` (status 200, ``application/json``).
    """

    after: int
    data: bytes = DEFAULT_GARBAGE


Fault: TypeAlias = StreamError | Drop | Garbage


def _block_tuple(blocks: Iterable[Block]) -> tuple[Block, ...]:
    return tuple(blocks)


@attrs.frozen
class Reply:
    """A successful message: JSON when not streamed, the full SSE grammar when ``stream: true``.

    ``model=None`` echoes the request's model. ``header_delay`` waits before the status line,
    ``event_delay`` between SSE events. ``fault`` breaks the answer part-way (see :class:`StreamError`,
    :class:`Drop`, :class:`Garbage`); the ``then_*`` methods build those fluently.
    """

    content: tuple[Block, ...] = attrs.field(converter=_block_tuple)
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = Usage()
    model: str | None = None
    headers: Headers = attrs.field(default=(), converter=_header_pairs)
    header_delay: float = 0.0
    event_delay: float = 0.0
    fault: Fault | None = None

    def slow(self, *, headers: float = 0.0, events: float = 0.0) -> Reply:
        """The same reply, ``headers`` seconds before the status line and ``events`` between events."""
        return attrs.evolve(self, header_delay=headers, event_delay=events)

    def then_error(self, after: int, error_type: str = "overloaded_error", message: str = "Overloaded") -> Reply:
        return attrs.evolve(self, fault=StreamError(after, error_type, message))

    def then_drop(self, after: int) -> Reply:
        return attrs.evolve(self, fault=Drop(after))

    def then_garbage(self, after: int, data: bytes = DEFAULT_GARBAGE) -> Reply:
        return attrs.evolve(self, fault=Garbage(after, data))


@attrs.frozen
class ErrorReply:
    """An HTTP error in Anthropic's shape: ``{"type":"error","error":{…},"request_id":"req_…"}``."""

    status: int
    error_type: str
    message: str
    headers: Headers = attrs.field(default=(), converter=_header_pairs)
    details: Mapping[str, Any] | None = None
    delay: float = 0.0


@attrs.frozen
class Hang:
    """Never answer (no status line); ends only when the client leaves or the fake stops."""


@attrs.frozen
class Disconnect:
    """Close the connection without any response, as an unreachable or crashing upstream would."""


@attrs.frozen
class TokenCount:
    """A ``count_tokens`` answer: ``{"input_tokens": N}``."""

    input_tokens: int


Outcome: TypeAlias = Reply | ErrorReply | Hang | Disconnect
#: What ``/v1/messages`` plays: a fixed outcome, or a function of the request (called on the server thread).
Script: TypeAlias = Outcome | Callable[[RecordedRequest], Outcome]
CountOutcome: TypeAlias = TokenCount | ErrorReply | Hang | Disconnect
CountScript: TypeAlias = CountOutcome | Callable[[RecordedRequest], CountOutcome]

# ------------------------------------------------------------------------------------------ factories


def text(*texts: str, stop_reason: str = "end_turn", usage: Usage | None = None, model: str | None = None) -> Reply:
    """One text block per argument (``"ok"`` when none)."""
    return Reply([Text(t) for t in (texts or ("ok",))], stop_reason=stop_reason, usage=usage or Usage(), model=model)


def tool_use(
    name: str,
    input: Mapping[str, Any] | None = None,
    *,
    id: str | None = None,
    text: str | None = None,
    usage: Usage | None = None,
) -> Reply:
    """A ``tool_use`` block (after an optional text block), ``stop_reason="tool_use"``."""
    blocks: list[Block] = [Text(text)] if text else []
    blocks.append(ToolUse(name, dict(input or {}), id))
    return Reply(blocks, stop_reason="tool_use", usage=usage or Usage())


def thinking(thought: str, text: str = "ok", *, signature: str | None = None) -> Reply:
    """A signed ``thinking`` block then a text block; the default signature is derived from ``thought``."""
    signature = signature or base64.b64encode(hashlib.sha256(thought.encode()).digest() * 2).decode()
    return Reply([Thinking(thought, signature), Text(text)])


def redacted_thinking(data: str = _REDACTED_DATA, text: str = "ok") -> Reply:
    """A ``redacted_thinking`` block (opaque ``data``) then a text block."""
    return Reply([RedactedThinking(data), Text(text)])


def error(
    status: int,
    message: str | None = None,
    *,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> ErrorReply:
    """Any error; ``error_type`` defaults to the one Anthropic uses for ``status``."""
    kind = error_type or _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return ErrorReply(status, kind, message or kind.replace("_", " "), headers=headers, details=details)


def rate_limited(retry_after: int = 30, message: str | None = None) -> ErrorReply:
    """429 ``rate_limit_error`` with ``retry-after`` and the ``anthropic-ratelimit-*`` headers."""
    reset = (datetime.now(UTC) + timedelta(seconds=retry_after)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return error(
        429,
        message
        or "This request would exceed the rate limit for your organization of 50 requests per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers "
        "for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.",
        headers={
            "retry-after": str(retry_after),
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset,
        },
    )


def spend_limit_reached() -> ErrorReply:
    """429 whose ``error.details.error_code`` is ``enforced_spend_limit_reached``: retrying does not help."""
    return error(
        429,
        "You have reached your specified API usage limits. You will regain access on the first of next month.",
        details={"error_code": "enforced_spend_limit_reached"},
    )


def unified_quota_rejected(reset_in: int = 3600) -> ErrorReply:
    """429 with ``anthropic-ratelimit-unified-status: rejected``, as subscription (OAuth) traffic gets."""
    return error(
        429,
        "This request would exceed your account's rate limit. Please try again later.",
        headers={
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(int(time.time()) + reset_in),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "retry-after": str(reset_in),
        },
    )


def credit_balance_too_low() -> ErrorReply:
    """400 ``invalid_request_error`` "credit balance is too low": a quota error behind a 400."""
    return error(400, CREDIT_BALANCE_TOO_LOW)


def unauthorized() -> ErrorReply:
    return error(401, "invalid x-api-key")


def forbidden() -> ErrorReply:
    return error(403, "Your API key does not have permission to use the specified resource.")


def server_error() -> ErrorReply:
    return error(500, "Internal server error")


def overloaded() -> ErrorReply:
    return error(529, "Overloaded")


def hang() -> Hang:
    return Hang()


def disconnect() -> Disconnect:
    return Disconnect()


def token_count(input_tokens: int) -> TokenCount:
    return TokenCount(input_tokens)


# ----------------------------------------------------------------------------------------- validation


def _blocks(message: Any) -> list[Mapping[str, Any]]:
    content = message.get("content") if isinstance(message, Mapping) else None
    return [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []


def _tool_pairing_error(messages: Sequence[Any]) -> str | None:
    """The API's two tool-pairing checks, on runs of same-role messages (the API merges those)."""
    runs: list[tuple[Any, list[int]]] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if runs and runs[-1][0] == role:
            runs[-1][1].append(index)
        else:
            runs.append((role, [index]))

    def tool_uses(run: int) -> list[tuple[int, str]]:
        if run < 0 or runs[run][0] != "assistant":
            return []
        indices = runs[run][1]
        return [(i, str(b.get("id"))) for i in indices for b in _blocks(messages[i]) if b.get("type") == "tool_use"]

    for run, (role, indices) in enumerate(runs):
        if role == "user":
            offered = {tool_id for _, tool_id in tool_uses(run - 1)}
            for i in indices:
                for k, block in enumerate(_blocks(messages[i])):
                    if block.get("type") == "tool_result" and block.get("tool_use_id") not in offered:
                        return (
                            f"messages.{i}.content.{k}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                            "`tool_use` block in the previous message."
                        )
        uses = tool_uses(run)
        if not uses:
            continue
        answered: set[Any] = set()
        if run + 1 < len(runs) and runs[run + 1][0] == "user":
            answered = {
                b.get("tool_use_id")
                for i in runs[run + 1][1]
                for b in _blocks(messages[i])
                if b.get("type") == "tool_result"
            }
        missing = [(i, tool_id) for i, tool_id in uses if tool_id not in answered]
        if missing:
            return (
                f"messages.{missing[0][0]}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {', '.join(tool_id for _, tool_id in missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
    return None


def validate(body: Any, *, required: Sequence[str], beta: bool) -> str | None:
    """Why the real API would refuse ``body`` with a 400 ``invalid_request_error``, or ``None``."""
    if not isinstance(body, dict):
        return "Input should be a valid dictionary or object to extract fields from"
    allowed = MESSAGES_FIELDS | BETA_FIELDS if beta else MESSAGES_FIELDS
    for key in body:
        if key not in allowed:
            return f"{key}: Extra inputs are not permitted"
    for key in required:
        if key not in body:
            return f"{key}: Field required"
    if "max_tokens" in body and (not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool)):
        return "max_tokens: Input should be a valid integer"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    return _tool_pairing_error(messages)


# ------------------------------------------------------------------------------------------ rendering


def estimate_tokens(body: Any) -> int:
    """A deterministic stand-in for the tokenizer: a quarter of the canonical JSON of what is counted."""
    if not isinstance(body, Mapping):
        return 1
    counted = [body.get("system"), body.get("messages"), body.get("tools")]
    return max(1, len(orjson.dumps(counted, option=orjson.OPT_SORT_KEYS)) // 4)


def _describe(body: Any) -> str:
    """A short, deterministic summary of a request, so a test can tell which request an answer is for."""
    if not isinstance(body, Mapping):
        return "ok"
    messages: list[Any] = body["messages"] if isinstance(body.get("messages"), list) else []
    last_user = ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                last_user = content
            else:
                last_user = " ".join(str(b.get("text", "")) for b in _blocks(message) if b.get("type") == "text")
            break
    return f"ok [model={body.get('model')} messages={len(messages)} last_user={last_user.strip()[:40]!r}]"


def _block_json(block: Block) -> JSON:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolUse):
        return {"type": "tool_use", "id": block.id or new_tool_use_id(), "name": block.name, "input": dict(block.input)}
    if isinstance(block, Thinking):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    return {"type": "redacted_thinking", "data": block.data}


def _usage_json(usage: Usage, input_tokens: int, output_tokens: int) -> JSON:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "server_tool_use": None,
        "service_tier": "standard",
    }


def render_message(reply: Reply, body: Any) -> JSON:
    """The ``Message`` object ``reply`` stands for, given the request ``body`` (model, token estimate)."""
    content = [_block_json(block) for block in reply.content]
    model = reply.model or (body.get("model") if isinstance(body, Mapping) else None) or "claude-sonnet-5"
    produced = sum(
        len(b.get("text") or b.get("thinking") or b.get("data") or orjson.dumps(b.get("input"))) for b in content
    )
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": _usage_json(
            reply.usage,
            reply.usage.input_tokens if reply.usage.input_tokens is not None else estimate_tokens(body),
            reply.usage.output_tokens if reply.usage.output_tokens is not None else max(1, produced // 4),
        ),
    }


def _pieces(value: str, first_empty: bool = False) -> list[str]:
    pieces = [value[i : i + _FRAGMENT] for i in range(0, len(value), _FRAGMENT)] or [""]
    return ["", *pieces] if first_empty else pieces


def stream_events(message: Mapping[str, Any]) -> Iterator[JSON]:
    """What the API streams for ``message``: :func:`trooper.wire.message_events`, made realistic.

    Deltas are cut into several fragments (a ``partial_json`` sequence starts with ``""``), a ``ping``
    follows ``message_start``, and ``message_delta`` carries the cumulative usage.
    """
    usage = message.get("usage") or {}
    for event in message_events(message):
        kind = event["type"]
        if kind == "content_block_delta":
            delta = event["delta"]
            field = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}.get(
                delta["type"]
            )
            if field is None:
                yield event
                continue
            for piece in _pieces(delta[field], first_empty=field == "partial_json"):
                yield {**event, "delta": {"type": delta["type"], field: piece}}
            continue
        if kind == "message_delta":
            event = {
                **event,
                "usage": {
                    key: usage.get(key)
                    for key in (
                        "input_tokens",
                        "cache_creation_input_tokens",
                        "cache_read_input_tokens",
                        "output_tokens",
                    )
                },
            }
        yield event
        if kind == "message_start":
            yield {"type": "ping"}


# -------------------------------------------------------------------------------------------- playback


@attrs.frozen
class _Plan:
    """Everything one response does on the wire, decided before the first byte is written."""

    opening: Literal["respond", "hang", "disconnect"] = "respond"
    status: int = 200
    headers: Headers = ()
    chunks: tuple[bytes, ...] = ()
    header_delay: float = 0.0
    chunk_delay: float = 0.0
    drop: bool = False


class _Playback(Response):
    """Plays a :class:`_Plan`: each chunk is its own ``send`` (so its own write), faults are real.

    A pause ends early when the client goes away or the fake is stopping, so a hanging or slow answer
    never holds up :meth:`FakeAnthropic.stop`.
    """

    def __init__(self, plan: _Plan, stopping: threading.Event) -> None:
        super().__init__(status_code=plan.status)
        self.plan = plan
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan, halt = self.plan, asyncio.Event()
        # Only an answer that waits needs to notice a departed client or a stopping fake; a plain one
        # skips the watcher so the fake stays cheap enough to benchmark against.
        waits = plan.opening == "hang" or plan.header_delay > 0 or plan.chunk_delay > 0
        watcher = asyncio.ensure_future(self._watch(receive, halt)) if waits else None
        try:
            if plan.opening == "disconnect":
                await _abort(scope)
                return
            if plan.opening == "hang":
                await halt.wait()
                await _abort(scope)
                return
            if await _pause(halt, plan.header_delay):
                await _abort(scope)
                return
            headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in plan.headers]
            await send({"type": "http.response.start", "status": plan.status, "headers": headers})
            for index, chunk in enumerate(plan.chunks):
                if index and await _pause(halt, plan.chunk_delay):
                    await _abort(scope)
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if plan.drop:
                await _abort(scope)
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch(self, receive: Receive, halt: asyncio.Event) -> None:
        async def client_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def stopping() -> None:  # a thread-safe flag: the fake may be driven from any event loop
            while not self.stopping.is_set():  # noqa: ASYNC110 - a thread-safe flag cannot be awaited
                await asyncio.sleep(0.02)

        waiters = {asyncio.ensure_future(client_gone()), asyncio.ensure_future(stopping())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            halt.set()
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)


async def _pause(halt: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``; ``True`` when the answer must stop instead (client gone, fake stopping)."""
    if seconds > 0 and not halt.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(halt.wait(), seconds)
    return halt.is_set()


async def _abort(scope: Scope) -> None:
    """Close the TCP connection under the server's feet: no terminating chunk, no clean end.

    ASGI has no "abort" message, so the server's transport is used directly (uvicorn's ``send`` is a
    bound method of the object that holds it). Yielding twice lets uvicorn see the connection lost, so
    it neither logs an incomplete response nor tries to write one. On another server the app just
    returns, and the server closes the connection itself.
    """
    transport = scope.get(_SCOPE_TRANSPORT)
    if transport is not None:
        transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


class _Recorder:
    """Outermost ASGI layer: reads and records the whole request before any routing, then replays it."""

    def __init__(self, app: ASGIApp, record: Callable[[RecordedRequest], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        recorded = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]),
            body=body,
        )
        self.record(recorded)
        scope[_SCOPE_RECORDED] = recorded
        scope[_SCOPE_TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# -------------------------------------------------------------------------------------------- the fake


class FakeAnthropic(RequestLog):
    """A fake Anthropic API on ``127.0.0.1``: ``with FakeAnthropic() as fake: fake.url``.

    Scripts queued with :meth:`enqueue` answer ``POST /v1/messages`` in order; when the queue is empty
    :attr:`default` answers (``None``: a text reply ``"ok"``, or with ``describe=True`` ``"ok [model=…
    messages=N last_user='…']"``). ``count_tokens`` has its own queue (:meth:`enqueue_count_tokens`) and
    otherwise answers :func:`estimate_tokens`. Requests the real API would refuse get its 400 and do not
    consume a script. Safe to use from any thread; the server runs on its own.
    """

    def __init__(
        self,
        *,
        strict: bool = True,
        describe: bool = False,
        models: Sequence[str] = DEFAULT_MODELS,
        organization_id: str = DEFAULT_ORGANIZATION_ID,
        port: int = 0,
    ) -> None:
        """``port=0`` (the default) takes a free port; a fixed one serves the fake at a known URL."""
        self.port = port
        self.strict = strict
        self.describe = describe
        self.models = list(models)
        self.organization_id = organization_id
        self.default: Script | None = None
        self.count_tokens_default: CountScript | None = None
        super().__init__()
        self._scripts: deque[Script] = deque()
        self._count_scripts: deque[CountScript] = deque()
        self._server: LoopbackServer | None = None
        self._stopping = threading.Event()
        self.app: ASGIApp = _Recorder(self._starlette(), self._keep)

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL to give a client (``http://127.0.0.1:<port>``); only while started."""
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        return self._server.url

    def start(self) -> FakeAnthropic:
        if self._server is not None:
            raise RuntimeError("FakeAnthropic is already started")
        self._stopping.clear()
        self._server = LoopbackServer(self.app, port=self.port).start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging and slow answers in flight are cut, so this takes well under a second."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.stop()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------- scripting

    def enqueue(self, *scripts: Script) -> None:
        """Queue answers for ``POST /v1/messages``, consumed one per request in order."""
        with self._lock:
            self._scripts.extend(scripts)

    def enqueue_count_tokens(self, *scripts: CountScript) -> None:
        """Queue answers for ``POST /v1/messages/count_tokens`` (its own queue)."""
        with self._lock:
            self._count_scripts.extend(scripts)

    @property
    def pending(self) -> int:
        """Scripts not consumed yet (both queues): a test can assert every scripted answer was used."""
        with self._lock:
            return len(self._scripts) + len(self._count_scripts)

    # ------------------------------------------------------------------------------------- recording

    def reset(self) -> None:
        """Forget requests, queued scripts and defaults: a shared fake as good as new."""
        with self._lock:
            self._requests.clear()
            self._scripts.clear()
            self._count_scripts.clear()
        self.default = None
        self.count_tokens_default = None

    def _next(self, queue: deque[Any]) -> Any:
        with self._lock:
            return queue.popleft() if queue else None

    # ------------------------------------------------------------------------------------- endpoints

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self._get_model, methods=["GET"]),
                Route("/", self._root, methods=["GET", "HEAD"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    def _headers(self, request_id: str, extra: Iterable[tuple[str, str]] = ()) -> Headers:
        return (("request-id", request_id), ("anthropic-organization-id", self.organization_id), *extra)

    def _json_plan(
        self, status: int, payload: Any, extra: Iterable[tuple[str, str]] = (), *, request_id: str | None = None
    ) -> _Plan:
        body = orjson.dumps(payload)
        headers = (
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *self._headers(request_id or new_request_id(), extra),
        )
        return _Plan(status=status, headers=headers, chunks=(body,))

    def _error_plan(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        extra: Iterable[tuple[str, str]] = (),
        details: Mapping[str, Any] | None = None,
        delay: float = 0.0,
    ) -> _Plan:
        request_id = new_request_id()
        payload = error_payload(error_type, message)
        if details is not None:
            payload["error"]["details"] = dict(details)
        payload["request_id"] = request_id
        plan = self._json_plan(status, payload, extra, request_id=request_id)
        return attrs.evolve(plan, header_delay=delay)

    def _play(self, plan: _Plan) -> _Playback:
        return _Playback(plan, self._stopping)

    @staticmethod
    def _parse(recorded: RecordedRequest) -> tuple[Any, str | None]:
        try:
            return orjson.loads(recorded.body), None
        except orjson.JSONDecodeError as exc:
            return None, f"The request body is not valid JSON: {exc}"

    def _refusal(self, recorded: RecordedRequest, required: Sequence[str]) -> tuple[Any, _Plan | None]:
        body, problem = self._parse(recorded)
        if not self.strict:
            return (body if isinstance(body, dict) else {}), None
        if problem is None:
            problem = validate(body, required=required, beta="beta=true" in recorded.query.split("&"))
        if problem is not None:
            return body, self._error_plan(400, "invalid_request_error", problem)
        return body, None

    async def _messages(self, request: Request) -> Response:
        recorded: RecordedRequest = request.scope[_SCOPE_RECORDED]
        body, refusal = self._refusal(recorded, ("model", "max_tokens", "messages"))
        if refusal is not None:
            return self._play(refusal)
        script: Script | None = self._next(self._scripts)
        if script is None:
            script = self.default if self.default is not None else text(_describe(body) if self.describe else "ok")
        outcome = script if isinstance(script, Reply | ErrorReply | Hang | Disconnect) else script(recorded)
        return self._play(self._outcome_plan(outcome, body, stream=body.get("stream") is True))

    def _outcome_plan(self, outcome: Outcome | CountOutcome, body: Any, *, stream: bool) -> _Plan:
        if isinstance(outcome, Hang):
            return _Plan(opening="hang")
        if isinstance(outcome, Disconnect):
            return _Plan(opening="disconnect")
        if isinstance(outcome, ErrorReply):
            return self._error_plan(
                outcome.status,
                outcome.error_type,
                outcome.message,
                extra=outcome.headers,
                details=outcome.details,
                delay=outcome.delay,
            )
        if isinstance(outcome, TokenCount):
            return self._json_plan(200, {"input_tokens": outcome.input_tokens})
        return self._reply_plan(outcome, body, stream=stream)

    def _reply_plan(self, reply: Reply, body: Any, *, stream: bool) -> _Plan:
        message = render_message(reply, body)
        fault = reply.fault
        if not stream:
            if isinstance(fault, StreamError):
                status = ERROR_STATUS.get(fault.error_type, 500)
                plan = self._error_plan(status, fault.error_type, fault.message, extra=reply.headers)
            else:
                plan = self._json_plan(200, message, reply.headers)
                if isinstance(fault, Drop):
                    whole = plan.chunks[0]
                    plan = attrs.evolve(plan, chunks=(whole[: len(whole) // 2],), drop=True)
                elif isinstance(fault, Garbage):
                    length = ("content-length", str(len(fault.data)))
                    headers = tuple(
                        length if name == "content-length" else (name, value) for name, value in plan.headers
                    )
                    plan = attrs.evolve(plan, headers=headers, chunks=(fault.data,))
            return attrs.evolve(plan, header_delay=reply.header_delay)

        request_id = new_request_id()
        frames = [encode_sse(event) for event in stream_events(message)]
        drop = False
        if fault is not None:
            cut = max(0, fault.after)
            if isinstance(fault, StreamError):
                frames = [*frames[:cut], encode_sse(error_payload(fault.error_type, fault.message))]
            elif isinstance(fault, Drop):
                frames, drop = frames[:cut], True
            else:
                frames = [*frames[:cut], fault.data, *frames[cut:]]
        headers = (
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            *self._headers(request_id, reply.headers),
        )
        return _Plan(
            status=200,
            headers=headers,
            chunks=tuple(frames),
            header_delay=reply.header_delay,
            chunk_delay=reply.event_delay,
            drop=drop,
        )

    async def _count_tokens(self, request: Request) -> Response:
        recorded: RecordedRequest = request.scope[_SCOPE_RECORDED]
        body, refusal = self._refusal(recorded, ("model", "messages"))
        if refusal is not None:
            return self._play(refusal)
        script: CountScript | None = self._next(self._count_scripts) or self.count_tokens_default
        if script is None:
            script = TokenCount(estimate_tokens(body))
        outcome = script if isinstance(script, TokenCount | ErrorReply | Hang | Disconnect) else script(recorded)
        return self._play(self._outcome_plan(outcome, body, stream=False))

    def _model_json(self, model_id: str) -> JSON:
        return {
            "type": "model",
            "id": model_id,
            "display_name": _display_name(model_id),
            "created_at": _created_at(model_id),
        }

    async def _list_models(self, request: Request) -> Response:
        ids = list(self.models)
        params = request.query_params
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            return self._play(self._error_plan(400, "invalid_request_error", "limit: Input should be a valid integer"))
        if not 1 <= limit <= 1000:
            return self._play(
                self._error_plan(400, "invalid_request_error", "limit: Input should be between 1 and 1000")
            )
        if (after := params.get("after_id")) in ids:
            ids = ids[ids.index(after) + 1 :]
        if (before := params.get("before_id")) in ids:
            ids = ids[: ids.index(before)]
            has_more, ids = len(ids) > limit, ids[-limit:]
        else:
            has_more, ids = len(ids) > limit, ids[:limit]
        page = {
            "data": [self._model_json(model_id) for model_id in ids],
            "has_more": has_more,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
        }
        return self._play(self._json_plan(200, page))

    async def _get_model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id not in self.models:
            return self._play(self._error_plan(404, "not_found_error", f"model: {model_id}"))
        return self._play(self._json_plan(200, self._model_json(model_id)))

    async def _root(self, request: Request) -> Response:
        return self._play(self._json_plan(200, {}))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        message = exc.detail if isinstance(exc, HTTPException) else "Internal server error"
        return self._play(self._error_plan(status, kind, message))


def _display_name(model_id: str) -> str:
    """``claude-sonnet-4-5-20250929`` → ``Claude Sonnet 4.5``, the way the API names its models."""
    words = [w for w in model_id.split("-") if not (w.isdigit() and len(w) == 8)]
    names = [w.capitalize() for w in words if not w.isdigit()]
    version = ".".join(w for w in words if w.isdigit())
    return " ".join([*names, version]) if version else " ".join(names)


def _created_at(model_id: str) -> str:
    date = next((w for w in model_id.split("-") if w.isdigit() and len(w) == 8), "20250101")
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00Z"
