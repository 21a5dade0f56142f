"""Stores for conversations, the provenance ledger and the audit trail."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

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
    "configured",
    "open_store",
]

#: The store settings :func:`open_store` applies when it is given only a path (see :func:`configured`).
_settings: contextvars.ContextVar[StoreConfig | None] = contextvars.ContextVar("store_settings", default=None)


@contextlib.contextmanager
def configured(settings: StoreConfig) -> Iterator[None]:
    """Let :func:`open_store` calls that pass only ``store.path`` (``Engine.from_config``) use the
    rest of ``settings`` too: the Redis password and timeouts."""
    token = _settings.set(settings)
    try:
        yield
    finally:
        _settings.reset(token)


def open_store(path: str | StoreConfig) -> SessionStore:
    """``memory`` gives an in-process store, a ``redis://`` or ``rediss://`` URL a Redis store, anything
    else an SQLite file path. Given the whole ``[store]`` section, its other settings apply too."""
    settings = path if isinstance(path, StoreConfig) else _settings.get()
    where = path.path if isinstance(path, StoreConfig) else path
    if settings is not None and settings.path != where:
        settings = None
    settings = settings or StoreConfig(path=where)
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
