"""An in-process store for tests and embedders that need no persistence.

``trooper serve`` refuses it unless told the ledger may be lost on restart: everything here lives
and dies with the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from trooper.ledger import LedgerRecord
from trooper.store.base import Lease, ProcessLocks


class MemoryStore:
    """Dicts and lists behind a lock; the same semantics as the SQLite store, minus durability."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conversations: dict[str, tuple[dict[str, Any], float]] = {}
        self._ledger: list[LedgerRecord] = []
        self._audit: dict[str, list[dict[str, Any]]] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._claims: dict[str, float] = {}
        self._summaries: dict[str, list[dict[str, Any]]] = {}
        self._locks = ProcessLocks()

    async def load_conversation(self, session: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._conversations.get(session)
            return dict(found[0]) if found else None

    async def list_conversations(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = sorted(self._conversations.values(), key=lambda item: item[1], reverse=True)
            return [{**data, "updated": at} for data, at in rows[:limit]]

    async def ledger_append(self, records: Sequence[LedgerRecord]) -> None:
        with self._lock:
            self._ledger.extend(records)

    async def ledger_since(self, cursor: int) -> tuple[list[LedgerRecord], int]:
        with self._lock:
            return self._ledger[cursor:], len(self._ledger)

    async def write(
        self, session: str, at: float, conversation: dict[str, Any] | None, audit: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        with self._lock:
            if conversation is not None:
                self._conversations[session] = (dict(conversation), at)
            if audit:
                self._audit.setdefault(session, []).extend({"at": at, "kind": kind, **data} for kind, data in audit)

    async def audit(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._audit.get(session, []))

    async def health_get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._health.get(key)
            return dict(found) if found is not None else None

    async def health_set(self, key: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._health[key] = dict(data)

    async def summaries_get(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._summaries.get(session, [])]

    async def summaries_set(self, session: str, summaries: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self._summaries[session] = [dict(item) for item in summaries]

    async def claim(self, name: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._claims.get(name, 0.0) > now:
                return False
            self._claims[name] = now + ttl
            return True

    async def unclaim(self, name: str) -> None:
        with self._lock:
            self._claims.pop(name, None)

    async def lock(self, session: str, ttl: float) -> Lease:
        return await self._locks.lock(session, ttl)

    async def prune(
        self, *, older_than: float | None, max_sessions: int | None, max_audit_per_session: int | None
    ) -> dict[str, int]:
        with self._lock:
            by_age = sorted(self._conversations.items(), key=lambda item: item[1][1], reverse=True)
            doomed = {sid for sid, (_, at) in by_age if older_than is not None and at < older_than}
            if max_sessions is not None:
                doomed |= {sid for sid, _ in by_age[max_sessions:]}
            for sid in doomed:
                del self._conversations[sid]
                self._summaries.pop(sid, None)
            audit_removed = sum(len(self._audit.pop(sid, [])) for sid in doomed)
            if max_audit_per_session is not None:
                for entries in self._audit.values():
                    extra = len(entries) - max_audit_per_session
                    if extra > 0:
                        del entries[:extra]
                        audit_removed += extra
            return {"sessions": len(doomed), "audit": audit_removed}

    async def close(self) -> None:
        return None
