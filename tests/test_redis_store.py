"""The Redis store keeps the store protocol exactly as the SQLite store does, on a real ``redis-server``.

The same checks run on both stores, so "drop-in" is shown rather than claimed: conversations,
audit, the ledger and its cursor, health, the probe's claim, the lock, retention. Then what only a
shared store must do: a lock two store objects (two instances) contend for, a dead holder's lock
lapsing, a password that never shows, and ``open_store`` choosing Redis for a ``redis://`` URL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.test_redis_server import RedisServer, redis_server, store_url  # noqa: F401  (fixtures)
from trooper.config import StoreConfig, load_config, redacted
from trooper.ledger import LedgerRecord
from trooper.store import RedisStore, SessionStore, SQLiteStore, StoreUnavailable, open_store

pytestmark = pytest.mark.timeout(60)


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def _contract(store: SessionStore) -> None:
    assert await store.load_conversation("a") is None
    await store.write("a", 100.0, {"id": "a", "state": "cloud"}, [("transition", {"event": "x"})])
    await store.write("b", 260.0, {"id": "b", "state": "local"}, [])
    await store.write("a", 300.0, None, [("turn", {"route": "cloud", "at": 301.0})])
    assert await store.load_conversation("a") == {"id": "a", "state": "cloud"}
    assert [row["id"] for row in await store.list_conversations()] == ["b", "a"]
    assert [row["id"] for row in await store.list_conversations(1)] == ["b"]
    assert await store.audit("a") == [
        {"at": 100.0, "kind": "transition", "event": "x"},
        {"at": 301.0, "kind": "turn", "route": "cloud"},
    ]
    first = [LedgerRecord.of("reply", [5, 1], session="a"), LedgerRecord.of("span.produced", [9], origin="fallback")]
    await store.ledger_append(first)
    records, cursor = await store.ledger_since(0)
    assert records == first
    assert await store.ledger_since(cursor) == ([], cursor)
    later = [LedgerRecord.of("tool", [7], shareable=True)]
    await store.ledger_append(later)
    assert (await store.ledger_since(cursor))[0] == later
    assert await store.health_get("k") is None
    await store.health_set("k", {"status": "quota", "retry_at": 5.0})
    assert await store.health_get("k") == {"status": "quota", "retry_at": 5.0}
    assert await store.claim("probe", 10)
    assert not await store.claim("probe", 10)
    await store.unclaim("probe")
    assert await store.claim("probe", 10)
    lease = await store.lock("a", 5)
    await lease.release()
    await lease.release()  # twice is harmless
    assert await store.summaries_get("a") == []
    summary = {"first": 3, "last": 9, "text": "what was said", "chain": "c0ffee"}
    await store.summaries_set("a", [summary])
    await store.summaries_set("b", [summary, summary])
    assert await store.summaries_get("a") == [summary]
    removed = await store.prune(older_than=250.0, max_sessions=None, max_audit_per_session=None)
    assert removed == {"sessions": 1, "audit": 2}
    assert await store.load_conversation("a") is None
    assert await store.audit("a") == []
    assert await store.summaries_get("a") == []  # they go with their conversation
    assert await store.summaries_get("b") == [summary, summary]
    for n in range(5):
        await store.write("b", 400.0 + n, None, [("turn", {"n": n})])
    removed = await store.prune(older_than=None, max_sessions=None, max_audit_per_session=2)
    assert removed == {"sessions": 0, "audit": 3}
    assert [row["n"] for row in await store.audit("b")] == [3, 4]
    await store.write("c", 500.0, {"id": "c"}, [])
    assert await store.prune(older_than=None, max_sessions=1, max_audit_per_session=None) == {"sessions": 1, "audit": 2}
    assert [row["id"] for row in await store.list_conversations()] == ["c"]
    await store.close()


def test_both_stores_keep_the_same_contract(store_url: str) -> None:  # noqa: F811
    run(_contract(open_store(store_url)))


def test_the_memory_store_keeps_it_too() -> None:
    run(_contract(open_store("memory")))


def test_open_store_takes_redis_urls_and_the_password_setting(redis_server: RedisServer) -> None:  # noqa: F811
    store = open_store(StoreConfig(path=redis_server.url, redis_timeout=0.5, lock_ttl=3.0))
    assert isinstance(store, RedisStore)
    assert (store.timeout, store.lock_ttl) == (0.5, 3.0)
    tls = open_store(StoreConfig(path="rediss://h:6380/2", redis_password="pw"))
    assert isinstance(tls, RedisStore) and tls.location == "rediss://h:6380/2"
    assert isinstance(open_store("/tmp/x/trooper.sqlite3"), SQLiteStore)


def test_a_password_works_from_the_url_or_the_setting_and_never_shows(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret-pw").start()
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        run(_contract(RedisStore(url)))
        config = load_config(None, environ={"TROOPER_STORE": server.url, "TROOPER_REDIS_PASSWORD": "s3cret-pw"})
        assert config.store.redis_password == "s3cret-pw"
        assert "s3cret-pw" not in repr(config)
        assert "s3cret-pw" not in str(redacted(config))
        assert "s3cret-pw" not in str(redacted(load_config(None, environ={"TROOPER_STORE": url})))
        store = open_store(config.store)
        run(store.health_set("k", {"ok": 1}))
        with pytest.raises(StoreUnavailable) as refused:
            run(RedisStore(f"redis://:wrong-pw@127.0.0.1:{server.port}/0").health_get("k"))
        assert "wrong-pw" not in str(refused.value) and "s3cret" not in str(refused.value)
        assert "127.0.0.1" in str(refused.value)
    finally:
        server.stop()


def test_a_dead_holders_lock_lapses_and_a_live_one_keeps_it(redis_server: RedisServer) -> None:  # noqa: F811
    async def hold_and_die() -> None:
        store = RedisStore(redis_server.url, lock_ttl=0.3)
        await store.lock("conv", 60)  # never released: the loop ends, renewals stop, as in a crash

    async def live_holder_keeps_it() -> float:
        holder, other = RedisStore(redis_server.url, lock_ttl=0.3), RedisStore(redis_server.url, lock_ttl=0.3)
        lease = await holder.lock("conv2", 60)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.8):  # well past lock_ttl: renewals keep it
                await other.lock("conv2", 60)
        await lease.release()
        started = time.monotonic()
        await (await other.lock("conv2", 60)).release()
        return time.monotonic() - started

    run(hold_and_die())
    started = time.monotonic()

    async def take() -> None:
        await (await RedisStore(redis_server.url).lock("conv", 60)).release()

    run(take())
    assert time.monotonic() - started < 1.5
    assert run(live_holder_keeps_it()) < 0.2  # released: taken at once
