"""The Redis store: several Trooper instances (hosts, containers, workers) share one conversation state.

Everything instances behind one load balancer must agree on lives here: conversations, the
provenance ledger, the audit trail, the cloud's health, the recovery probe's claim and the
per-conversation lock. Key names, all under one namespace (``trooper`` unless told otherwise):

====================================  ==========  ===================================================
key                                   type        holds
====================================  ==========  ===================================================
``trooper:conv:<session>``            string      the conversation (JSON)
``trooper:conversations``             sorted set  session → time of its last update (retention)
``trooper:audit:<session>``           list        the conversation's audit records (JSON), oldest first
``trooper:ledger``                    stream      the provenance ledger, append-only, one entry a record
``trooper:health``                    hash        upstream + credential hash → the cloud's health (JSON)
``trooper:claim:<name>``              string      the recovery probe's claim, with an expiry
``trooper:lock:<session>``            string      the conversation's lock: a random token, with an expiry
``trooper:summaries:<session>``       string      the conversation's model-written SITREPs (JSON; local content)
``trooper:wake:<session>``            list        one entry pushed when the lock is released, with an expiry
====================================  ==========  ===================================================

**Fail closed, never hang.** Every call is bounded by ``timeout`` (connecting included), and any
failure to get an answer — refused, reset, timed out, still loading its data after a restart, a
write refused by the server — raises :class:`~trooper.store.base.StoreUnavailable`, which the engine
answers with a 503: a cloud turn it could not check is not sent, a local turn it could not record
does not run. Messages name the server, never its password.

**The ledger is a stream.** Entry ids grow with the server's clock and never repeat, so a reader's
cursor (the last id it read) stays valid even if Redis lost the tail of the stream in a crash or a
failover: what is appended afterwards still sorts after the cursor, and no instance skips it. An
append returns once Redis acknowledged it; with ``appendonly yes`` it has then been written to the
append-only file and survives a restart of Redis (``appendfsync always`` also survives a power loss,
and ``wait_aof`` makes each append wait until the file is synced, on Redis 7.2 and later).

**One round trip where the engine asks four times.** A turn begins by taking the conversation's
lock, then reads the ledger, the cloud's health and the conversation. All four go to Redis as one
script: taking the lock also returns the conversation, the ledger's records after the last cursor
this instance read and the health of the upstreams it asked about recently. The later calls are
answered from what came back only in the same task (the same turn), only once and only just after:
it is then what Redis held while the turn held its lock — later than the lock, so no less than a
read at that moment could promise, since whatever a client could have seen of a local turn was in
the ledger before it left. A ledger read that asks from an earlier cursor than the one read ahead,
or any other call, reads Redis. A ledger read without a lock (the command line, a probe) reads the
health with it in one script too.

**The lock** is a token set with an expiry only if absent (the classic single-instance Redis lock).
A holder renews it while it lives, so a long local reply keeps it, and a holder that died loses it
when ``lock_ttl`` runs out; the token makes sure one holder never releases another's lock.
Within one process, turns of a conversation also queue on an in-process lock first, so only one of
them waits on Redis.

**A waiter is woken, not polling.** A release pushes one entry to the conversation's wake list in
the same script that deletes the lock, and a waiter blocks on that list (``BLPOP``) rather than
sleeping and asking again: the next turn of a conversation, sent to another instance the moment the
previous reply arrived, takes the lock as soon as the release lands instead of a back-off later. An
entry stays in the list until someone takes it (or it expires), so a release that lands between a
waiter's failed attempt and its ``BLPOP`` is not missed; taking the lock empties the list, so an
entry left by an earlier release does not wake the next waiter for nothing. Each wait is bounded by
the time the holder's lease has left and by ``timeout``: a holder that died wakes no one, and its
waiter tries again when the lease lapses. The wait runs on a connection of its own (a blocked
connection answers nothing else) and, like every call, fails as ``StoreUnavailable`` when Redis does
not answer within ``timeout`` of when the answer was due.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import orjson
import structlog

from trooper.ledger import LedgerRecord
from trooper.store.base import Lease, ProcessLocks, StoreError, StoreUnavailable

log = structlog.get_logger("trooper")

T = TypeVar("T")

#: How many ledger records one read asks for: a large backlog (a new instance) comes in pieces, each
#: within the call's timeout, never one reply of unbounded size.
_PAGE: Final = 5000
#: How many upstream keys a ledger read prefetches the health of.
_HEALTH_KEYS: Final = 8
#: An answer read ahead is used only this soon after it was read (and only once).
_FRESH: Final = 0.25

# The ledger after a cursor and, in the same reply, the health of the upstreams given (if any):
# ARGV = start, count, health fields... Returns {entries} or {entries, health values}.
_LEDGER: Final = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
if #ARGV > 2 then return {entries, redis.call('HMGET', KEYS[2], unpack(ARGV, 3))} end
return {entries}
"""
# Take the lock unless another token holds it; the holder's own token (a retried call) takes it
# again. KEYS = lock, conversation, wake list, ledger, health; ARGV = token, lease, ledger start,
# count, health fields... Returns {1, conversation or '', ledger entries, health values} or {0,
# milliseconds until it lapses}. A taker empties the wake list: what an earlier release left there
# is for no one now.
_LOCK: Final = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[3])
  local data = redis.call('GET', KEYS[2])
  if data == false then data = '' end
  local entries = redis.call('XRANGE', KEYS[4], ARGV[3], '+', 'COUNT', ARGV[4])
  local health = {}
  if #ARGV > 4 then health = redis.call('HMGET', KEYS[5], unpack(ARGV, 5)) end
  return {1, data, entries, health}
