"""The default store: one SQLite file in WAL mode, shared safely by several processes.

``ledger_append`` commits before it returns, so a ledger record survives a crash of Trooper the
moment the call returns (WAL with ``synchronous=NORMAL`` is durable against process crashes; set
``synchronous=FULL`` via ``durable=True`` to also survive power loss at the cost of an fsync).

Several processes on one file (``trooper serve --workers N``, or instances started by hand) share
the conversations, the ledger, the health and the probe's claim through SQLite, and the
per-conversation lock through :class:`FileLocks`: POSIX record locks on a file beside the database,
which the kernel drops the moment their process dies, so a crashed worker never blocks a
conversation.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from trooper.ledger import LedgerRecord
from trooper.store.base import Lease, ProcessLocks, StoreError

#: Conversations are spread over this many lockable bytes; two sharing one only wait for each other.
_STRIPES: Final = 1 << 20


class FileLocks:
    """Per-conversation locks across the processes, and the store objects, that use one SQLite file.

    One byte of ``<database>.locks`` per stripe of conversations, taken with ``lockf``. POSIX record
    locks belong to a process, not to a store object, and closing any descriptor of the file drops
    them all; so each process opens the file once (shared by every store object on it, through
    :meth:`of`) and records which store object holds which stripe, making store objects in one
    process exclude each other as processes do. Waiting polls (a few milliseconds at most), so it
    works on any event loop and never blocks one.
    """

    _open: Final[weakref.WeakValueDictionary[str, FileLocks]] = weakref.WeakValueDictionary()
    _opening: Final = threading.Lock()

    def __init__(self, path: Path) -> None:
        import fcntl

        self._fcntl = fcntl
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._owners: dict[int, object] = {}
        self._guard = threading.Lock()
        weakref.finalize(self, os.close, self._fd)

    @classmethod
    def of(cls, database: Path) -> FileLocks:
        path = str(database.resolve()) + ".locks"
        with cls._opening:
            locks = cls._open.get(path)
            if locks is None:
                locks = cls(Path(path))
                cls._open[path] = locks
            return locks

    def _try(self, stripe: int, owner: object) -> bool:
        with self._guard:
            if stripe in self._owners:
                return False
            try:
                self._fcntl.lockf(self._fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB, 1, stripe, os.SEEK_SET)
            except OSError:  # another process holds it (EAGAIN or EACCES)
                return False
            self._owners[stripe] = owner
            return True

    def _release(self, stripe: int) -> None:
        with self._guard:
            if self._owners.pop(stripe, None) is not None:
                self._fcntl.lockf(self._fd, self._fcntl.LOCK_UN, 1, stripe, os.SEEK_SET)

    async def lock(self, session: str, owner: object) -> Lease:
        stripe = int.from_bytes(hashlib.blake2b(session.encode(), digest_size=8).digest(), "big") % _STRIPES
        wait = 0.0005
        while not self._try(stripe, owner):
            await asyncio.sleep(wait)
            wait = min(wait * 2, 0.01)
        return _FileLease(self, stripe)


class _FileLease:
    def __init__(self, locks: FileLocks, stripe: int) -> None:
        self._locks: FileLocks | None = locks
        self._stripe = stripe

    async def release(self) -> None:
        locks, self._locks = self._locks, None
        if locks is not None:
            locks._release(self._stripe)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, data BLOB NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated);
CREATE TABLE IF NOT EXISTS ledger_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, session TEXT NOT NULL,
    origin TEXT NOT NULL, shareable INTEGER NOT NULL, fingerprints BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, at REAL NOT NULL,
    kind TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_session ON audit(session, seq);
CREATE TABLE IF NOT EXISTS health (key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS summaries (session TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class SQLiteStore:
    """SQLite behind a lock; one connection per store object.

    The calls are short and answer at once (a commit takes a fraction of a millisecond in WAL mode),
    so they run on the event loop: handing each to a thread would cost more than it saves.
    Conversation locks hold across every process and store object on the file (:class:`FileLocks`);
    turns of one conversation in this store object queue on an in-process lock first.
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._refuse_old_ledger()
        self._locks = ProcessLocks()
        self._files = FileLocks.of(self.path) if sys.platform != "win32" else None

    def _refuse_old_ledger(self) -> None:
        """A ledger in the earlier per-block format cannot be checked by this version: refuse the store
        rather than serve as if its local content had never been recorded."""
        found = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'ledger'").fetchone()
        if found and self._db.execute("SELECT 1 FROM ledger LIMIT 1").fetchone():
            self._db.close()
            raise StoreError(
                f"{self.path} holds a provenance ledger in the format of an earlier Trooper, which this version "
                "cannot check; keep using that version with this store, or start this one on a new store"
            )

    async def load_conversation(self, session: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM conversations WHERE id = ?", (session,)).fetchone()
        return orjson.loads(row[0]) if row else None

    async def list_conversations(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data, updated FROM conversations ORDER BY updated DESC LIMIT ?", (limit,)
            ).fetchall()
        return [{**orjson.loads(data), "updated": updated} for data, updated in rows]

    async def ledger_append(self, records: Sequence[LedgerRecord]) -> None:
        if not records:
            return
        rows = [(r.kind, r.session, r.origin, int(r.shareable), r.values) for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO ledger_log(kind, session, origin, shareable, fingerprints) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    async def ledger_since(self, cursor: int) -> tuple[list[LedgerRecord], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, session, origin, shareable, fingerprints FROM ledger_log WHERE seq > ? ORDER BY seq",
                (cursor,),
            ).fetchall()
        if not rows:
            return [], cursor
        records = [
            LedgerRecord(kind, bytes(values), session, origin, bool(shareable))
            for _, kind, session, origin, shareable, values in rows
        ]
        return records, int(rows[-1][0])

    async def write(
        self, session: str, at: float, conversation: dict[str, Any] | None, audit: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        blob = orjson.dumps(conversation) if conversation is not None else None
        rows = [(session, data.get("at", at), kind, orjson.dumps(data)) for kind, data in audit]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if blob is not None:
                    self._db.execute(
                        "INSERT INTO conversations(id, data, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET data = excluded.data, updated = excluded.updated",
                        (session, blob, at),
                    )
                self._db.executemany("INSERT INTO audit(session, at, kind, data) VALUES (?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    async def audit(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, kind, data FROM audit WHERE session = ? ORDER BY seq", (session,)
            ).fetchall()
        return [{"at": at, "kind": kind, **orjson.loads(data)} for at, kind, data in rows]

    async def prune(
        self, *, older_than: float | None, max_sessions: int | None, max_audit_per_session: int | None
    ) -> dict[str, int]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                doomed: set[str] = set()
                if older_than is not None:
                    doomed |= {
                        row[0]
                        for row in self._db.execute("SELECT id FROM conversations WHERE updated < ?", (older_than,))
                    }
                if max_sessions is not None:
                    doomed |= {
                        row[0]
                        for row in self._db.execute(
                            "SELECT id FROM conversations ORDER BY updated DESC LIMIT -1 OFFSET ?", (max_sessions,)
                        )
                    }
                self._db.executemany("DELETE FROM conversations WHERE id = ?", [(sid,) for sid in doomed])
                self._db.executemany("DELETE FROM summaries WHERE session = ?", [(sid,) for sid in doomed])
                removed = 0
                for sid in doomed:
                    removed += self._db.execute("DELETE FROM audit WHERE session = ?", (sid,)).rowcount
                if max_audit_per_session is not None:
                    removed += self._db.execute(
                        "DELETE FROM audit WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER "
                        "(PARTITION BY session ORDER BY seq DESC) AS n FROM audit) WHERE n > ?)",
                        (max_audit_per_session,),
                    ).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return {"sessions": len(doomed), "audit": removed}

    async def summaries_get(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT data FROM summaries WHERE session = ?", (session,)).fetchone()
        found = orjson.loads(row[0]) if row else []
        return found if isinstance(found, list) else []

    async def summaries_set(self, session: str, summaries: Sequence[dict[str, Any]]) -> None:
        blob = orjson.dumps(list(summaries))
        with self._lock:
            self._db.execute(
                "INSERT INTO summaries(session, data) VALUES (?, ?) "
                "ON CONFLICT(session) DO UPDATE SET data = excluded.data",
                (session, blob),
            )

    async def health_get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM health WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    async def health_set(self, key: str, data: dict[str, Any]) -> None:
        blob = orjson.dumps(data)
        with self._lock:
            self._db.execute(
                "INSERT INTO health(key, data) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET data = excluded.data",
                (key, blob),
            )

    async def claim(self, name: str, ttl: float) -> bool:
        """Wall-clock leases, so processes sharing the file agree on them."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT until FROM claims WHERE name = ?", (name,)).fetchone()
                taken = row is None or row[0] <= now
                if taken:
                    self._db.execute(
                        "INSERT INTO claims(name, until) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET until = excluded.until",
                        (name, now + ttl),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return taken

    async def unclaim(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM claims WHERE name = ?", (name,))

    async def lock(self, session: str, ttl: float) -> Lease:
        """The conversation's lock across processes. No lease to lapse: a holder that dies loses it
        with its process, at once."""
        local = await self._locks.lock(session, ttl)
        if self._files is None:
            return local
        try:
            shared = await self._files.lock(session, self)
        except BaseException:
            await local.release()
            raise
        return _Both(shared, local)

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class _Both:
    """The file lock, then this store object's queue, released in that order."""

    def __init__(self, shared: Lease, local: Lease) -> None:
        self._leases: tuple[Lease, Lease] | None = (shared, local)

    async def release(self) -> None:
        leases, self._leases = self._leases, None
        if leases is not None:
            for lease in leases:
                await lease.release()
