"""A store's coroutines, run to completion for synchronous callers (the command line, tests).

The store protocol is asynchronous because the engine is; ``trooper sessions`` and a test's
assertions are not, and should not need an event loop of their own to read a conversation.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from trooper.store.base import SessionStore

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


class SyncStore:
    """``SyncStore(store).audit(session)`` is ``await store.audit(session)``, from synchronous code.

    ``run`` runs one coroutine to its end: :func:`asyncio.run` by default, or a callable that runs it
    on the loop that owns the store (``InProcessServer.run``).
    """

    def __init__(self, store: SessionStore, run: Runner = asyncio.run) -> None:
        self.store = store
        self._run = run

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(attribute(*args, **kwargs))

        return call


__all__ = ["SyncStore"]
