"""A real ``redis-server`` for the tests, started on a free port in a temporary directory, and what
must hold of Redis itself: an acknowledged ledger append survives Redis being killed and restarted.

Other test modules import :class:`RedisServer` and the ``redis_server`` fixture from here. Without
``redis-server`` the Redis tests skip — except in CI (``CI`` set), where they fail: the Redis store
is never to pass CI untested.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from trooper.ledger import LedgerRecord
from trooper.store import RedisStore

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> str:
    """The ``redis-server`` binary; skips the test without one, fails it in CI."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the Redis tests")
        pytest.skip(message)
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Process:
    """A server the tests start as a process of its own, and stop or kill."""

    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:  # pragma: no cover - each server starts its own way
        raise NotImplementedError

    def kill(self) -> None:
        """``kill -9``: nothing the process acknowledged may depend on its shutting down well."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> Self:
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Terminate (resumed first, should a test have paused it), killed if it will not go."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class RedisServer(_Process):
    """``redis-server --port N --dir TMP --appendonly yes --save ''``, and ways to hurt it."""

    def __init__(self, directory: Path, *extra: str, password: str | None = None) -> None:
        self.binary = require_redis()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", "redis.log", *self.extra]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.answers():
                return self
            time.sleep(0.01)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def answers(self) -> bool:
        """Whether the server takes commands (after loading its data)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections stay open and nothing answers — a hung server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each shared store in turn: an SQLite file, or a Redis of the test's own."""
    if request.param == "sqlite":
        yield str(tmp_path / "trooper.sqlite3")
        return
    server = RedisServer(tmp_path / "redis").start()
    yield server.url
    server.stop()


def test_an_acknowledged_ledger_append_survives_kill_9_of_redis(redis_server: RedisServer) -> None:
    record = LedgerRecord.of("reply", [1, 2, 3], session="s")

    async def append() -> None:
        store = RedisStore(redis_server.url)
        await store.ledger_append([record])
        await store.close()

    async def read() -> list[LedgerRecord]:
        store = RedisStore(redis_server.url)
        records, _ = await store.ledger_since(0)
        await store.close()
        return records

    asyncio.run(append())
    redis_server.restart()
    assert asyncio.run(read()) == [record]


class TrooperProcess(_Process):
    """``trooper serve`` as its own process, on a given store (an SQLite path or a Redis URL)."""

    def __init__(self, cloud_url: str, local_url: str, store: str, workdir: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TROOPER_PORT": str(self.port),
            "TROOPER_STORE": store,
            "TROOPER_ANTHROPIC_BASE_URL": cloud_url,
            "TROOPER_OLLAMA_BASE_URL": local_url,
            "TROOPER_OLLAMA_MODEL": "qwen3",
            "TROOPER_OLLAMA_CONTEXT_LENGTH": "32768",
            "TROOPER_CONFIG": str(workdir / "absent.toml"),
            **{f"TROOPER_{name.upper()}": value for name, value in settings.items()},
        }
        self.log = workdir / f"trooper-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> TrooperProcess:
        """Start the process without waiting for it (:meth:`wait` or :meth:`ready` then)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trooper", "serve"], env=self.env, stdout=log, stderr=log
            )
        return self

    def ready(self, timeout: float = 0.2) -> bool:
        import httpx

        if self.process is None or self.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self) -> TrooperProcess:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"trooper serve ended: {self.log.read_text()[-2000:]}")
            if self.ready(1.0):
                return self
            time.sleep(0.02)
        raise RuntimeError("trooper serve did not start")

    def start(self) -> TrooperProcess:
        return self.spawn().wait()
