"""The admin queries: health, stored conversations and their audit trail, the state graph, retention.

What an operator asks of a running Trooper (``/trooper/…`` routes, ``trooper doctor``) is read from
the same store and providers the engine uses, but none of it is part of a turn, so it lives here and
the engine stays a driver of turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import structlog

from trooper.conversation import conversation_from_dict
from trooper.providers.base import ProviderError
from trooper.store.base import StoreUnavailable
from trooper.wire import TrooperError

if TYPE_CHECKING:
    from trooper.engine import Engine

log = structlog.get_logger("trooper")


class Admin:
    """Read-only views of an engine's state, and the retention policy."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    async def health_report(self) -> dict[str, Any]:
        """Cloud health, whether the local provider answers, and whether the store does."""
        engine = self.engine
        local: dict[str, Any] = {
            "provider": engine.local.name if engine.local is not None else "none",
            "model": engine.local.model if engine.local is not None else None,
            "context_tokens": engine.memory.context_tokens,
        }
        if engine.local is not None:
            try:
                local["up"] = bool(await asyncio.wait_for(engine.local.health(), timeout=5))
            except (TimeoutError, ProviderError):
                local["up"] = False
        try:
            await engine.store.list_conversations(1)
            store: dict[str, Any] = {"ok": True, "kind": type(engine.store).__name__}
        except Exception as exc:  # any store failure is what this report is for
            store = {"ok": False, "kind": type(engine.store).__name__, "error": type(exc).__name__}
            if isinstance(exc, StoreUnavailable):  # its message names the server, never a password
                store["reason"] = str(exc)
        cloud: dict[str, Any] = {"provider": engine.cloud.name}
        try:
            cloud["upstreams"] = await engine.watch.snapshot()
        except TrooperError as exc:  # the shared health lives in the store
            cloud["upstreams"] = None
            cloud["error"] = exc.message
        return {
            "status": "ok" if store["ok"] else "degraded",
            "cloud": cloud,
            "local": local,
            "store": store,
            "uptime_seconds": round(self.clock() - engine.started_at, 3),
        }

    async def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {
                "id": data["id"],
                "state": data.get("state"),
                "turns": data.get("turns", 0),
                "transitions": data.get("transitions", 0),
                "last_activity": data.get("updated"),
            }
            for data in await self.engine.store.list_conversations(limit)
        ]

    async def session_report(self, session: str) -> dict[str, Any] | None:
        data = await self.engine.store.load_conversation(session)
        if data is None:
            return None
        conv = conversation_from_dict(data)
        transitions = [entry for entry in await self.engine.store.audit(session) if entry["kind"] == "transition"]
        return {
            "id": conv.id,
            "state": conv.state,
            "turns": conv.turns,
            "transition_count": conv.transitions,
            "last_event": conv.last_event,
            "edge_counts": conv.edge_counts,
            "path": conv.path,
            "transitions": transitions,
        }

    async def session_audit(self, session: str) -> list[dict[str, Any]] | None:
        records = await self.engine.store.audit(session)
        if not records and await self.engine.store.load_conversation(session) is None:
            return None
        return records

    async def session_graph(self, session: str, fmt: Literal["mermaid", "dot"]) -> str | None:
        data = await self.engine.store.load_conversation(session)
        if data is None:
            return None
        from trooper.graph import render

        return render(fmt, conversation_from_dict(data), title=f"Trooper conversation {session}")

    async def prune(self) -> dict[str, int]:
        """Apply the retention policy; ledger records are never pruned (they keep local content local)."""
        retention = self.engine.config.retention
        older = (self.clock() - retention.max_age_days * 86400) if retention.max_age_days is not None else None
        removed = await self.engine.store.prune(
            older_than=older, max_sessions=retention.max_sessions, max_audit_per_session=retention.max_audit_per_session
        )
        if any(removed.values()):
            log.info("pruned", **removed)
        return removed


__all__ = ["Admin"]
