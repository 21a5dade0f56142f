"""The books of a turn: transitions committed, audit rows, the turn record, what the cloud has now seen.

Bookkeeping that the client need not wait for is done just after the response leaves: the turn
record (with the log line and metrics), the cloud's sightings, the token calibration. State changes
are the exception: a transition is durable before the turn it belongs to runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from trooper import relay, turn
from trooper.config import LocalityConfig
from trooper.context import Memory
from trooper.conversation import Conversation, TransitionRecord, conversation_to_dict
from trooper.ledger import cloud_sightings
from trooper.metrics import Metrics
from trooper.recorder import Ledger
from trooper.store.base import SessionStore
from trooper.wire import JSON, Outgoing

log = structlog.get_logger("trooper")


class Books:
    """Writes what a turn leaves behind, and waits for it on :meth:`settle`."""

    def __init__(
        self,
        store: SessionStore,
        ledger: Ledger,
        *,
        memory: Memory,
        metrics: Metrics,
        locality: LocalityConfig,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.memory = memory
        self.metrics = metrics
        self.locality = locality
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        #: Called with every local turn that answered, once its record is written (the model-written
        #: SITREP is planned from it).
        self.after_local_turn: Callable[[turn.Turn], None] | None = None

    async def commit(self, conversation: Conversation, records: Sequence[TransitionRecord]) -> None:
        """The conversation and its new transitions, durably, in one transaction."""
        await self.store.write(
            conversation.id,
            self.clock(),
            conversation_to_dict(conversation),
            [("transition", attrs.asdict(record)) for record in records],
        )
        for record in records:
            self.metrics.transitions.labels(record.event).inc()
            log.info(
                "transition",
                session=conversation.id,
                trooper_event=record.event,
                source=record.source,
                dest=record.dest,
                reason=record.reason,
                request_id=record.request_id,
            )

    async def audit(self, planned: turn.Turn, rows: Sequence[tuple[str, JSON]]) -> None:
        if rows:
            data = [(kind, {"request_id": planned.request_id, **row}) for kind, row in rows]
            await self.store.write(planned.request.session, self.clock(), None, data)

    def finish(self, reply: Outgoing, planned: turn.Turn, started: float, *, saved: bool) -> Outgoing:
        """Write the turn's record and metrics once the response is complete.

        Just *after* the response leaves (``call_soon``), not before: the log line, metrics and store
        write would otherwise sit between the upstream's answer and the client's. The state change a
        turn makes is already durable before it runs; what a crash in that window can lose is one
        turn's record, never a transition. Callbacks run in order on the loop, so what the server does
        next — the next request of the session, an admin read — sees the record.
        """
        first_byte = time.perf_counter() - started
        conversation = None if saved else planned.conversation
        if reply.stream is None:
            _soon(self._record, planned, conversation, reply.status, first_byte, first_byte)
            return reply
        reply.stream = self._finishing(
            reply.stream, planned, conversation, reply.status, started=started, first_byte=first_byte
        )
        return reply

    async def _finishing(
        self,
        stream: AsyncIterator[bytes],
        planned: turn.Turn,
        conversation: Conversation | None,
        status: int,
        *,
        started: float,
        first_byte: float,
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            _soon(self._record, planned, conversation, status, first_byte, time.perf_counter() - started)

    def _record(self, planned: turn.Turn, conversation: Conversation | None, status: int, *timing: float) -> None:
        first_byte, duration = timing
        if planned.route == "local" and status == 200 and self.after_local_turn is not None:
            self.after_local_turn(planned)
        data = turn.turn_record(
            planned,
            status=status,
            provider=planned.provider,
            model=planned.model,
            first_byte=first_byte,
            duration=duration,
        )
        saved = conversation_to_dict(conversation) if conversation is not None else None
        self.later(self.store.write(planned.request.session, self.clock(), saved, [("turn", data)]))
        self.metrics.requests.labels(planned.route, str(status)).inc()
        self.metrics.first_byte.labels(planned.route).observe(first_byte)
        self.metrics.duration.labels(planned.route).observe(duration)
        if planned.reason in ("quota", "offline"):
            self.metrics.fallbacks.labels(planned.reason).inc()
        log.info(
            "turn",
            session=planned.request.session,
            **{k: v for k, v in data.items() if k != "memory"},
            memory=data.get("memory"),
        )

    def learn_tokens(self, request: turn.Request, action: turn.CloudCall, first: Sequence[bytes]) -> None:
        """Feed the cloud's exact input count to this conversation's token estimator."""
        tokens = relay.input_tokens(first[0] if first else b"", request.stream)
        if tokens is not None:
            self.memory.observe(request.session, action.plan.messages, tokens)

    def learn_local_tokens(self, planned: turn.Turn, event: Mapping[str, Any]) -> None:
        """Feed the local model's own count of the prompt (its final usage) to the local estimator."""
        usage = event.get("usage") if event.get("type") == "message_delta" else None
        actual = usage.get("input_tokens") if isinstance(usage, Mapping) else None
        if isinstance(actual, int) and planned.memory is not None:
            self.memory.observe_local(planned.memory.layers.get("total", 0), actual)

    def remember_cloud(self, planned: turn.Turn, action: turn.CloudCall) -> None:
        """Where the cloud has now received messages, so later requests trust them without scanning.

        After the response, and best effort: a sighting that is lost only means the same history is
        vetted again next time.
        """
        protect = self.locality.protect_client_context
        if planned.lineage is None or (not self.ledger.index.holds_local and not protect):
            return
        request = planned.request
        records = cloud_sightings(
            request.body,
            request.messages,
            planned.lineage,
            self.ledger.index,
            action.plan,
            session=request.session,
            protect_context=protect,
        )
        if records:
            self.later(self.ledger.append(records))

    def later(self, work: Awaitable[None]) -> None:
        """Bookkeeping that need not hold up the response; :meth:`settle` waits for it."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("bookkeeping_failed", error=type(task.exception()).__name__)

    async def settle(self) -> None:
        """Wait until the bookkeeping of every response already sent is written (turn records, sightings)."""
        await asyncio.sleep(0)
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def _soon(callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback`` right after the current step of the event loop (at once when there is none)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback(*args)
        return
    loop.call_soon(callback, *args)


__all__ = ["Books"]
