"""The in-process privacy state machine, once more, with every instance on a Redis store.

``tests/test_privacy_machine.py`` explores widely on SQLite; here the same machine — same rules,
same invariants, restarts and a second instance included — runs a few examples against a real
``redis-server``, to show the Redis store is a drop-in: nothing of the engine changes with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from tests import test_privacy_machine as machine
from tests.test_redis_server import RedisServer
from trooper.store import RedisStore


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    yield server.url
    server.stop()


def test_the_privacy_machine_holds_on_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def redis_store(path: Path) -> RedisStore:
        # Each example of the machine has a directory of its own: give it a namespace of its own.
        namespace = "trooper-" + hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
        return RedisStore(redis_url, namespace=namespace)

    monkeypatch.setattr(machine, "SQLiteStore", redis_store)
    run_state_machine_as_test(
        machine.PrivacyMachine, settings=settings(machine.SETTINGS, max_examples=6, stateful_step_count=14)
    )
