"""The ASGI app: a thin layer that turns HTTP into :class:`~trooper.engine.Incoming` and back.

The API routes (``/v1/…``) are served by a small raw-ASGI handler rather than through Starlette's
request/response objects: it is the hot path, and every microsecond there is added to every cloud
call. Everything else — health and admin — is an ordinary Starlette app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from email.utils import formatdate
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from trooper._version import __version__
from trooper.config import Config
from trooper.engine import Engine
from trooper.wire import ANSWERED_BY_TROOPER, Incoming, Outgoing, TrooperError, error_body, new_request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = structlog.get_logger("trooper.server")

_JSON_HEADERS = [(b"content-type", b"application/json")]

#: How Trooper runs on uvicorn, wherever it is served (``trooper serve``, tests, embedders).
#: uvicorn's own ``server`` and ``date`` headers are off because a relayed response already carries
#: the upstream's: with them on, a client saw two of each (``server: uvicorn`` beside
#: ``server: cloudflare``). Trooper dates the responses it makes itself (:func:`_dated`).
#: Proxy headers are off because nothing here uses the client's address.
UVICORN_OPTIONS: dict[str, Any] = {"server_header": False, "date_header": False, "proxy_headers": False}


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode("ascii")


def _dated(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus an HTTP ``date`` when they have none (formatted once a second)."""
    for name, _ in headers:
        if name == b"date":
            return headers
    return [*headers, (b"date", _http_date(int(time.time())))]


