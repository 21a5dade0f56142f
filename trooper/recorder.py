"""The ledger kept in step with the store: write-ahead appends and cross-instance refreshes.

The index answers in memory; the store is the truth. Before a request is checked, :meth:`Ledger.refresh`
reads what other instances (or an earlier run) appended since the last look — one indexed query —
and :meth:`Ledger.append` makes a record durable before the index, and so any decision, relies on
it. A store that cannot be read or written raises :class:`LedgerUnavailable`, and the engine refuses
the turn: Trooper never sends what it could not check, nor runs a local turn it could not record.
"""

from __future__ import annotations

from collections.abc import Sequence

from trooper.ledger import LedgerIndex, LedgerRecord
from trooper.store.base import SessionStore, StoreUnavailable
from trooper.wire import TrooperError


class LedgerUnavailable(Exception):
    """The store did not answer a ledger read or write."""


def ledger_refusal(exc: Exception) -> TrooperError:
    """What the client is told when Trooper cannot check or record locality: a 503, sent nowhere."""
    return TrooperError(
        "api_error",
        f"Trooper refused this turn: {exc}, so it cannot check or record what stays local. Try again when the "
        "store is back.",
        status=503,
    )


def _why(exc: Exception) -> str:
    """What may be said of a store failure: a store's own message (written to name the server and
    never a credential), or only the type of anything else."""
    return str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__


class Ledger:
    """A :class:`LedgerIndex` fed from a :class:`SessionStore`."""

    def __init__(self, store: SessionStore, *, share_fallback: bool = False) -> None:
        self.store = store
        self.index = LedgerIndex(share_fallback=share_fallback)
        self._cursor = 0

    async def refresh(self) -> None:
        """Pick up records other instances (or an earlier run) appended."""
        try:
            records, self._cursor = await self.store.ledger_since(self._cursor)
        except Exception as exc:  # any store failure means the ledger cannot be checked
            raise LedgerUnavailable(f"the ledger could not be read ({_why(exc)})") from exc
        self.index.add(records)

    async def append(self, records: Sequence[LedgerRecord]) -> None:
        """Durably record, then index; nothing relies on a record the store has not accepted."""
        if not records:
            return
        try:
            await self.store.ledger_append(records)
        except Exception as exc:
            raise LedgerUnavailable(f"the ledger could not be written ({_why(exc)})") from exc
        self.index.add(records)
