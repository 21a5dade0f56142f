"""A running Trooper between the package's fakes, for tests: in-process by default, or on sockets.

``TrooperHarness(config, store, cloud, local).start()`` builds a real :class:`~trooper.engine.Engine`
and serves it with the real ASGI app; :meth:`TrooperHarness.client` is the official SDK's client
pointed at it. With ``in_process=True`` (the default) nothing opens a socket: Trooper runs on an
:class:`~trooper.testing.inprocess.InProcessServer` and talks to the fakes' ASGI apps directly, which
makes a request cost a fraction of a millisecond. With ``in_process=False``, or when ``cloud`` and
``local`` are URLs, everything goes over loopback sockets as in production. :meth:`restart` builds a
new engine — new caches, new index, the same store — as a new Trooper process would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anthropic
import attrs

from trooper.config import Config
from trooper.engine import Engine
from trooper.health import CloudHealth
from trooper.providers.anthropic import AnthropicProvider
from trooper.providers.ollama import OllamaProvider
from trooper.server import UVICORN_OPTIONS, create_app
from trooper.store.base import SessionStore
from trooper.store.sync import SyncStore
from trooper.testing._runner import LoopbackServer
from trooper.testing.fake_anthropic import FakeAnthropic
from trooper.testing.fake_ollama import FakeOllama
from trooper.testing.inprocess import ASGITransport, HttpxASGITransport, InProcessServer

API_KEY = "sk-ant-test-0000"
T = TypeVar("T")


@attrs.define
class TrooperHarness:
    """Trooper, its store and its upstreams; the SDK as the client."""

    config: Config
    _store: SessionStore
    cloud: FakeAnthropic | str
    local: FakeOllama | str | None
    in_process: bool = True
    #: The engine's clock; a test may pass one it moves by hand (a retry-after passes at once).
    clock: Callable[[], float] = time.time
    engine: Engine | None = None
    server: LoopbackServer | InProcessServer | None = None

    @property
    def store(self) -> SyncStore:
        """The store (its methods called synchronously), once the server has written what it owes for
        the responses it already sent."""
        self.settle()
        return SyncStore(self._store, self.run)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop Trooper runs on (its store and engine belong to it)."""
        server = self.server
        if isinstance(server, InProcessServer):
            return server.run(coroutine)
        if server is not None and server.loop is not None and not server.loop.is_closed():
            return asyncio.run_coroutine_threadsafe(coroutine, server.loop).result(30)
        return asyncio.run(coroutine)

    @property
    def url(self) -> str:
        assert self.server is not None, "the harness is not started"
        return self.server.url

    def settle(self) -> None:
        """Wait until the server has run the bookkeeping of every response it already sent (the turn
        record is written just after a response leaves)."""
        if self.engine is not None and self.server is not None:
            self.run(self.engine.settle())

    def _providers(self) -> tuple[AnthropicProvider, OllamaProvider | None]:
        anthropic_config, ollama_config = self.config.anthropic, self.config.ollama
        if isinstance(self.cloud, FakeAnthropic) and self.in_process:
            cloud = AnthropicProvider(
                "http://fake-anthropic.in-process",
                first_byte_timeout=anthropic_config.first_byte_timeout,
                transport=ASGITransport(self.cloud.app),
            )
        else:
            url = self.cloud if isinstance(self.cloud, str) else self.cloud.url
            cloud = AnthropicProvider(
                url,
                first_byte_timeout=anthropic_config.first_byte_timeout,
                idle_timeout=anthropic_config.idle_timeout,
                transport=anthropic_config.transport,
            )
        local: OllamaProvider | None = None
        if isinstance(self.local, FakeOllama) and self.in_process:
            local = OllamaProvider(
                "http://fake-ollama.in-process",
                first_byte_timeout=ollama_config.first_byte_timeout,
                idle_timeout=ollama_config.idle_timeout,
                transport=HttpxASGITransport(self.local.app),
                model=ollama_config.model,
            )
        elif self.local is not None:
            url = self.local if isinstance(self.local, str) else self.local.url
            local = OllamaProvider(
                url,
                first_byte_timeout=ollama_config.first_byte_timeout,
                idle_timeout=ollama_config.idle_timeout,
                model=ollama_config.model,
            )
        return cloud, local

    def start(self) -> TrooperHarness:
        if self.in_process:
            server = InProcessServer()

            async def build() -> Engine:
                cloud, local = self._providers()
                return Engine(cloud=cloud, local=local, store=self._store, config=self.config, clock=self.clock)

            self.engine = server.run(build())
            server.app = create_app(self.config, self.engine)
            self.server = server
            return self
        cloud, local = self._providers()
        self.engine = Engine(cloud=cloud, local=local, store=self._store, config=self.config, clock=self.clock)
        self.server = LoopbackServer(create_app(self.config, self.engine), **UVICORN_OPTIONS).start()
        return self

    def stop(self) -> None:
        server, engine = self.server, self.engine
        self.server = None
        if server is None:
            return
        if engine is not None:
            closing = _close_providers(engine)
            if isinstance(server, InProcessServer):
                server.run(closing)
            elif server.loop is not None and not server.loop.is_closed():
                asyncio.run_coroutine_threadsafe(closing, server.loop).result(5)
            else:
                closing.close()
        server.stop()

    def cloud_recovered(self) -> None:
        """Forget what the engine knows of the cloud's health, as if every retry time had passed and a
        probe had succeeded (for tests that script a failure and then want the cloud back at once)."""
        engine = self.engine
        assert engine is not None, "the harness is not started"
        for key in engine.watch.keys:
            self.run(engine.store.health_set(key, CloudHealth().to_dict()))

    def restart(self) -> TrooperHarness:
        """A new Trooper process in all but name: new engine, new caches, the same store."""
        self.stop()
        return self.start()

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        options: dict[str, Any] = {"base_url": self.url, "api_key": API_KEY, "max_retries": 0, "timeout": 30}
        if isinstance(self.server, InProcessServer):
            options["http_client"] = self.server.client(_sdk_http(), timeout=30)
        options.update(kwargs)
        return anthropic.Anthropic(**options)

    def http(self) -> Any:
        """An ``httpx.Client`` on Trooper, for requests the SDK cannot make (raw bodies, odd headers)."""
        import httpx

        if isinstance(self.server, InProcessServer):
            return self.server.client(timeout=30)
        return httpx.Client(base_url=self.url, timeout=30)


def _sdk_http() -> Any:
    """The HTTP package the installed SDK is built on (``httpx2`` in newer releases, else ``httpx``)."""
    try:
        import httpx2
    except ImportError:
        import httpx

        return httpx
    return httpx2


async def _close_providers(engine: Engine) -> None:
    await engine.settle()
    await engine.cloud.aclose()
    if engine.local is not None:
        await engine.local.aclose()


class FakeClock:
    """A clock a test moves by hand: ``TrooperHarness(..., clock=clock)``, then ``clock.advance(2)``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


__all__ = ["API_KEY", "FakeClock", "TrooperHarness"]
