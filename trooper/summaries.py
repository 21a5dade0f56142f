"""The model-written SITREP, engine side: asked of the local model in the background, kept per conversation.

:mod:`trooper.memory.summariser` plans a summary request and accepts the model's answer, purely;
this module is the I/O around it. After a local turn whose compaction says a summary is due, the
request is queued; a few workers send it to the *local* provider — never the cloud, whose turns
never see a summary — off the request path, and keep the result in the store, where the next local
turn of the conversation finds it (:meth:`SummaryWriter.load`).

Everything here fails quietly towards the extractive SITREP: a full queue skips the request (the
next local turn plans it again), a local model that fails or takes longer than
``memory.sitrep_timeout`` leaves the conversation with what it had, and the client never notices.
What it does not do is keep a summary it could not record: a summary is local content — it is
written from local turns as well as cloud ones — so its spans go to the ledger first, and a ledger
that cannot be written means the summary is dropped. Audit rows say when a summary was written or
given up, with turn numbers and sizes, never its text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from trooper.config import MemoryConfig
from trooper.keyset import U64
from trooper.ledger import summary_records
from trooper.memory import ModelSitrep, SummaryRequest, accept_summary
from trooper.providers.base import LocalProvider, LocalRequest, ProviderError
from trooper.recorder import Ledger, LedgerUnavailable
from trooper.store.base import SessionStore
from trooper.wire import JSON

log = structlog.get_logger("trooper.summaries")

#: Summaries kept per conversation: the freshest is the one used; a few older ones still serve a
#: conversation whose client re-sent an older state of its history (an edited turn).
KEPT: Final = 4


class SummaryWriter:
    """Queue and workers for model-written SITREPs; see the module docstring."""

    def __init__(
        self,
        config: MemoryConfig,
        local: LocalProvider | None,
        store: SessionStore,
        ledger: Ledger,
        *,
        num_ctx: Callable[[], int | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.local = local
        self.store = store
        self.ledger = ledger
        self.num_ctx = num_ctx
        self.clock = clock
        self._queue: asyncio.Queue[tuple[str, SummaryRequest, U64]] = asyncio.Queue(config.sitrep_queue)
        self._waiting: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether SITREPs are model-written at all (a setting, and a local model to write them)."""
        return self.config.sitrep != "extractive" and self.local is not None

    @property
    def pending(self) -> int:
        """Conversations whose summary is queued or being written."""
        return len(self._waiting)

    @property
    def running(self) -> bool:
        """Whether any worker is alive (none before the first summary, none after :meth:`aclose`)."""
        return any(not worker.done() for worker in self._workers)

    async def load(self, session: str) -> tuple[ModelSitrep, ...]:
        """The conversation's stored summaries (none when disabled; a malformed one is skipped)."""
        if not self.enabled:
            return ()
        found = []
        for data in await self.store.summaries_get(session):
            try:
                found.append(ModelSitrep.from_dict(data))
            except (ValueError, TypeError, AttributeError):
                log.warning("sitrep_unreadable", session=session)
        return tuple(found)

    def schedule(self, session: str, request: SummaryRequest, base: U64) -> bool:
        """Queue ``request`` for the local model; ``False`` when it is skipped (one per conversation
        at a time; a full queue). ``base`` is what the cloud had when the turn was planned."""
        if not self.enabled or self._closed or session in self._waiting:
            return False
        try:
            self._queue.put_nowait((session, request, base))
        except asyncio.QueueFull:
            log.info("sitrep_skipped", session=session, reason="queue_full")
            return False
        self._waiting.add(session)
        while len(self._workers) < self.config.sitrep_concurrency:
            self._workers.append(asyncio.ensure_future(self._work()))
        return True

    async def settle(self) -> None:
        """Wait until every queued summary is written or given up (tests, and a clean shutdown)."""
        if self._workers:
            await self._queue.join()

    async def aclose(self) -> None:
        """Stop at once: queued requests are dropped, one in progress is cancelled."""
        self._closed = True
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()

    # ------------------------------------------------------------------------------- the work

    async def _work(self) -> None:
        while True:
            session, request, base = await self._queue.get()
            try:
                await self._write(session, request, base)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a summary is best effort: the extractive SITREP stands
                log.warning("sitrep_failed", session=session, error_type=type(exc).__name__)
            finally:
                self._waiting.discard(session)
                self._queue.task_done()

    async def _write(self, session: str, request: SummaryRequest, base: U64) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.sitrep_timeout):
                text = await self._ask(request)
        except (TimeoutError, ProviderError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            await self._audit(
                session, "sitrep_given_up", {"first": request.first, "last": request.last, "reason": reason}
            )
            return
        summary = accept_summary(request, text)
        try:
            await self.ledger.append(summary_records(summary.text, base, session=session))
        except LedgerUnavailable:
            await self._audit(
                session, "sitrep_given_up", {"first": request.first, "last": request.last, "reason": "ledger"}
            )
            return
        kept = [data for data in await self.store.summaries_get(session) if data.get("chain") != summary.chain]
        await self.store.summaries_set(session, [*kept[-(KEPT - 1) :], summary.to_dict()])
        await self._audit(
            session,
            "sitrep_written",
            {
                "first": summary.first,
                "last": summary.last,
                "characters": len(summary.text),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    async def _ask(self, request: SummaryRequest) -> str:
        """The local model's answer to the summary prompt, as text."""
        assert self.local is not None
        body: JSON = {
            "model": self.local.model,
            "max_tokens": request.max_tokens * 2,
            "messages": [{"role": "user", "content": request.prompt()}],
        }
        events = self.local.events(LocalRequest(body, model=self.local.model, stream=True, num_ctx=self.num_ctx()))
        parts: list[str] = []
        try:
            async for event in events:
                delta = event.get("delta") if event.get("type") == "content_block_delta" else None
                if isinstance(delta, dict) and delta.get("type") == "text_delta":
                    parts.append(str(delta.get("text", "")))
        finally:
            await _close(events)
        return "".join(parts)

    async def _audit(self, session: str, kind: str, data: dict[str, Any]) -> None:
        log.info(kind, session=session, **data)
        with contextlib.suppress(Exception):  # an audit row that cannot be written loses nothing else
            await self.store.write(session, self.clock(), None, [(kind, data)])


async def _close(events: Any) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(events, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


__all__ = ["KEPT", "SummaryWriter"]
