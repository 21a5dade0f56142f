"""Run an ASGI app on a real loopback socket in a background thread.

Fakes and Trooper itself are served this way in tests: a real uvicorn server on 127.0.0.1 with an
ephemeral port, so clients talk over real sockets and see real bytes. The server has its own event
loop in its own thread, so it works from synchronous tests and from async ones alike.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class LoopbackServer:
    """``with LoopbackServer(app) as server: server.url`` — an app served on ``127.0.0.1:<port>``."""

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, http: str = "httptools", **uvicorn_options: Any
    ) -> None:
        """``uvicorn_options`` go to :class:`uvicorn.Config` as they are (Trooper passes
        :data:`trooper.server.UVICORN_OPTIONS`, so tests serve it exactly as ``trooper serve`` does)."""
        self.app = app
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it, Nagle's algorithm holds back the small
        # writes of a response on a reused connection until the peer's delayed ACK (tens of ms).
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            http=http,
            loop="asyncio",
            access_log=False,
            timeout_graceful_shutdown=1,
            **uvicorn_options,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
            loop.close()

        self._thread = threading.Thread(target=run, name=f"loopback-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("loopback server failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
