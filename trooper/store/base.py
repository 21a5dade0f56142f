"""The storage protocol: conversations, the provenance ledger, the audit trail, and what instances share.

Every method is a coroutine: a store is an edge, and a networked one (Redis) must not block the
event loop. The in-process and SQLite stores answer at once.

The ledger is the part that must never be lost: :meth:`SessionStore.ledger_append` returns only once
the records are durable, and records are append-only with a monotonically increasing cursor, so
every Trooper instance sharing a store can pick up the others' records cheaply with
:meth:`SessionStore.ledger_since` before it sends anything to the cloud. A record is a batch of
64-bit fingerprints of one kind (:class:`trooper.ledger.LedgerRecord`); the store keeps them as
they come, in order, and never merges or drops one, so whatever a reader makes of them does not
depend on the order of writers.

What instances behind one load balancer must agree on lives here too: the cloud's health (so a 429
seen by one instance sends the others local without a doomed call), the right to send the one
recovery probe, and the per-conversation lock (so two instances never run turns of one conversation
at once; a holder that dies loses its lock when the lease expires).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from trooper.ledger import LedgerRecord, Origin

#: The name earlier versions exported; the ledger's unit is now a batch of fingerprints.
LedgerEntry = LedgerRecord


class StoreError(Exception):
    """The store cannot be used as it is; the message says why in one line."""


class StoreUnavailable(StoreError):
    """The store did not answer (down, unreachable, timing out). Trooper refuses the turn rather than
    act on what it could not check or record; the message names the store, never its credentials."""


class Lease(Protocol):
    """A held per-conversation lock."""

    async def release(self) -> None: ...


class SessionStore(Protocol):
    """Where conversations, ledger records, audit records and shared health live."""

    async def load_conversation(self, session: str) -> dict[str, Any] | None: ...

    async def list_conversations(self, limit: int = 100) -> list[dict[str, Any]]: ...

    async def write(
        self, session: str, at: float, conversation: dict[str, Any] | None, audit: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        """Save a conversation (if given) and append audit records in one transaction."""
        ...

    async def audit(self, session: str) -> list[dict[str, Any]]: ...

    async def ledger_append(self, records: Sequence[LedgerRecord]) -> None:
        """Durably append records, in order; returns only once they survive a crash of Trooper."""
        ...

    async def ledger_since(self, cursor: int) -> tuple[list[LedgerRecord], int]:
        """Records appended after ``cursor`` and the new cursor (0 reads everything)."""
        ...

    async def health_get(self, key: str) -> dict[str, Any] | None:
        """The cloud health shared under ``key`` (an upstream and credential), if any."""
        ...

    async def health_set(self, key: str, data: dict[str, Any]) -> None: ...

    async def summaries_get(self, session: str) -> list[dict[str, Any]]:
        """The conversation's model-written SITREPs (local content: never shown, never sent to the cloud)."""
        ...

    async def summaries_set(self, session: str, summaries: Sequence[dict[str, Any]]) -> None:
        """Replace them; they go with the conversation when retention prunes it."""
        ...

    async def claim(self, name: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds unless someone holds it: one recovery probe at a time."""
        ...

    async def unclaim(self, name: str) -> None:
        """Give ``name`` back before its time is up (the probe is done)."""
        ...

    async def lock(self, session: str, ttl: float) -> Lease:
        """Wait for and take the conversation's lock; it lapses after ``ttl`` if never released."""
        ...

    async def prune(
        self, *, older_than: float | None, max_sessions: int | None, max_audit_per_session: int | None
    ) -> dict[str, int]:
        """Drop old conversations and audit records; never ledger records. Returns counts removed."""
        ...

    async def close(self) -> None: ...


class ProcessLocks:
    """Per-conversation locks for stores that one process serves alone (memory, SQLite by default).

    A lock exists while someone holds or waits for it. There is no lease to lapse: the only holder
    that can die is this process, and its locks die with it.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def lock(self, session: str, ttl: float) -> Lease:
        lock = self._locks.get(session)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session] = lock
        await lock.acquire()
        return _ProcessLease(lock)


class _ProcessLease:
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock: asyncio.Lock | None = lock

    async def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


__all__ = ["Lease", "LedgerEntry", "Origin", "ProcessLocks", "SessionStore", "StoreError"]
