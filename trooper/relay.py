"""Relaying a cloud answer: the first bytes read ahead, the rest passed on as it arrives.

A cloud turn is a relay, and faithful: the upstream's status, headers (minus hop-by-hop ones) and
bytes reach the client as they came, SSE chunk by chunk. One thing is done on top: until the client
has received a byte, any failure can still be answered by a local fallback, so the answer's first
bytes are read before anything is sent — a non-streaming body whole (it is small), a stream up to
its first chunk (which the client would be waiting for anyway) — and a connection that breaks there
is a clean fallback, not a broken response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
import structlog

from trooper.providers.base import (
    CloudProvider,
    Overloaded,
    ProviderError,
    Unreachable,
    UpstreamRequest,
    UpstreamResponse,
)
from trooper.wire import (
    HOP_BY_HOP,
    Incoming,
    Outgoing,
    SSEDecoder,
    TrooperError,
    encode_sse,
    error_payload,
    error_response,
)

log = structlog.get_logger("trooper")

_RESPONSE_DROP = HOP_BY_HOP - {"content-length"}


def forwardable(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """An upstream response's headers minus hop-by-hop ones: what the client gets to see."""
    return [(k, v) for k, v in headers if k.lower() not in _RESPONSE_DROP]


def is_sse(headers: Sequence[tuple[str, str]]) -> bool:
    return any(k.lower() == "content-type" and "text/event-stream" in v for k, v in headers)


def input_tokens(chunk: bytes, sse: bool) -> int | None:
    """Total input tokens (cache reads and writes included) from a response's first bytes, if there."""
    try:
        if sse:
            for event, data in SSEDecoder().feed(chunk):
                if event == "message_start":
                    usage = orjson.loads(data)["message"]["usage"]
                    break
            else:
                return None
        else:
            usage = orjson.loads(chunk)["usage"]
        return (
            int(usage.get("input_tokens", 0))
            + int(usage.get("cache_read_input_tokens") or 0)
            + int(usage.get("cache_creation_input_tokens") or 0)
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


class Prefetched:
    """An upstream response whose first bytes were already read: the rest continues the same stream."""

    def __init__(self, response: UpstreamResponse, rest: AsyncIterator[bytes] | None, *, sse: bool) -> None:
        self._response = response
        self._rest = rest
        self.sse = sse
        self.status = response.status
        self.headers = response.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._rest is not None:
            async for chunk in self._rest:
                yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        await self._response.aclose()


async def first_bytes(
    cloud: CloudProvider,
    upstream: UpstreamRequest,
    *,
    retries: int,
    backoff: float,
    sleep: Callable[[float], Awaitable[None]],
) -> tuple[Prefetched, list[bytes]]:
    """Send (retrying 529/5xx with doubling back-off) and read up to the first chunk a client would see."""
    pause = backoff
    for attempt in range(retries + 1):
        try:
            response = await cloud.send(upstream)
        except Overloaded:
            if attempt == retries:
                raise
            await sleep(pause)
            pause *= 2
            continue
        try:
            if is_sse(response.headers):
                chunks = response.aiter_raw()
                first = [await anext(chunks, b"")]
                return Prefetched(response, chunks, sse=True), first
            return Prefetched(response, None, sse=False), [await response.aread()]
        except ProviderError:
            await response.aclose()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


async def relay(response: UpstreamResponse, first: Sequence[bytes] = ()) -> AsyncIterator[bytes]:
    """Relay upstream bytes as they arrive; a failure mid-stream becomes an SSE error event."""
    sse = is_sse(response.headers)
    try:
        for chunk in first:
            if chunk:
                yield chunk
        async for chunk in response.aiter_raw():
            yield chunk
    except ProviderError as exc:
        log.warning("cloud_stream_broken", error=exc.message)
        if sse:
            yield encode_sse(error_payload("api_error", f"upstream stream failed: {exc.message}"))
    finally:
        await response.aclose()


def provider_error(exc: ProviderError, headers: Sequence[tuple[str, str]]) -> Outgoing:
    """The provider's own error response verbatim, or a Trooper error when there was none."""
    if exc.status is not None and exc.body is not None:
        return Outgoing(exc.status, forwardable(exc.headers) + list(headers), exc.body)
    status = 502 if isinstance(exc, Unreachable) else 500
    error = TrooperError(exc.error_type if exc.status else "api_error", exc.message, status=status)
    return error_response(error, [*headers, ("x-should-retry", "false")] if status == 502 else headers)


async def forward(cloud: CloudProvider, request: Incoming) -> Outgoing:
    """Pass a request through unchanged (``GET /v1/models``): nothing in it is a conversation."""
    upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, request.body)
    headers = [("x-trooper-route", "cloud")]
    try:
        response = await cloud.send(upstream)
    except ProviderError as exc:
        return provider_error(exc, headers)
    return Outgoing(response.status, forwardable(response.headers) + headers, stream=relay(response))


__all__ = [
    "Prefetched",
    "first_bytes",
    "forward",
    "forwardable",
    "input_tokens",
    "is_sse",
    "provider_error",
    "relay",
]
