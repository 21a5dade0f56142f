"""``trooper doctor`` on a Redis store: it says whether Redis would keep what it acknowledged.

An append-only file is required (a restart would otherwise lose acknowledged ledger records), an
``fsync`` on every write (or ``WAITAOF``) is what also survives a power loss, and an eviction policy
that may drop keys without an expiry could drop the ledger. A Redis that does not answer is named,
without its password.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.test_redis_server import RedisServer, free_port
from trooper.config import AnthropicConfig, Config, OllamaConfig, StoreConfig
from trooper.doctor import Check, diagnose
from trooper.ledger import LedgerRecord
from trooper.store import RedisStore, StoreUnavailable

pytestmark = pytest.mark.timeout(60)


def _store_checks(url: str, **settings: object) -> dict[str, Check]:
    nowhere = f"http://127.0.0.1:{free_port()}"  # upstreams on loopback that refuse: nothing leaves the host
    config = Config(
        anthropic=AnthropicConfig(base_url=nowhere),
        ollama=OllamaConfig(base_url=nowhere),
        store=StoreConfig(path=url, **settings),  # type: ignore[arg-type]
    )
    checks = asyncio.run(diagnose(config, seconds=0.5))
    return {check.name: check for check in checks if check.name.startswith("store")}


@pytest.mark.parametrize(
    ("options", "persistence", "eviction", "says"),
    [
        ((), True, True, "warning: appendonly yes, appendfsync everysec"),
        (("--appendfsync", "always"), True, True, "survive a power loss"),
        (("--appendonly", "no"), False, True, "appendonly is off"),
        (("--maxmemory-policy", "allkeys-lru"), True, False, "appendfsync everysec"),
    ],
)
def test_doctor_says_whether_redis_keeps_acknowledged_ledger_writes(
    tmp_path: Path, options: tuple[str, ...], persistence: bool, eviction: bool, says: str
) -> None:
    server = RedisServer(tmp_path / "redis", *options).start()
    try:
        checks = _store_checks(server.url)
    finally:
        server.stop()
    assert checks["store"].ok and "Redis 7" in checks["store"].detail
    assert checks["store persistence"].ok is persistence and says in checks["store persistence"].detail
    assert checks["store eviction"].ok is eviction


def test_doctor_names_a_redis_that_does_not_answer_without_its_password() -> None:
    url = f"redis://:hunter2-pw@127.0.0.1:{free_port()}/0"
    checks = _store_checks(url, redis_timeout=0.5)
    assert not checks["store"].ok
    assert "hunter2" not in checks["store"].detail
    assert "127.0.0.1" in checks["store"].detail and "failed" in checks["store"].detail


def test_wait_aof_on_a_redis_without_waitaof_fails_closed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        version = _store_checks(server.url)["store"].detail
        if "Redis 7.0" not in version and "Redis 6" not in version:
            pytest.skip("this redis-server has WAITAOF")
        assert not _store_checks(server.url, redis_wait_aof=True)["store wait_aof"].ok
        with pytest.raises(StoreUnavailable):
            asyncio.run(RedisStore(server.url, wait_aof=True).ledger_append([LedgerRecord.of("reply", [1])]))
    finally:
        server.stop()
