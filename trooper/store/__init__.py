"""Stores for conversations, the provenance ledger and the audit trail."""

from __future__ import annotations

from trooper.config import StoreConfig
from trooper.store.base import LedgerEntry, SessionStore, StoreError, StoreUnavailable
from trooper.store.memory import MemoryStore
from trooper.store.redis import RedisStore, is_redis_url
from trooper.store.sqlite import SQLiteStore
from trooper.store.sync import SyncStore

__all__ = [
    "LedgerEntry",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionStore",
    "StoreError",
    "StoreUnavailable",
    "SyncStore",
    "open_store",
]


def open_store(store: str | StoreConfig) -> SessionStore:
    """``memory`` gives an in-process store, a ``redis://`` or ``rediss://`` URL a Redis store, anything
    else an SQLite file path. Given the whole ``[store]`` section, its other settings (the Redis
    password, timeouts, the lock's lifetime) apply too; given a path, their defaults do."""
    settings = store if isinstance(store, StoreConfig) else StoreConfig(path=store)
    where = settings.path
    if where in {"memory", ":memory:"}:
        return MemoryStore()
    if is_redis_url(where):
        return RedisStore(
            where,
            password=settings.redis_password,
            timeout=settings.redis_timeout,
            lock_ttl=settings.lock_ttl,
            wait_aof=settings.redis_wait_aof,
        )
    return SQLiteStore(where)
