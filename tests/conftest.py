"""Shared fixtures: fake upstreams and a real Trooper on loopback sockets, the SDK as the client."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import attrs
import pytest

from trooper.audit import configure_logging
from trooper.config import Config, LocalityConfig, OllamaConfig
from trooper.engine import Engine
from trooper.providers.anthropic import AnthropicProvider
from trooper.providers.ollama import OllamaProvider
from trooper.server import UVICORN_OPTIONS, create_app
from trooper.store import MemoryStore, SQLiteStore
from trooper.store.base import SessionStore
from trooper.testing import FakeAnthropic, FakeOllama, LoopbackServer, unused_port_url

API_KEY = "sk-ant-test-0000"
#: Trooper logs every turn; the tests that read logs configure their own stream.
QUIET = open(os.devnull, "w")  # noqa: SIM115
configure_logging("info", QUIET)


@pytest.fixture(scope="session")
def _cloud_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="session")
def _local_server() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake_cloud(_cloud_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    _cloud_server.reset()
    yield _cloud_server
    _cloud_server.reset()


@pytest.fixture
def fake_local(_local_server: FakeOllama) -> Iterator[FakeOllama]:
    _local_server.reset()
    yield _local_server
    _local_server.reset()


@attrs.define
class Harness:
    """A running Trooper: its URL, engine and store, and a way to restart it on the same store."""

    config: Config
    _store: SessionStore
    cloud_url: str
    local_url: str | None
    engine: Engine | None = None
    server: LoopbackServer | None = None

    @property
    def store(self) -> SessionStore:
        """The store, once the server has written what it owes for the responses already sent."""
        self.settle()
        return self._store

    def settle(self) -> None:
        """Wait until the server has run the bookkeeping of every response it has already sent.

        The engine writes a turn's audit record and log line just after the response leaves; one
        round trip through the server's event loop orders what follows after all of them.
        """
        loop = self.server.loop if self.server is not None else None
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> Harness:
        cloud = AnthropicProvider(
            self.cloud_url,
            first_byte_timeout=self.config.anthropic.first_byte_timeout,
            idle_timeout=self.config.anthropic.idle_timeout,
            transport=self.config.anthropic.transport,
        )
        local = (
            OllamaProvider(
                self.local_url,
                first_byte_timeout=self.config.ollama.first_byte_timeout,
                idle_timeout=self.config.ollama.idle_timeout,
            )
            if self.local_url
            else None
        )
        self.engine = Engine(cloud=cloud, local=local, store=self._store, config=self.config)
        self.server = LoopbackServer(create_app(self.config, self.engine), **UVICORN_OPTIONS).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            engine = self.engine
            loop = self.server.loop
            if engine is not None and loop is not None and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(engine.cloud.aclose(), loop).result(5)
                if engine.local is not None:
                    asyncio.run_coroutine_threadsafe(engine.local.aclose(), loop).result(5)
            self.server.stop()
            self.server = None

    def restart(self) -> Harness:
        """A new Trooper process in all but name: new engine, new caches, the same store."""
        self.stop()
        return self.start()

    def client(self, **kwargs: object) -> anthropic.Anthropic:
        options: dict[str, object] = {"base_url": self.url, "api_key": API_KEY, "max_retries": 0, "timeout": 30}
        options.update(kwargs)
        return anthropic.Anthropic(**options)  # type: ignore[arg-type]


def make_config(**locality: object) -> Config:
    return Config(
        ollama=OllamaConfig(model="qwen3"),
        locality=attrs.evolve(LocalityConfig(), **locality),  # type: ignore[arg-type]
    )


@pytest.fixture
def trooper(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> Iterator[Harness]:
    harness = Harness(make_config(), MemoryStore(), fake_cloud.url, fake_local.url).start()
    yield harness
    harness.stop()


@pytest.fixture
def sqlite_trooper(fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(make_config(), SQLiteStore(tmp_path / "trooper.sqlite3"), fake_cloud.url, fake_local.url).start()
    yield harness
    harness.stop()


@pytest.fixture
def trooper_local_down(fake_cloud: FakeAnthropic) -> Iterator[Harness]:
    harness = Harness(make_config(), MemoryStore(), fake_cloud.url, unused_port_url()).start()
    yield harness
    harness.stop()


@pytest.fixture
def client(trooper: Harness) -> anthropic.Anthropic:
    return trooper.client()