class TrooperApp:
    """The whole ASGI application: ``/v1/*`` on the fast path, the rest through Starlette."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine
        self.owns_engine = engine is None
        self.max_body = config.server.max_body_bytes
        self.admin_app = Starlette(
            routes=[
                Route("/", self.root, methods=["GET", "HEAD"]),
                Route("/trooper/health", self.health, methods=["GET"]),
                Route("/trooper/sessions", self.sessions, methods=["GET"]),
                Route("/trooper/sessions/{session}", self.session, methods=["GET"]),
                Route("/trooper/sessions/{session}/audit", self.audit, methods=["GET"]),
                Route("/trooper/sessions/{session}/graph", self.graph, methods=["GET"]),
                Route("/trooper/metrics", self.metrics, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ]
        )
        self._pruner: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------------------- lifecycle

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.engine is None:
                        self.engine = Engine.from_config(self.config)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._pruner = asyncio.create_task(self._prune_forever(self.engine))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._pruner is not None:
                    self._pruner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._pruner
                if self.engine is not None and self.owns_engine:
                    await self.engine.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _prune_forever(self, engine: Engine) -> None:
        """Retention: prune at start-up, then every ``retention.interval_seconds``."""
        while True:
            try:
                await engine.admin.prune()
            except Exception:
                log.exception("prune_failed")
            await asyncio.sleep(self.config.retention.interval_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self._api(scope, receive, send)
            return
        if scope["type"] == "http" and not _admin_path(scope["path"]):
            await _send_whole(
                send,
                404,
                _JSON_HEADERS,
                error_body("not_found_error", f"{scope['method']} {scope['path']}: no such route"),
            )
            return
        if not self._authorized(scope):
            await _send_whole(
                send,
                401,
                [*_JSON_HEADERS, (b"www-authenticate", b"Bearer")],
                error_body("authentication_error", "the admin API needs 'Authorization: Bearer <admin token>'"),
            )
            return
        await self.admin_app(scope, receive, _dating(send))

    def _authorized(self, scope: Scope) -> bool:
        token = self.config.server.admin_token
        if not token or scope["path"] == "/":
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
        return False

    # ---------------------------------------------------------------------------- API routes

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        assert engine is not None, "lifespan did not run"
        request_id = new_request_id()
        # Trooper's own answer before or outside a turn: which request, and that nothing was sent.
        own = [
            *_JSON_HEADERS,
            (b"x-trooper-route", ANSWERED_BY_TROOPER.encode()),
            (b"x-trooper-request-id", request_id.encode()),
        ]
        try:
            body = await self._read_body(scope, receive)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            query = scope["query_string"].decode("latin-1")
            reply = await engine.handle(Incoming(scope["method"], scope["path"], query, headers, body, request_id))
        except TrooperError as exc:
            await _send_whole(send, exc.status, [*own, *_encoded(exc.headers.items())], exc.body())
            return
        except Exception:
            log.exception("internal_error", path=scope["path"], request_id=request_id)
            await _send_whole(send, 500, own, error_body("api_error", "Trooper hit an internal error; see its log"))
            return
        await _send_reply(send, receive, reply)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise TrooperError("invalid_request_error", "content-length header is not a number") from None
                if declared > self.max_body:
                    raise _too_large(self.max_body)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise TrooperError("invalid_request_error", "client disconnected before the body was read")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _too_large(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    # ---------------------------------------------------------------------------- admin routes

    def _engine(self) -> Engine:
        assert self.engine is not None, "lifespan did not run"
        return self.engine

    async def root(self, request: Request) -> Response:
        """Liveness for clients' start-up probes (Claude Code sends ``HEAD /``); says nothing more."""
        if request.method == "HEAD":
            return Response(status_code=200)
        return JSONResponse({"status": "ok", "service": "trooper", "version": __version__})

    async def health(self, request: Request) -> Response:
        return JSONResponse(await self._engine().admin.health_report())

    async def sessions(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100)
        return JSONResponse({"data": await self._engine().admin.list_sessions(limit)})

    async def session(self, request: Request) -> Response:
        found = await self._engine().admin.session_report(request.path_params["session"])
        if found is None:
            return _not_found(request.path_params["session"])
        return JSONResponse(found)

    async def audit(self, request: Request) -> Response:
        session = request.path_params["session"]
        records = await self._engine().admin.session_audit(session)
        if records is None:
            return _not_found(session)
        return JSONResponse({"data": records})

    async def graph(self, request: Request) -> Response:
        fmt = request.query_params.get("format", "mermaid")
        if fmt not in ("mermaid", "dot"):
            return JSONResponse(
                orjson.loads(error_body("invalid_request_error", "format: must be 'mermaid' or 'dot'")), status_code=400
            )
        text = await self._engine().admin.session_graph(
            request.path_params["session"], "dot" if fmt == "dot" else "mermaid"
        )
        if text is None:
            return _not_found(request.path_params["session"])
        return PlainTextResponse(text, media_type="text/vnd.graphviz" if fmt == "dot" else "text/plain")

    async def metrics(self, request: Request) -> Response:
        return Response(self._engine().metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _admin_path(path: str) -> bool:
    return path in ("/", "/metrics") or path.startswith("/trooper/")


def _int_param(request: Request, name: str, default: int) -> int:
    try:
        return max(1, min(10_000, int(request.query_params.get(name, default))))
    except ValueError:
        return default


def _not_found(session: str) -> Response:
    return Response(
        error_body("not_found_error", f"no stored conversation {session!r}"),
        status_code=404,
        media_type="application/json",
    )


def _too_large(limit: int) -> TrooperError:
    return TrooperError("request_too_large", f"request body exceeds Trooper's limit of {limit} bytes", status=413)


def _dating(send: Send) -> Send:
    """``send`` that dates the response start (the admin app's responses, as Trooper's own)."""

    async def dated(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": _dated(list(message.get("headers", [])))}
        await send(message)

    return dated


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_dated(headers), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _send_reply(send: Send, receive: Receive, reply: Outgoing) -> None:
    headers = _encoded(reply.headers)
    if reply.stream is None:
        headers = [h for h in headers if h[0] != b"content-length"]
        await _send_whole(send, reply.status, headers, reply.body)
        return
    stream = reply.stream
    # A client that goes away must stop the stream at once — a local reply would otherwise run on
    # to its end with nobody reading (uvicorn's ``send`` returns silently once the peer is gone) —
    # so the stream is pumped in a task that a disconnect cancels.
    pump = asyncio.ensure_future(_pump(send, reply.status, headers, stream))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, watch):
            if not task.done():
                task.cancel()
        for task in (pump, watch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if watch.done() and not watch.cancelled() and pump.cancelled():
            log.info("client_disconnected")
        if isinstance(stream, AsyncIterator) and hasattr(stream, "aclose"):
            with contextlib.suppress(Exception):
                await stream.aclose()


async def _pump(send: Send, status: int, headers: list[tuple[bytes, bytes]], stream: AsyncIterator[bytes]) -> None:
    try:
        await send({"type": "http.response.start", "status": status, "headers": _dated(headers)})
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        log.info("client_disconnected")


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_app(config: Config | None = None, engine: Engine | None = None, *, owns_engine: bool = False) -> TrooperApp:
    """The ASGI app; pass ``engine`` to serve an engine you built (tests, embedders).

    An engine passed in is closed at shutdown only with ``owns_engine=True``; one the app builds
    itself from ``config`` always is.
    """
    app = TrooperApp(config or (engine.config if engine is not None else Config()), engine)
    app.owns_engine = owns_engine or engine is None
    return app


__all__ = ["UVICORN_OPTIONS", "TrooperApp", "create_app"]
