"""The conversation lock on Redis wakes its waiters: what the lock promised before still holds.

A turn that finds the lock held waits to be woken by the holder's release instead of sleeping and
asking again, so the next turn of a conversation sent to another instance the moment the previous
reply arrived does not lose a back-off. Waking must not cost the guarantees: a dead holder's lock
still lapses (a waiter is bounded by the lease), a release left for no one does not wake the next
waiter for nothing, and a Redis that hangs while a turn waits still fails it in time.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from tests.test_redis_server import RedisServer, redis_server  # noqa: F401  (a fixture)
from trooper.store import RedisStore, StoreUnavailable

pytestmark = pytest.mark.timeout(60)


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_waiter_on_another_instance_is_woken_as_soon_as_the_release_lands(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def main() -> tuple[float, float]:
        holder, waiter = RedisStore(redis_server.url), RedisStore(redis_server.url)
        lease = await holder.lock("conv", 60)
        waiting = asyncio.ensure_future(waiter.lock("conv", 60))
        await asyncio.sleep(0.6)  # long enough for a poller to be asking only every few tens of ms
        assert not waiting.done()
        trips = waiter.counts["round_trips"]
        released = time.monotonic()
        await lease.release()
        taken = await waiting
        delay = time.monotonic() - released
        await taken.release()
        await holder.close()
        await waiter.close()
        return delay, waiter.counts["round_trips"] - trips

    delay, trips = run(main())
    assert delay < 0.1  # woken by the release, not by a timer
    assert trips == 2  # while held: the failed attempt and one wait; then the attempt that took it


def test_a_release_left_for_no_one_does_not_wake_the_next_waiter(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> tuple[int, int]:
        a, b, c = (RedisStore(redis_server.url) for _ in range(3))
        await (await a.lock("conv", 60)).release()
        await a.close()  # the release has landed: one wake entry, for no one
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        expiry = int(await raw.pttl("trooper:wake:conv"))
        lease = await b.lock("conv", 60)  # taking the lock empties the list
        before = c.counts["round_trips"]
        waiting = asyncio.ensure_future(c.lock("conv", 60))
        await asyncio.sleep(0.3)
        trips = int(c.counts["round_trips"] - before)
        await lease.release()
        await (await waiting).release()
        await raw.aclose()
        for store in (b, c):
            await store.close()
        return expiry, trips

    expiry, trips = run(main())
    assert 0 < expiry <= 30_000  # what is left in the list does not stay there
    assert trips == 2  # one failed attempt, then blocked: not woken by the earlier release


def test_a_dead_holders_lock_lapses_under_a_blocked_waiter(redis_server: RedisServer) -> None:  # noqa: F811
    async def hold_and_die() -> None:
        store = RedisStore(redis_server.url, lock_ttl=0.4)
        await store.lock("conv", 60)  # never released: the loop ends, renewals stop, as in a crash

    async def wait_for_it() -> tuple[float, int]:
        store = RedisStore(redis_server.url, timeout=5.0)
        started = time.monotonic()
        await (await store.lock("conv", 60)).release()
        await store.close()
        return time.monotonic() - started, int(store.counts["round_trips"])

    run(hold_and_die())
    waited, trips = run(wait_for_it())
    assert waited < 1.5  # the lease (0.4 s) bounds the wait even with nobody to wake it
    assert trips <= 5  # blocked until the lapse, not asking again and again


def test_redis_hung_while_a_turn_waits_for_the_lock_fails_it_in_time(redis_server: RedisServer) -> None:  # noqa: F811
    timeout = 0.5

    async def main() -> tuple[float, str]:
        holder, waiter = RedisStore(redis_server.url), RedisStore(redis_server.url, timeout=timeout)
        lease = await holder.lock("conv", 60)
        waiting = asyncio.ensure_future(waiter.lock("conv", 60))
        await asyncio.sleep(0.2)  # blocked on the wake list by now
        redis_server.pause()
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable) as failed:
                await waiting
            took = time.monotonic() - started
        finally:
            redis_server.resume()
        await lease.release()
        await holder.close()
        await waiter.close()
        return took, str(failed.value)

    took, message = run(main())
    assert took < 2 * timeout + 0.5  # the wait (at most ``timeout``) and ``timeout`` for the answer
    assert "did not answer" in message and "127.0.0.1" in message


def test_turns_of_one_conversation_on_three_instances_hand_the_lock_on_promptly(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    async def turns(store: RedisStore, tag: int) -> None:
        for _ in range(20):
            lease = await store.lock("one", 10)
            inside.append(tag)
            if len(inside) > 1:
                overlaps.append(tag)
            await asyncio.sleep(0.005)
            inside.remove(tag)
            await lease.release()

    async def main() -> float:
        stores = [RedisStore(redis_server.url) for _ in range(3)]
        started = time.monotonic()
        # Three instances, and two turns at once on the first (its in-process queue, then Redis).
        await asyncio.gather(*(turns(store, n) for n, store in enumerate([*stores, stores[0]])))
        took = time.monotonic() - started
        for store in stores:
            await store.close()
        return took

    took = run(main())
    assert overlaps == []
    assert took < 4.0  # 80 turns of 5 ms: handed on within a few round trips each, not a back-off


def test_taking_the_lock_reads_the_ledger_the_health_and_the_conversation_with_it(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A turn's lock, ledger read, health read and conversation load are one round trip; what another
    instance recorded just before the lock is in it, and a read from before what was read ahead, or
    one more read, goes to Redis."""
    from trooper.ledger import LedgerRecord

    async def scenario() -> None:
        a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
        await b.write("conv", 1.0, {"id": "conv", "turns": 1}, [])
        await b.health_set("cloud", {"status": "up"})
        _, cursor = await a.ledger_since(0)
        await a.health_get("cloud")  # now a known upstream: its health comes with the next reads
        await b.ledger_append([LedgerRecord("block", b"\x01" * 8, "other", "forced", False)])
        before = a.counts["round_trips"]
        lease = await a.lock("conv", 30)
        records, after = await a.ledger_since(cursor)
        assert [r.values for r in records] == [b"\x01" * 8] and after > cursor
        assert await a.health_get("cloud") == {"status": "up"}
        assert await a.load_conversation("conv") == {"id": "conv", "turns": 1}
        assert a.counts["round_trips"] - before == 1
        assert await a.ledger_since(after) == ([], after)  # read ahead once only: this one asks Redis
        assert a.counts["round_trips"] - before == 2
        await lease.release()
        lease = await a.lock("conv", 30)
        assert len((await a.ledger_since(0))[0]) == 1  # from before the read-ahead's start: Redis again
        assert a.counts["round_trips"] - before == 5  # the release, the lock, this read
        await lease.release()
        await a.close()
        await b.close()

    run(scenario())
