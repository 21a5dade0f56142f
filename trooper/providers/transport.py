"""How the cloud provider moves bytes: one small interface, three HTTP client stacks behind it.

The cloud path is a relay: every microsecond of client-object overhead is added to every cloud
call, so the stack is a choice, measured side by side by section 1b of ``bench/proxy_bench.py``
(figures in the README):

* ``aiohttp`` — aiohttp's own ``ClientSession``, level with a bare aiohttp relay. The default.
* ``httpx-aiohttp`` — httpx's ``Request``/``Response`` over ``httpx_aiohttp.AiohttpTransport``:
  httpx's pure-Python URL, header and response objects cost a measurable share of the relay budget
  before Trooper has done any work of its own, so it is not the default.
* ``httpx`` — httpcore's pool: the slowest of the three, and far behind under concurrency.

All three give the provider the same thing: :class:`~trooper.providers.base.UpstreamResponse`, the
body unread, and the same errors (``Unreachable`` for anything that is not an HTTP answer).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Literal, Protocol

import aiohttp
import certifi
import httpx

from trooper.providers.base import Unreachable, UpstreamResponse

TransportKind = Literal["aiohttp", "httpx-aiohttp", "httpx"]

#: Connection pool: enough for a busy team's agents, bounded so a stampede queues instead of opening
#: thousands of sockets to the upstream.
MAX_CONNECTIONS = 256
KEEPALIVE_SECONDS = 30.0


class Transport(Protocol):
    """Send one request; return when the response headers have arrived, the body still unread."""

    async def request(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def root_cause(exc: BaseException) -> str:
    """The innermost error's text: client libraries wrap a refused connection in a timeout or two."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def make_transport(kind: TransportKind, *, connect_timeout: float, idle_timeout: float) -> Transport:
    if kind == "aiohttp":
        return AiohttpTransport(connect_timeout=connect_timeout, idle_timeout=idle_timeout)
    return HttpxTransport(kind, connect_timeout=connect_timeout, idle_timeout=idle_timeout)


# ------------------------------------------------------------------------------------- aiohttp


@contextlib.contextmanager
def _aiohttp_body_errors(where: str) -> Iterator[None]:
    """aiohttp's failures while a body is read, as :class:`Unreachable` (a silence, or a broken link)."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise Unreachable(f"upstream stream stalled: {root_cause(exc)}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise Unreachable(f"upstream connection broke {where}: {root_cause(exc)}") from exc


class AiohttpResponse:
    """An aiohttp response as an :class:`UpstreamResponse`: raw bytes, never decompressed."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Sequence[tuple[str, str]] = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers
        ]

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with _aiohttp_body_errors("mid-stream"):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aread(self) -> bytes:
        with _aiohttp_body_errors("mid-body"):
            return await self._response.read()

    async def aclose(self) -> None:
        # release() keeps the connection only when the body was read to its end; otherwise aiohttp
        # closes it, so an abandoned stream never leaves unread bytes on a pooled connection.
        self._response.release()


class AiohttpTransport:
    """aiohttp's ``ClientSession``, set up to relay rather than to browse.

    No cookie jar (it would carry one user's upstream cookies into another's requests), no automatic
    ``User-Agent``/``Accept``/``Accept-Encoding``/``Content-Type`` (the upstream sees the client's
    headers, not aiohttp's), no decompression (bytes pass as they came), no redirects, no proxy
    settings from the environment. The session is made on first use, inside the event loop that
    will use it.
    """

    def __init__(self, *, connect_timeout: float, idle_timeout: float) -> None:
        # sock_read bounds every wait for bytes, including the one for the response headers, so
        # a stream may run for hours as long as it keeps talking.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=idle_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # certifi's CA bundle, as httpx uses: a slim container may have no system store at all.
        tls = ssl.create_default_context(cafile=certifi.where())
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS, ssl=tls)
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=self._timeout,
            trust_env=False,
        )

    async def request(self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> AiohttpResponse:
        session = self._session
        if session is None or session.closed:
            session = self._session = self._open()
        try:
            response = await session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False, compress=None
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise Unreachable(f"cannot reach {url}: timed out ({root_cause(exc)})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"cannot reach {url}: {root_cause(exc)}") from exc
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------------------- httpx


class HttpxResponse:
    """An :class:`httpx.Response` as an :class:`UpstreamResponse`.

    The body is read from the transport's byte stream directly: ``Response.aiter_raw`` adds a
    chunker and byte accounting a relay has no use for.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Sequence[tuple[str, str]] = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
        ]

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, httpx.AsyncByteStream), "an async transport returns an async stream"
        try:
            async for chunk in stream:
                yield chunk
        except httpx.ReadTimeout as exc:
            raise Unreachable(f"upstream stream stalled: {root_cause(exc)}") from exc
        except httpx.TransportError as exc:
            raise Unreachable(f"upstream connection broke mid-stream: {root_cause(exc)}") from exc

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxTransport:
    """httpx's request/response API over httpx-aiohttp's transport or httpcore's pool.

    It talks to the transport directly rather than through ``httpx.AsyncClient``: a relay wants none
    of a client's conveniences — no default headers, no redirects, and no cookie jar.
    """

    def __init__(self, kind: Literal["httpx-aiohttp", "httpx"], *, connect_timeout: float, idle_timeout: float) -> None:
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_SECONDS
        )
        self._timeouts = httpx.Timeout(
            connect=connect_timeout, read=idle_timeout, write=idle_timeout, pool=connect_timeout
        ).as_dict()
        self._transport: httpx.AsyncBaseTransport
        if kind == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport as HttpxAiohttpTransport

            self._transport = HttpxAiohttpTransport(limits=limits, trust_env=False)
        else:
            self._transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)

    async def request(self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> HttpxResponse:
        built = httpx.Request(
            method, url, headers=headers, content=body or None, extensions={"timeout": self._timeouts}
        )
        try:
            response = await self._transport.handle_async_request(built)
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(f"cannot reach {url}: {root_cause(exc)}") from exc
        return HttpxResponse(response)

    async def aclose(self) -> None:
        await self._transport.aclose()


__all__ = ["MAX_CONNECTIONS", "Transport", "TransportKind", "make_transport", "root_cause"]
