"""The ASGI app: a thin layer that turns HTTP into :class:`~trooper.engine.Incoming` and back.

The API routes (``/v1/…``) are served by a small raw-ASGI handler rather than through Starlette's
request/response objects: it is the hot path, and every microsecond there is added to every cloud
call (DESIGN §11). Everything else — health and admin — is an ordinary Starlette app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trooper import __version__
from trooper.config import Config
from trooper.engine import Engine, Incoming, Outgoing
from trooper.wire import TrooperError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = structlog.get_logger("trooper.server")

_JSON_HEADERS = [(b"content-type", b"application/json")]


class TrooperApp:
    """The whole ASGI application: ``/v1/*`` on the fast path, the rest through Starlette."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine
        self._owns_engine = engine is None
        self.max_body = config.server.max_body_bytes
        self.admin = Starlette(routes=[
            Route("/", self.health, methods=["GET", "HEAD"]),
            Route("/trooper/health", self.health, methods=["GET", "HEAD"]),
        ])

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
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.engine is not None and self._owns_engine:
                    await self.engine.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self._api(scope, receive, send)
            return
        if scope["type"] == "http" and not _admin_path(scope["path"]):
            await _send_whole(send, 404, _JSON_HEADERS, error_body(
                "not_found_error", f"{scope['method']} {scope['path']}: no such route"))
            return
        await self.admin(scope, receive, send)

    # ---------------------------------------------------------------------------- API routes

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        assert engine is not None, "lifespan did not run"
        try:
            body = await self._read_body(scope, receive)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            request = Incoming(scope["method"], scope["path"], scope["query_string"].decode("latin-1"),
                               headers, body)
            reply = await engine.handle(request)
        except TrooperError as exc:
            await _send_whole(send, exc.status, _JSON_HEADERS, exc.body())
            return
        except Exception:
            log.exception("internal_error", path=scope["path"])
            await _send_whole(send, 500, _JSON_HEADERS,
                              error_body("api_error", "Trooper hit an internal error; see its log"))
            return
        await _send_reply(send, reply)

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

    async def health(self, request: Request) -> Response:
        if request.method == "HEAD":
            return Response(status_code=200)
        engine = self.engine
        cloud = engine.health_snapshot() if engine is not None else {}
        return JSONResponse({"status": "ok", "service": "trooper", "version": __version__, "cloud": cloud})


def _admin_path(path: str) -> bool:
    return path == "/" or path.startswith("/trooper/")


def _too_large(limit: int) -> TrooperError:
    return TrooperError("request_too_large", f"request body exceeds Trooper's limit of {limit} bytes", status=413)


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_reply(send: Send, reply: Outgoing) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if reply.stream is None:
        headers = [h for h in headers if h[0] != b"content-length"]
        await _send_whole(send, reply.status, headers, reply.body)
        return
    stream = reply.stream
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        log.info("client_disconnected")
    finally:
        if isinstance(stream, AsyncIterator) and hasattr(stream, "aclose"):
            with contextlib.suppress(Exception):
                await stream.aclose()


def create_app(config: Config | None = None, engine: Engine | None = None) -> TrooperApp:
    """The ASGI app; pass ``engine`` to serve an engine you built (tests, embedders)."""
    return TrooperApp(config or (engine.config if engine is not None else Config()), engine)


__all__ = ["TrooperApp", "create_app", "orjson"]
