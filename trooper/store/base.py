"""The storage protocol: conversations, the provenance ledger and the audit trail.

The ledger is the part that must never be lost: :meth:`SessionStore.ledger_append` returns only once
the records are durable, and records are append-only with a monotonically increasing cursor, so
every Trooper instance sharing a store can pick up the others' records cheaply with
:meth:`SessionStore.ledger_since` before it sends anything to the cloud. A record is a batch of
64-bit fingerprints of one kind (:class:`trooper.ledger.LedgerRecord`); the store keeps them as
they come, in order, and never merges or drops one, so whatever a reader makes of them does not
depend on the order of writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from trooper.ledger import LedgerRecord, Origin

__all__ = ["LedgerEntry", "Origin", "SessionStore", "StoreError"]

#: The name earlier versions exported; the ledger's unit is now a batch of fingerprints.
LedgerEntry = LedgerRecord


class StoreError(Exception):
    """The store cannot be used as it is; the message says why in one line."""


class SessionStore(Protocol):
    """Where conversations, ledger entries and audit records live (memory, SQLite, …)."""

    def load_conversation(self, session: str) -> dict[str, Any] | None: ...

    def save_conversation(self, session: str, data: dict[str, Any], at: float) -> None: ...

    def list_conversations(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def ledger_append(self, records: Sequence[LedgerRecord]) -> None:
        """Durably append records, in order; returns only once they survive a crash of Trooper."""
        ...

    def ledger_since(self, cursor: int) -> tuple[list[LedgerRecord], int]:
        """Records appended after ``cursor`` and the new cursor (0 reads everything)."""
        ...

    def audit_append(self, session: str, at: float, kind: str, data: dict[str, Any]) -> None: ...

    def write(
        self, session: str, at: float, conversation: dict[str, Any] | None, audit: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        """Save a conversation and append audit records in one transaction (one commit per turn)."""
        ...

    def audit(self, session: str) -> list[dict[str, Any]]: ...

    def prune(
        self, *, older_than: float | None, max_sessions: int | None, max_audit_per_session: int | None
    ) -> dict[str, int]:
        """Drop old conversations and audit records; never ledger records. Returns counts removed."""
        ...

    def close(self) -> None: ...
