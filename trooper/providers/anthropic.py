"""The ``anthropic`` cloud provider: forwards bytes to an Anthropic-compatible API.

Cloud turns must be faithful and cheap, so this provider never re-serialises: it
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
from collections.abc import Sequence
from typing import Literal

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
    UpstreamResponse,
)
from trooper.providers.transport import Transport, TransportKind, make_transport
from trooper.wire import HOP_BY_HOP, header

#: Messages that mean "the account is out of money or quota" whatever the status says.
_QUOTA_MESSAGES: tuple[str, ...] = (
    "credit balance is too low",
    "out of extra usage",
    "spend limit",
    "usage limit",
)


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
        transport: TransportKind | Transport = "aiohttp",
        name: str = "anthropic",
    ) -> None:
        """``transport`` names an HTTP client stack, or is a :class:`Transport` to use as it is (a test
        seam: :class:`trooper.testing.inprocess.ASGITransport` drives a fake without sockets)."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._first_byte_timeout = first_byte_timeout
        self._transport = (
            make_transport(transport, connect_timeout=connect_timeout, idle_timeout=idle_timeout)
            if isinstance(transport, str)
            else transport
        )

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

    async def probe(self, headers: Sequence[tuple[str, str]], model: str) -> None:
        """A call that costs no tokens: ``count_tokens`` on a one-word prompt, with the caller's credentials.

        Only the credential and ``anthropic-*`` headers are sent: the probe is Trooper's request, and
        nothing else of the turn that triggered it belongs in it. Returns when the cloud answers
        (even with a refusal of the probe itself); raises the typed error when it cannot serve.
        """
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "ping"}]})
        kept = [
            (k, v)
            for k, v in headers
            if k.lower() in ("x-api-key", "authorization") or k.lower().startswith("anthropic-")
        ]
        kept.append(("content-type", "application/json"))
        try:
            response = await self.send(UpstreamRequest("POST", "/v1/messages/count_tokens", "", kept, body))
        except (AuthError, BadRequest):
            return
        await response.aread()
        await response.aclose()

    def outgoing_headers(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The client's headers minus hop-by-hop ones; the configured key replaces the client's."""
        out = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        if self._api_key:
            out = [(k, v) for k, v in out if k.lower() not in ("x-api-key", "authorization")]
            out.append(("x-api-key", self._api_key))
        return out

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send; return once headers arrived. Error statuses raise the typed error (body read)."""
        url = self.base_url + request.path + (f"?{request.query}" if request.query else "")
        try:
            async with asyncio.timeout(self._first_byte_timeout):
                response = await self._transport.request(
                    request.method, url, self.outgoing_headers(request.headers), request.body
                )
        except TimeoutError as exc:
            raise Unreachable(f"no response from {self.base_url} within {self._first_byte_timeout:g}s") from exc
        if response.status >= 400:
            try:
                body = await response.aread()
            finally:
                await response.aclose()
            raise classify(response.status, response.headers, body)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


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

    Quota is matched on the message and details, not only on the status, because the API signals it three ways:
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