end
return {0, redis.call('PTTL', KEYS[1])}
"""
# Renew or release only one's own lock.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Release only one's own lock, and wake one waiter: KEYS = lock, wake list; ARGV = token, the
# entry's lifetime in milliseconds (it wakes only a waiter that comes soon).
_UNLOCK: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
# A conversation (if given) and its audit records, at once: ARGV = at, session, conversation or '', rows...
_WRITE: Final = """
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
end
if #ARGV > 3 then redis.call('RPUSH', KEYS[3], unpack(ARGV, 4)) end
return 1
"""
# Drop a conversation only if it was not updated since it was chosen for pruning.
_PRUNE: Final = """
local updated = redis.call('ZSCORE', KEYS[1], ARGV[1])
if updated == false or tonumber(updated) > tonumber(ARGV[2]) then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
local audit = redis.call('LLEN', KEYS[3])
redis.call('DEL', KEYS[3])
return audit
"""


_SCRIPTS: Final = {
    "ledger": _LEDGER,
    "lock": _LOCK,
    "renew": _RENEW,
    "unlock": _UNLOCK,
    "write": _WRITE,
    "prune": _PRUNE,
}
_SHAS: Final = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SCRIPTS.items()}


def location(url: str) -> str:
    """``redis://host:port/db`` without user or password: what messages and logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or ''}"


def is_redis_url(path: str) -> bool:
    return path.startswith(("redis://", "rediss://"))


def _encode(record: LedgerRecord) -> bytes:
    # The header is JSON (which never holds a raw newline), then the fingerprints as they are.
    return orjson.dumps([record.kind, record.session, record.origin, record.shareable]) + b"\n" + record.values


def _decode(data: bytes) -> LedgerRecord:
    head, _, values = data.partition(b"\n")
    kind, session, origin, shareable = orjson.loads(head)
    return LedgerRecord(kind, values, session, origin, bool(shareable))


def _record_of(fields: Sequence[bytes]) -> LedgerRecord:
    """The record in a stream entry's flat field list (``[b"r", data]``)."""
    for at in range(0, len(fields) - 1, 2):
        if fields[at] == b"r":
            return _decode(fields[at + 1])
    raise StoreError("a ledger entry without its record")


