"""ASGI apps driven in-process: Trooper and its fakes without sockets, streaming included.

The fakes in this package are ASGI apps, and so is Trooper's server. Over loopback sockets a test
pays for the kernel, for connection set-up and for Nagle's algorithm; in-process, one request is a
few function calls on an event loop, so a property test can afford hundreds of turns. The bytes are
the same: every request is still parsed, validated, recorded and answered by the same code, and a
response body still arrives chunk by chunk, so an interrupted stream is interrupted at a chunk.

* :class:`ASGITransport` — the cloud provider's transport seam
  (:class:`trooper.providers.transport.Transport`) over an app: ``AnthropicProvider(url,
  transport=ASGITransport(fake.app))``.
* :class:`HttpxASGITransport` — an ``httpx.AsyncBaseTransport`` over an app (the Ollama provider's
  seam, or an ``httpx.AsyncClient`` a test drives).
* :class:`InProcessServer` — an app on its own event loop in a background thread, with a synchronous
  ``httpx`` transport for it, so synchronous tests (and the official SDK's sync client) can talk to
  it exactly as they would over a socket: ``anthropic.Anthropic(base_url=server.url,
  http_client=server.client())``.

A response whose app stops without finishing its body, or aborts, reads as a broken connection, as
it would on a socket; closing a response before its end tells the app the client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from trooper.providers.base import Unreachable

T = TypeVar("T")
_END = object()


class AppResponse:
    """The response of an in-process ASGI call: status and headers now, the body as it is sent."""

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        chunks: asyncio.Queue[Any],
        task: asyncio.Task[None],
        disconnect: asyncio.Event,
    ) -> None:
        self.status = status
        self.headers: Sequence[tuple[str, str]] = headers
        self._chunks = chunks
        self._task = task
        self._disconnect = disconnect
        self._done = False

    async def next_chunk(self) -> bytes | None:
        """The next body chunk; None at the end. A body the app did not finish raises :class:`Unreachable`."""
        if self._done:
            return None
        item = await self._chunks.get()
        if item is _END:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise Unreachable(f"in-process connection broke mid-body: {item}")
        return bytes(item)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            if chunk:
                yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        """Stop reading: an app still sending learns the client went away."""
        self._done = True
        self._disconnect.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)
            except TimeoutError:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def call_app(app: Any, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> AppResponse:
    """One HTTP request to ``app``; returns once the response has started (headers sent)."""
    parts = urlsplit(url)
    host = parts.hostname or "testserver"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": parts.scheme or "http",
        "path": parts.path or "/",
        "raw_path": (parts.path or "/").encode(),
        "query_string": parts.query.encode("latin-1"),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 0),
        "server": (host, parts.port or 80),
        "extensions": {},
    }
    disconnect = asyncio.Event()
    started: asyncio.Future[tuple[int, list[tuple[str, str]]]] = asyncio.get_running_loop().create_future()
    # A small bound gives flow control, as a socket's buffers do: an app that streams waits for its
    # reader, so a reader that stops early stops the stream where it was, not after its end.
    chunks: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    finished = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal finished
        if message["type"] == "http.response.start":
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            if not started.done():
                started.set_result((int(message["status"]), pairs))
        elif message["type"] == "http.response.body":
            if message.get("body"):
                await put(message["body"])
            if not message.get("more_body", False):
                finished = True
                await put(_END)

    async def put(item: Any) -> None:
        """Hand a chunk to the reader, unless the reader has gone (then it is dropped, as by a socket)."""
        if disconnect.is_set():
            return
        if chunks.full():
            putting = asyncio.ensure_future(chunks.put(item))
            gone = asyncio.ensure_future(disconnect.wait())
            try:
                await asyncio.wait({putting, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (putting, gone):
                    waiter.cancel()
                await asyncio.gather(putting, gone, return_exceptions=True)
        else:
            chunks.put_nowait(item)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
            elif not finished:
                await put(exc)
            return
        if not started.done():
            started.set_exception(ConnectionResetError("the app closed the connection without a response"))
        elif not finished:
            await put(ConnectionResetError("the app closed the connection before the end of the body"))

    task = asyncio.ensure_future(run())
    try:
        status, pairs = await started
    except BaseException:
        disconnect.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise
    return AppResponse(status, pairs, chunks, task, disconnect)


class ASGITransport:
    """The cloud provider's :class:`~trooper.providers.transport.Transport` over an ASGI app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> AppResponse:
        try:
            return await call_app(self.app, method, url, headers, body)
        except (ConnectionError, OSError) as exc:
            raise Unreachable(f"in-process upstream dropped the connection: {exc}") from exc

    async def aclose(self) -> None:
        return None


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, response: AppResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except Unreachable as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxASGITransport(httpx.AsyncBaseTransport):
    """An ``httpx`` async transport over an ASGI app, with streamed bodies (unlike httpx's own)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        try:
            response = await call_app(self.app, request.method, str(request.url), list(request.headers.items()), body)
        except (ConnectionError, OSError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(response.status, headers=response.headers, stream=_AsyncBody(response), request=request)


def _sync_transport(server: InProcessServer, module: Any) -> Any:
    """A synchronous transport of ``module`` (``httpx``, or ``httpx2`` which newer SDKs use) on ``server``."""

    class Body(module.SyncByteStream):  # type: ignore[misc]
        def __init__(self, response: AppResponse) -> None:
            self._response = response

        def __iter__(self) -> Iterator[bytes]:
            while True:
                try:
                    chunk = server.run(self._response.next_chunk())
                except Unreachable as exc:
                    raise module.RemoteProtocolError(str(exc)) from exc
                if chunk is None:
                    return
                if chunk:
                    yield chunk

        def close(self) -> None:
            server.run(self._response.aclose())

    class Transport(module.BaseTransport):  # type: ignore[misc]
        def handle_request(self, request: Any) -> Any:
            body = request.read()
            response = server.run(
                call_app(server.app, request.method, str(request.url), list(request.headers.items()), body)
            )
            return module.Response(response.status, headers=response.headers, stream=Body(response), request=request)

    return Transport()


class InProcessServer:
    """An ASGI app on an event loop of its own, in a background thread, reachable without a socket.

    Like :class:`~trooper.testing.LoopbackServer`, but :meth:`client` gives an ``httpx.Client``
    whose requests are function calls on that loop. :meth:`run` runs a coroutine there (to build or
    close objects that belong to the loop).
    """

    url = "http://trooper.in-process"

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="in-process-app", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def client(self, module: Any = httpx, **kwargs: Any) -> Any:
        """A synchronous client of ``module`` (``httpx`` by default) on this server; the official SDK
        takes one as ``http_client`` (of the HTTP package it is built on)."""
        return module.Client(transport=_sync_transport(self, module), base_url=self.url, **kwargs)

    def settle(self) -> None:
        """Wait until the loop has run every callback already scheduled (bookkeeping after a response)."""
        self.run(asyncio.sleep(0))

    def stop(self) -> None:
        if self.loop.is_closed():
            return

        async def drain() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(drain(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ASGITransport", "AppResponse", "HttpxASGITransport", "InProcessServer", "call_app"]
