"""Stores for conversations, the provenance ledger and the audit trail."""

from __future__ import annotations

from trooper.store.base import LedgerEntry, SessionStore, StoreError, StoreUnavailable
from trooper.store.memory import MemoryStore
from trooper.store.sqlite import SQLiteStore
from trooper.store.sync import SyncStore

__all__ = [
    "LedgerEntry",
    "MemoryStore",
    "SQLiteStore",
    "SessionStore",
    "StoreError",
    "StoreUnavailable",
    "SyncStore",
    "open_store",
]


def open_store(path: str) -> SessionStore:
    """``memory`` gives an in-process store; anything else is an SQLite file path."""
    if path in {"memory", ":memory:"}:
        return MemoryStore()
    return SQLiteStore(path)