def _cursor(entry_id: bytes) -> int:
    """A stream id (``<ms>-<seq>``) as the integer cursor the store protocol speaks."""
    ms, _, seq = entry_id.partition(b"-")
    return (int(ms) << 32) | int(seq or 0)


def _entry_id(cursor: int) -> str:
    return f"{cursor >> 32}-{cursor & 0xFFFFFFFF}"


def _start(after: int) -> str:
    """The ``XRANGE`` start for the entries after ``cursor`` (all of them from 0)."""
    return "-" if after == 0 else f"({_entry_id(after)}"


class RedisStore:
    """A :class:`~trooper.store.base.SessionStore` on a Redis server, shared by any number of instances.

    ``url`` is ``redis://[user[:password]@]host[:port][/db]`` or ``rediss://`` for TLS; a password in
    the URL wins over ``password``. ``timeout`` bounds every call. ``lock_ttl`` is how long a
    conversation's lock outlives a holder that died. ``wait_aof`` makes each ledger append wait until
    Redis has synced it to its append-only file (``WAITAOF``, Redis 7.2 and later).
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout: float = 2.0,
        lock_ttl: float = 30.0,
        wait_aof: bool = False,
        namespace: str = "trooper",
    ) -> None:
        if not is_redis_url(url):
            raise StoreError(f"not a Redis URL: {location(url)!r} (expected redis://host:port/db or rediss://…)")
        self.url = url
        self.location = location(url)
        self.timeout = timeout
        self.lock_ttl = lock_ttl
        self.wait_aof = wait_aof
        self.namespace = namespace
        url_password = urlsplit(url).password
        self._password = unquote(url_password) if url_password else password
        self._redis: Any = None
        #: The client for waits that block a connection (``BLPOP``), so they hold up no other call.
        self._waiting: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._locks = ProcessLocks()
        #: The furthest ledger cursor a read of this instance reached: where a lock's read ahead starts.
        self._ledger_cursor = 0
        #: What this store did, logged when it closes: round trips, and how often and how long a
        #: turn waited for a lock another holder had.
        self.counts: dict[str, float] = {"round_trips": 0, "lock_waits": 0, "lock_wait_seconds": 0.0}
        #: Upstream keys whose health the engine asked for, most recent last.
        self._health_keys: OrderedDict[str, None] = OrderedDict()
        #: What a task read ahead: (``health``, key) or (``conversation``, session) → (time, data).
        self._ahead: weakref.WeakKeyDictionary[asyncio.Task[Any], dict[tuple[str, str], tuple[float, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r})"

    # ------------------------------------------------------------------------------ the connection

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _read_ahead(self, kind: str, name: str, data: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._ahead.setdefault(task, {})[kind, name] = (time.monotonic(), data)

    def _take_ahead(self, kind: str, name: str) -> tuple[bool, Any]:
        """What this task read ahead for ``(kind, name)``, once and only just after (else ``(False, None)``)."""
        task = asyncio.current_task()
        found = self._ahead.get(task) if task is not None else None
        if not found:
            return False, None
        ahead = found.pop((kind, name), None)
        if ahead is None or time.monotonic() - ahead[0] > _FRESH:
            return False, None
        return True, ahead[1]

    def _forget(self, kind: str, name: str | None = None) -> None:
        """A write of this process makes what any task read ahead of it stale."""
        for found in list(self._ahead.values()):
            for entry in [entry for entry in found if entry[0] == kind and (name is None or entry[1] == name)]:
                del found[entry]

    def _client(self, *, waiting: bool = False) -> Any:
        """The client of the running event loop (a connection belongs to the loop that opened it;
        the command line runs each call on a loop of its own); ``waiting`` gives the one for blocking
        waits, whose reads must outlast ``timeout`` (the call around them still bounds them)."""
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            self._redis = self._open(socket_timeout=self.timeout)
            self._waiting = self._open(socket_timeout=None)
            self._loop = loop
            # Closed when the loop's tasks are cancelled at its end (asyncio.run, a test's server), so
            # no connection outlives the loop it belongs to.
            self._guard = loop.create_task(_close_at_end(self._redis, self._waiting))
        return self._waiting if waiting else self._redis

    def _open(self, *, socket_timeout: float | None) -> Any:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        return redis.asyncio.Redis.from_url(
            self.url,
            password=self._password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=self.timeout,
            # One quick retry on a fresh connection: after Redis restarted, the pooled
            # connections are dead and the first command on each of them fails.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
            decode_responses=False,
        )

    @staticmethod
    async def _eval(r: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of this module's scripts by its digest; a server that does not know it yet (new,
        restarted, flushed) is sent the script itself, which it then keeps.

        Called as a plain command rather than through the client's script objects: those cost
        noticeably more CPU per call, and every turn runs a script."""
        from redis.exceptions import NoScriptError

        try:
            return await r.execute_command("EVALSHA", _SHAS[name], len(keys), *keys, *args)
        except NoScriptError:
            return await r.execute_command("EVAL", _SCRIPTS[name], len(keys), *keys, *args)

    async def _call(
        self, work: Callable[[Any], Awaitable[T]], what: str, *, seconds: float | None = None, waiting: bool = False
    ) -> T:
        """Run one exchange with Redis within the timeout; any failure is :class:`StoreUnavailable`."""
        from redis.exceptions import RedisError

        seconds = seconds or self.timeout
        self.counts["round_trips"] += 1
        try:
            async with asyncio.timeout(seconds):
                return await work(self._client(waiting=waiting))
        except TimeoutError:
            raise StoreUnavailable(f"Redis at {self.location} did not answer within {seconds:g} s ({what})") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis at {self.location} failed ({what}: {_reason(exc)})") from None

    # ------------------------------------------------------------------------------ conversations

    async def load_conversation(self, session: str) -> dict[str, Any] | None:
        known, data = self._take_ahead("conversation", session)
        if not known:
            data = await self._call(lambda r: r.get(self._key("conv", session)), "load a conversation")
        return orjson.loads(data) if data else None

    async def list_conversations(self, limit: int = 100) -> list[dict[str, Any]]:
        async def work(r: Any) -> list[dict[str, Any]]:
            rows = await r.zrevrange(self._key("conversations"), 0, max(limit, 1) - 1, withscores=True)
            if not rows:
                return []
            blobs = await r.mget([self._key("conv", session.decode()) for session, _ in rows])
            return [
                {**orjson.loads(blob), "updated": updated}
                for (_, updated), blob in zip(rows, blobs, strict=True)
                if blob
            ]

        return await self._call(work, "list conversations")

    async def write(
        self, session: str, at: float, conversation: dict[str, Any] | None, audit: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        """The conversation and its audit records at once (one script: Redis runs it atomically)."""
        if conversation is None and not audit:
            return
        rows = [orjson.dumps({"at": data.get("at", at), "kind": kind, **data}) for kind, data in audit]

        keys = [self._key("conv", session), self._key("conversations"), self._key("audit", session)]
        blob = orjson.dumps(conversation) if conversation is not None else b""

        async def work(r: Any) -> None:
            await self._eval(r, "write", keys, [repr(float(at)), session, blob, *rows])

        if conversation is not None:
            self._forget("conversation", session)
        await self._call(work, "write a conversation")

    async def audit(self, session: str) -> list[dict[str, Any]]:
        rows = await self._call(lambda r: r.lrange(self._key("audit", session), 0, -1), "read the audit trail")
        return [orjson.loads(row) for row in rows]

    async def prune(
        self, *, older_than: float | None, max_sessions: int | None, max_audit_per_session: int | None
    ) -> dict[str, int]:
        """The SQLite store's retention: idle or surplus conversations go with their audit trails, and
        every trail keeps its newest ``max_audit_per_session`` records. The ledger is never pruned."""
        index = self._key("conversations")

        async def work(r: Any) -> dict[str, int]:
            doomed: dict[str, float] = {}
            if older_than is not None:
                for session, updated in await r.zrange(
                    index, "-inf", f"({older_than!r}", byscore=True, withscores=True
                ):
                    doomed[session.decode()] = updated
            if max_sessions is not None:
                for session, updated in await r.zrange(index, 0, -max_sessions - 1, withscores=True):
                    doomed[session.decode()] = updated
            sessions = audit_removed = 0
            for session, updated in doomed.items():
                keys = [index, self._key("conv", session), self._key("audit", session)]
                removed = await self._eval(r, "prune", keys, [session, repr(updated)])
                if removed >= 0:
                    sessions += 1
                    audit_removed += removed
                    await r.delete(self._key("summaries", session))
            if max_audit_per_session is not None:
                pattern = _glob_escape(self._key("audit", "")) + "*"
                async for key in r.scan_iter(match=pattern, count=1000):
                    pipe = r.pipeline(transaction=True)
                    pipe.llen(key)
                    pipe.ltrim(key, -max_audit_per_session, -1)
                    length, _ = await pipe.execute()
                    audit_removed += max(0, length - max_audit_per_session)
            return {"sessions": sessions, "audit": audit_removed}

        # Retention touches every conversation: it gets more time than a turn's calls.
        self._forget("conversation")
        return await self._call(work, "prune", seconds=max(self.timeout, 60.0))

    # ------------------------------------------------------------------------------ the ledger

    async def ledger_append(self, records: Sequence[LedgerRecord]) -> None:
        """Append in one transaction; returns once Redis acknowledged it (and, with ``wait_aof``, synced
        it to its append-only file)."""
        if not records:
            return
        stream = self._key("ledger")
        wait_ms = max(1, int(self.timeout * 1000) - 100)

        async def work(r: Any) -> None:
            pipe = r.pipeline(transaction=True)
            for record in records:
                pipe.xadd(stream, {b"r": _encode(record)})
            await pipe.execute()
            if self.wait_aof:
                local, _ = await r.execute_command("WAITAOF", 1, 0, wait_ms)
                if int(local) < 1:
                    raise StoreUnavailable(
                        f"Redis at {self.location} did not sync the ledger to its append-only file in time"
                    )

        await self._call(work, "append to the ledger")

    async def ledger_since(self, cursor: int) -> tuple[list[LedgerRecord], int]:
        """Records after ``cursor`` — read with the lock, or with the cloud's health (see the module's notes)."""
        keys = list(self._health_keys)
        stream_keys = [self._key("ledger"), self._key("health")]

        def page(after: int, fields: Sequence[str]) -> Callable[[Any], Awaitable[Any]]:
            return lambda r: self._eval(r, "ledger", stream_keys, [_start(after), _PAGE, *fields])

        known, ahead = self._take_ahead("ledger", "")
        if known and ahead[0] <= cursor:
            entries = ahead[1]
            full = len(entries) == _PAGE
            entries = [entry for entry in entries if _cursor(entry[0]) > cursor]
        else:
            reply = await self._call(page(cursor, keys), "read the ledger")
            entries, health = reply[0], (reply[1] if keys else [])
            full = len(entries) == _PAGE
            for key, data in zip(keys, health, strict=True):
                self._read_ahead("health", key, data)
        records: list[LedgerRecord] = []
        while entries:
            records.extend(_record_of(fields) for _, fields in entries)
            cursor = _cursor(entries[-1][0])
            if not full:
                break
            entries = (await self._call(page(cursor, ()), "read the ledger"))[0]
            full = len(entries) == _PAGE
        self._ledger_cursor = max(self._ledger_cursor, cursor)
        return records, cursor

    # ------------------------------------------------------------------------------ shared health

    async def health_get(self, key: str) -> dict[str, Any] | None:
        self._health_keys[key] = None
        self._health_keys.move_to_end(key)
        while len(self._health_keys) > _HEALTH_KEYS:
            self._health_keys.popitem(last=False)
        known, data = self._take_ahead("health", key)
        if not known:
            data = await self._call(lambda r: r.hget(self._key("health"), key), "read the cloud's health")
        return orjson.loads(data) if data else None

    async def summaries_get(self, session: str) -> list[dict[str, Any]]:
        data = await self._call(lambda r: r.get(self._key("summaries", session)), "read the SITREPs")
        found = orjson.loads(data) if data else []
        return found if isinstance(found, list) else []

    async def summaries_set(self, session: str, summaries: Sequence[dict[str, Any]]) -> None:
        blob = orjson.dumps(list(summaries))
        await self._call(lambda r: r.set(self._key("summaries", session), blob), "store the SITREPs")

    async def health_set(self, key: str, data: dict[str, Any]) -> None:
        self._forget("health", key)
        blob = orjson.dumps(data)
        await self._call(lambda r: r.hset(self._key("health"), key, blob), "share the cloud's health")

    async def claim(self, name: str, ttl: float) -> bool:
        milliseconds = max(1, int(ttl * 1000))
        taken = await self._call(
            lambda r: r.set(self._key("claim", name), b"1", nx=True, px=milliseconds), "claim the probe"
        )
        return bool(taken)

    async def unclaim(self, name: str) -> None:
        await self._call(lambda r: r.delete(self._key("claim", name)), "give the probe back")

    # ------------------------------------------------------------------------------ the lock

    async def lock(self, session: str, ttl: float) -> Lease:
        """Wait for and take the conversation's lock across every instance on this Redis.

        ``ttl`` bounds how long a holder may keep it (renewing); a holder that stops renewing —
        because it died — loses it ``lock_ttl`` seconds after its last renewal. While another holder
        has it, the turn waits to be woken by its release (see the module's notes).
        """
        local = await self._locks.lock(session, ttl)
        token = secrets.token_hex(16)
        lease_ms = max(10, int(min(self.lock_ttl, ttl) * 1000))
        keys = [
            self._key("lock", session),
            self._key("conv", session),
            self._key("wake", session),
            self._key("ledger"),
            self._key("health"),
        ]
        waited: float | None = None
        try:
            while True:
                after, fields = self._ledger_cursor, list(self._health_keys)
                args = [token, lease_ms, _start(after), _PAGE, *fields]
                reply = await self._call(functools.partial(self._eval, name="lock", keys=keys, args=args), "lock")
                if reply[0] == 1:
                    self._read_ahead("conversation", session, reply[1] or None)
                    self._read_ahead("ledger", "", (after, reply[2]))
                    for key, data in zip(fields, reply[3], strict=True):
                        self._read_ahead("health", key, data)
                    break
                if waited is None:
                    waited = time.monotonic()
                await self._wait_for_release(keys[2], int(reply[1]))
        except BaseException:
            await local.release()
            raise
        finally:
            if waited is not None:
                self.counts["lock_waits"] += 1
                self.counts["lock_wait_seconds"] += time.monotonic() - waited
        return _RedisLease(self, keys[0], keys[2], token, local, lease_ms=lease_ms, limit=ttl)

    async def _wait_for_release(self, wake: str, lapses_ms: int) -> None:
        """Block until a release wakes this waiter, or until the holder's lease lapses, or ``timeout``
        at most (then the caller tries again). Redis answers a ``BLPOP`` only when its wait is over,
        so the call is given ``timeout`` more than the wait to say anything."""
        # A lock without an expiry (a key set by something else) is asked about again every
        # ``timeout``. Never a wait of 0, which Redis reads as "wait forever".
        wait = max(min(lapses_ms / 1000, self.timeout) if lapses_ms > 0 else self.timeout, 0.001)
        await self._call(
            lambda r: r.blpop([wake], timeout=wait), "wait for the lock", seconds=wait + self.timeout, waiting=True
        )

    async def _renew(self, key: str, token: str, lease_ms: int) -> bool:
        renewed = await self._call(lambda r: self._eval(r, "renew", [key], [token, lease_ms]), "renew lock")
        return bool(renewed)

    async def _unlock(self, key: str, wake: str, token: str, lease_ms: int) -> None:
        await self._call(lambda r: self._eval(r, "unlock", [key, wake], [token, lease_ms]), "unlock")

    def _later(self, work: Awaitable[None]) -> None:
        """Work the caller need not wait for; :meth:`close` does."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # ------------------------------------------------------------------------------ the server

    async def info(self) -> dict[str, Any]:
        """What ``trooper doctor`` checks: the server's version, persistence and eviction policy."""

        async def work(r: Any) -> dict[str, Any]:
            server, persistence = await r.info("server"), await r.info("persistence")
            try:
                config = await r.config_get("appendfsync")
                config.update(await r.config_get("maxmemory-policy"))
            except Exception:  # CONFIG may be renamed or disabled by the operator
                config = {}
            return {
                "version": str(server.get("redis_version", "?")),
                "aof_enabled": bool(persistence.get("aof_enabled")),
                "aof_loading": bool(persistence.get("loading")),
                "appendfsync": _text(config.get("appendfsync") or config.get(b"appendfsync")),
                "maxmemory_policy": _text(config.get("maxmemory-policy") or config.get(b"maxmemory-policy")),
                "ledger_records": int(await r.xlen(self._key("ledger"))),
            }

        return await self._call(work, "read the server's settings")

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        clients, self._redis, self._waiting = (self._redis, self._waiting), None, None
        loop, self._loop = self._loop, None
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.cancel()
        if self.counts["round_trips"]:
            log.info(
                "redis_store_closed",
                round_trips=int(self.counts["round_trips"]),
                lock_waits=int(self.counts["lock_waits"]),
                lock_wait_ms=round(self.counts["lock_wait_seconds"] * 1000, 1),
            )
        if loop is asyncio.get_running_loop():
            for client in clients:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()


class _RedisLease:
    """A held lock: renewed until released or until its holder's time is up, released once."""

    def __init__(
        self, store: RedisStore, key: str, wake: str, token: str, local: Lease, *, lease_ms: int, limit: float
    ) -> None:
        self._store = store
        self._key = key
        self._wake = wake
        self._token = token
        self._lease_ms = lease_ms
        self._local: Lease | None = local
        self._renewer = asyncio.ensure_future(self._keep(lease_ms, time.monotonic() + limit))

    async def _keep(self, lease_ms: int, until: float) -> None:
        """Renew a third of the way into each lease; a renewal that fails is tried again until the
        lease is gone (then another instance may take the lock, as it would from a dead holder)."""
        interval = lease_ms / 3000
        while time.monotonic() + interval < until:
            await asyncio.sleep(interval)
            try:
                if not await self._store._renew(self._key, self._token, lease_ms):
                    log.warning("lock_lost", key_kind="conversation")
                    return
            except StoreUnavailable:
                continue

    async def release(self) -> None:
        """Give the lock back without keeping the caller waiting for Redis (a cloud turn releases it just
        before its cloud call). This process's next turn of the conversation still waits for the
        release to land; a waiter on another instance is woken when it lands. Never raises: a lock
        that cannot be released lapses on its own."""
        local, self._local = self._local, None
        if local is None:
            return
        self._renewer.cancel()
        self._store._later(self._unlock(local))

    async def _unlock(self, local: Lease) -> None:
        try:
            await self._store._unlock(self._key, self._wake, self._token, self._lease_ms)
        except StoreUnavailable as exc:
            log.warning("unlock_failed", error=str(exc))
        finally:
            await local.release()


async def _close_at_end(*clients: Any) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


def _reason(exc: BaseException) -> str:
    """An error in a few words, without anything a server might echo of a credential."""
    name = type(exc).__name__
    text = str(exc).split("\n", 1)[0][:120]
    if "pass" in text.lower() or "auth" in name.lower():
        return f"{name}: authentication failed"
    return f"{name}: {text}" if text else name


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


__all__ = ["RedisStore", "is_redis_url", "location"]
