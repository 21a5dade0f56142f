"""The ``anthropic`` cloud provider: forwards bytes to an Anthropic-compatible API.

Cloud turns must be faithful (DESIGN I3) and cheap (§11), so this provider never re-serialises: it
sends the body bytes it is given with the client's headers, and hands back the upstream's response
with its body still unread, so SSE can be relayed as it arrives.

Upstream error responses are classified here (:func:`classify`) into the typed taxonomy, because
only the provider knows what its errors mean: a 400 whose message says the credit balance is too low
is a quota problem, not a bad request.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import httpx
import orjson

from trooper.config import AnthropicConfig, Config
from trooper.providers.base import (
    AuthError,
    BadRequest,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    Unreachable,
    UpstreamRequest,
    header,
)

#: Headers a proxy must not forward (RFC 9110 §7.6.1) plus those the HTTP client recomputes.
HOP_BY_HOP: frozenset[str] = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-connection", "host", "content-length",
})

#: Messages that mean "the account is out of money or quota" whatever the status says.
_QUOTA_MESSAGES: tuple[str, ...] = (
    "credit balance is too low",
    "out of extra usage",
    "spend limit",
    "usage limit",
)


def make_transport(kind: Literal["aiohttp", "httpx"]) -> httpx.AsyncBaseTransport:
    """httpx's transport API over aiohttp's connection pool (DESIGN §8: ~4x httpcore's at 16).

    The provider talks to the transport directly rather than through ``httpx.AsyncClient``: a proxy
    wants none of a client's conveniences — no default headers, no redirects, and above all no
    cookie jar, which would carry one user's upstream cookies into another user's requests — and
    skipping them is a third of the per-request cost.
    """
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30)
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)


class HttpxUpstreamResponse:
    """Adapts :class:`httpx.Response` to :class:`~trooper.providers.base.UpstreamResponse`."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Sequence[tuple[str, str]] = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
        ]

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.ReadTimeout as exc:
            raise Unreachable(f"upstream stream stalled: {root_cause(exc)}") from exc
        except httpx.TransportError as exc:
            raise Unreachable(f"upstream connection broke mid-stream: {root_cause(exc)}") from exc

    async def aread(self) -> bytes:
        chunks = [chunk async for chunk in self.aiter_raw()]
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._response.aclose()


class AnthropicProvider:
    """Forwards requests to ``base_url`` (the real API, or any Anthropic-compatible server)."""

    kind: Literal["cloud"] = "cloud"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        first_byte_timeout: float = 600.0,
        idle_timeout: float = 300.0,
        transport: Literal["aiohttp", "httpx"] = "aiohttp",
        name: str = "anthropic",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._first_byte_timeout = first_byte_timeout
        self._timeouts = httpx.Timeout(connect=connect_timeout, read=idle_timeout, write=idle_timeout,
                                       pool=connect_timeout).as_dict()
        self._transport = make_transport(transport)

    @classmethod
    def from_config(cls, config: Config) -> AnthropicProvider:
        section: AnthropicConfig = config.anthropic
        return cls(
            section.base_url,
            api_key=section.api_key,
            connect_timeout=section.connect_timeout,
            first_byte_timeout=section.first_byte_timeout,
            idle_timeout=section.idle_timeout,
            transport=section.transport,
        )

    def outgoing_headers(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The client's headers minus hop-by-hop ones; the configured key replaces the client's."""
        out = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        if self._api_key:
            out = [(k, v) for k, v in out if k.lower() not in ("x-api-key", "authorization")]
            out.append(("x-api-key", self._api_key))
        return out

    async def send(self, request: UpstreamRequest) -> HttpxUpstreamResponse:
        """Send; return once headers arrived. Error statuses raise the typed error (body read)."""
        url = self.base_url + request.path + (f"?{request.query}" if request.query else "")
        built = httpx.Request(request.method, url, headers=self.outgoing_headers(request.headers),
                              content=request.body or None, extensions={"timeout": self._timeouts})
        try:
            async with asyncio.timeout(self._first_byte_timeout):
                response = await self._transport.handle_async_request(built)
        except TimeoutError as exc:
            raise Unreachable(f"no response from {self.base_url} within {self._first_byte_timeout:g}s") from exc
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {root_cause(exc)}") from exc
        wrapped = HttpxUpstreamResponse(response)
        if response.status_code >= 400:
            try:
                body = await wrapped.aread()
            finally:
                await wrapped.aclose()
            raise classify(response.status_code, wrapped.headers, body)
        return wrapped

    async def aclose(self) -> None:
        await self._transport.aclose()


def root_cause(exc: BaseException) -> str:
    """The innermost error's text: the aiohttp transport reports a refused connection as a timeout."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _decoded(headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    encoding = (header(headers, "content-encoding") or "").lower()
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error):
        return body
    return body


def _retry_after(headers: Sequence[tuple[str, str]]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = header(headers, name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def classify(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> ProviderError:
    """Map an upstream error response to the taxonomy, keeping status, headers and body verbatim.

    Quota is matched on the message and details, not only on the status (protocols.md §1.7):
    credit exhaustion is a 400, a spend limit a 429 with ``enforced_spend_limit_reached``, a
    subscription limit a 429 with ``anthropic-ratelimit-unified-status: rejected``.
    """
    error_type, message, details = "", "", ""
    try:
        parsed = orjson.loads(_decoded(headers, body))
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            error_type = str(error.get("type") or "")
            message = str(error.get("message") or "")
            details = orjson.dumps(error.get("details")).decode() if error.get("details") else ""
    except (orjson.JSONDecodeError, TypeError):
        message = _decoded(headers, body)[:200].decode("utf-8", "replace")
    lowered = f"{message} {details}".lower()
    text = message or f"upstream answered HTTP {status}"
    if status == 429 or any(marker in lowered for marker in _QUOTA_MESSAGES) or status == 402:
        return QuotaExhausted(text, retry_after=_retry_after(headers), status=status, headers=headers, body=body)
    kind: type[ProviderError] = BadRequest
    if status in (401, 403) or error_type in ("authentication_error", "permission_error"):
        kind = AuthError
    elif status == 408:
        kind = Unreachable
    elif status >= 500 or error_type == "overloaded_error":
        kind = Overloaded
    return kind(text, status=status, headers=headers, body=body)
