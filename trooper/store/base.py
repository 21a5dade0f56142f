"""The storage protocol: conversations, the provenance ledger and the audit trail.

The ledger is the part that must never be lost (DESIGN I5): :meth:`SessionStore.ledger_add` returns
only once the entries are durable, and entries are append-only with a monotonically increasing
cursor, so every Trooper instance sharing a store can pick up the others' entries cheaply with
:meth:`SessionStore.ledger_since` before it sends anything to the cloud.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import attrs

Origin = Literal["forced", "fallback"]
EntryKind = Literal["block", "id", "shingle", "cloud"]


@attrs.frozen
class LedgerEntry:
    """One fingerprint of local content (or, for ``kind="cloud"``, of a block already sent to the cloud).

    ``shareable`` marks fallback content a deployment chose to share with the cloud after recovery;
    forced-local content is never shareable.
    """

    fingerprint: str
    kind: EntryKind
    session: str
    origin: Origin = "forced"
    shareable: bool = False


class SessionStore(Protocol):
    """Where conversations, ledger entries and audit records live (memory, SQLite, …)."""

    def load_conversation(self, session: str) -> dict[str, Any] | None: ...

    def save_conversation(self, session: str, data: dict[str, Any], at: float) -> None: ...

    def list_conversations(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def ledger_add(self, entries: Sequence[LedgerEntry]) -> None:
        """Durably append entries (duplicates are ignored)."""
        ...

    def ledger_since(self, cursor: int) -> tuple[list[LedgerEntry], int]:
        """Entries appended after ``cursor`` and the new cursor (0 reads everything)."""
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
        """Drop old conversations and audit records; never ledger entries. Returns counts removed."""
        ...

    def close(self) -> None: ...
