"""Shared fixtures: fake upstreams and a real Trooper on loopback sockets, the SDK as the client."""

from __future__ import annotations

import compileall
import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import attrs
import pytest

from trooper.audit import configure_logging
from trooper.config import Config, LocalityConfig, OllamaConfig
from trooper.store import MemoryStore, SQLiteStore
from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url
from trooper.testing.harness import API_KEY, TrooperHarness

#: Trooper logs every turn; the tests that read logs configure their own stream.
QUIET = open(os.devnull, "w")  # noqa: SIM115


#: The package's source folder.
PACKAGE = Path(__file__).resolve().parents[1] / "trooper"


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package's bytecode once, before any worker starts.

    Many tests start Trooper as a process of its own (``trooper serve``, the CLI, the demo), and an
    editable install leaves the package as source: where ``PYTHONDONTWRITEBYTECODE`` is set (CI
    images often set it) every one of those processes would compile every module again.
    """
    if not hasattr(config, "workerinput"):  # the xdist controller, or a run without workers
        compileall.compile_dir(str(PACKAGE), quiet=1)


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


#: A running Trooper (in-process unless told ``in_process=False``); the name the tests know it by.
Harness = TrooperHarness


def make_config(**locality: object) -> Config:
    return Config(
        ollama=OllamaConfig(model="qwen3"),
        locality=attrs.evolve(LocalityConfig(), **locality),  # type: ignore[arg-type]
    )


@pytest.fixture
def trooper(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> Iterator[Harness]:
    harness = Harness(make_config(), MemoryStore(), fake_cloud, fake_local).start()
    yield harness
    harness.stop()


@pytest.fixture
def sqlite_trooper(fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(make_config(), SQLiteStore(tmp_path / "trooper.sqlite3"), fake_cloud, fake_local).start()
    yield harness
    harness.stop()


@pytest.fixture
def trooper_local_down(fake_cloud: FakeAnthropic) -> Iterator[Harness]:
    harness = Harness(make_config(), MemoryStore(), fake_cloud, unused_port_url()).start()
    yield harness
    harness.stop()


@pytest.fixture
def client(trooper: Harness) -> anthropic.Anthropic:
    return trooper.client()


__all__ = ["API_KEY", "Harness", "make_config"]
