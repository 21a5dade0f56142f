"""One turn: identify → decide → build the payload → call the provider → record (DESIGN §3).

The engine is the only place where the pure core (decision, state machine, ledger filter, memory)
meets I/O (providers, store). The HTTP server is a thin layer over :meth:`Engine.handle`; embedders
call the same engine directly with provider objects and a store of their choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import orjson
import structlog

from trooper.config import Config
from trooper.context import Memory, MemoryResult
from trooper.controls import TROOPER_FIELDS, Controls, read_controls
from trooper.conversation import (
    Conversation,
    Health,
    TransitionRecord,
    conversation_from_dict,
    conversation_to_dict,
    fire,
)
from trooper.decide import Plan, Route, decide
from trooper.health import CloudHealth
from trooper.identity import session_id
from trooper.ledger import (
    NO_SYSTEM,
    Blocked,
    CloudPlan,
    ReplyRecorder,
    cloud_sightings,
    plan_cloud,
    record_local_turn,
)
from trooper.lineage import Lineage, tool_use_id, walk
from trooper.memory import BudgetTooSmall
from trooper.metrics import Metrics
from trooper.providers.anthropic import HOP_BY_HOP
from trooper.providers.base import (
    AuthError,
    BadRequest,
    CloudProvider,
    LocalProvider,
    LocalRequest,
    LowerHeaders,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    Unreachable,
    UpstreamRequest,
    UpstreamResponse,
)
from trooper.recorder import Ledger, LedgerUnavailable
from trooper.spans import warm_up
from trooper.store.base import Origin, SessionStore
from trooper.text import content_blocks
from trooper.wire import (
    JSON,
    MessageAccumulator,
    SSEDecoder,
    TrooperError,
    encode_sse,
    error_payload,
    invalid_request,
    new_request_id,
)

log = structlog.get_logger("trooper")

_RESPONSE_DROP = HOP_BY_HOP - {"content-length"}


def _forwardable(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """An upstream response's headers minus hop-by-hop ones: what the client gets to see."""
    return [(k, v) for k, v in headers if k.lower() not in _RESPONSE_DROP]


@attrs.frozen
class Incoming:
    """A request as bytes: what the server hands the engine."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""


@attrs.define
class Outgoing:
    """A response as bytes: a full body or a stream of chunks."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


#: Roles of the messages a conversation is made of. Claude Code (2.1.x) also sends ``system`` messages
#: inside ``messages`` (its environment notes, right after the first prompt); those are the client's
#: context, like the top-level ``system`` field: forwarded as they are, never a turn of their own.
MESSAGE_ROLES: Final = ("user", "assistant", "system")


@attrs.frozen
class _Read:
    """What :meth:`Engine._read` takes from a request."""

    body: JSON
    messages: list[JSON]
    headers: LowerHeaders
    controls: Controls
    session: str


@attrs.define
class Turn:
    """Everything about the request in flight; the machine's compaction callback fills ``memory``."""

    session: str
    request_id: str
    body: JSON
    messages: list[JSON]
    walk: Callable[[], Lineage]
    controls: Controls
    stream: bool
    memory_fn: Callable[[Turn], MemoryResult]
    memory: MemoryResult | None = None
    route: Route = "cloud"
    reason: str = "default"
    provider: str = ""
    model: str = ""
    conversation: Conversation | None = None  # to save with the turn record (no state change to hurry)
    memory_error: str | None = None
    withheld_blocks: int = 0
    withheld_turns: int = 0
    guard_hits: int = 0
    _lineage: Lineage | None = None

    @property
    def lineage(self) -> Lineage:
        """Where the request's messages stand in their lineage: walked when first needed (a cloud turn
        needs it only once the ledger holds something local)."""
        if self._lineage is None:
            self._lineage = self.walk()
        return self._lineage

    def compact(self) -> None:
        """Called synchronously by the state machine when a turn starts running locally.

        A history that cannot fit the local model even truncated is remembered, not raised: the
        machine has already moved (it has no rollback), and the engine answers with a clear error.
        """
        try:
            self.memory = self.memory_fn(self)
        except BudgetTooSmall as exc:
            self.memory_error = str(exc)


class _ConversationLock:
    """The per-conversation lock of one request, which a local turn hands on to its reply stream.

    Turns of one conversation never run concurrently: a request that arrives while a local reply
    streams waits until that reply is over (or was cut off), so it sees everything the client got.
    """

    def __init__(self, locks: weakref.WeakValueDictionary[str, asyncio.Lock], session: str) -> None:
        self._lock = locks.get(session) or locks.setdefault(session, asyncio.Lock())
        self._held = False
        self._handed_on = False

    async def acquire(self) -> None:
        await self._lock.acquire()
        self._held = True

    def hand_on(self) -> Callable[[], None]:
        """Give the lock to whoever calls the returned function when done (once)."""
        self._handed_on = True
        return self._release

    def release_unless_handed_on(self) -> None:
        if not self._handed_on:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


def _ledger_down(exc: Exception) -> TrooperError:
    return TrooperError(
        "api_error",
        f"Trooper refused this turn: {exc}, so it cannot check or record what stays local. Try again when the "
        "store is back.",
        status=503,
    )


def _answered_tool_calls(messages: Sequence[JSON]) -> list[str] | None:
    """The tool calls a request answers, when its last turn message starts with tool results (a
    tool-loop continuation); None when the request begins a turn."""
    last = None
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") != "system":
            last = index
            break
    if last is None or messages[last].get("role") != "user":
        return None
    blocks = content_blocks(messages[last])
    if not blocks or not isinstance(blocks[0], Mapping) or blocks[0].get("type") != "tool_result":
        return None
    for message in reversed(messages[:last]):
        if message.get("role") == "assistant":
            return [ref for ref in map(tool_use_id, content_blocks(message)) if ref is not None]
    return []


async def _close(events: AsyncIterator[JSON]) -> None:
    closing = getattr(events, "aclose", None)
    if closing is not None:
        with contextlib.suppress(Exception):
            await closing()


def _error(exc: TrooperError, extra: Sequence[tuple[str, str]] = ()) -> Outgoing:
    headers = [("content-type", "application/json"), *exc.headers.items(), *extra]
    return Outgoing(exc.status, headers, exc.body())


def _provider_name(provider: LocalProvider | None) -> str:
    return provider.name if provider is not None else "none"


class Engine:
    """Routes turns between a cloud provider and a local provider, keeping local content local."""

    def __init__(
        self,
        *,
        cloud: CloudProvider,
        local: LocalProvider | None,
        store: SessionStore,
        config: Config | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or Config()
        self.cloud = cloud
        self.local = local
        self.store = store
        self.clock = clock
        locality = self.config.locality
        self.ledger = Ledger(store, share_fallback=locality.share_fallback_after_recovery)
        self.memory = Memory(self.config, local)
        self.metrics = Metrics()
        self.started_at = clock()
        self._health: dict[str, CloudHealth] = {}
        # One lock per conversation while someone holds it; gone when nobody does.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_config(cls, config: Config) -> Engine:
        """Build providers through the entry-point registry and open the configured store."""
        from trooper.providers.registry import build, discover
        from trooper.store import open_store

        factories = discover()
        cloud = build(config.providers.cloud, config, factories)
        local = build(config.providers.local, config, factories) if config.providers.local else None
        if cloud.kind != "cloud" or (local is not None and local.kind != "local"):
            from trooper.config import ConfigError

            raise ConfigError("providers.cloud must name a cloud provider and providers.local a local one")
        assert isinstance(cloud, CloudProvider)
        assert local is None or isinstance(local, LocalProvider)
        # The word list that tells rare words from everyday ones takes a moment to load; load it now,
        # off the event loop, rather than during the first local turn.
        threading.Thread(target=warm_up, name="trooper-vocabulary", daemon=True).start()
        return cls(cloud=cloud, local=local, store=open_store(config.store.path), config=config)

    async def aclose(self) -> None:
        await self.cloud.aclose()
        if self.local is not None:
            await self.local.aclose()
        self.store.close()

    # ------------------------------------------------------------------------------- dispatch

    async def handle(self, request: Incoming) -> Outgoing:
        """Serve one API request; Trooper's own failures come back in Anthropic's error shape."""
        try:
            if request.path == "/v1/messages" and request.method == "POST":
                return await self.messages(request)
            if request.path == "/v1/messages/count_tokens" and request.method == "POST":
                return await self.count_tokens(request)
            if request.path.startswith("/v1/models") and request.method == "GET":
                return await self.forward(request)
            raise TrooperError("not_found_error", f"{request.method} {request.path}: no such route")
        except TrooperError as exc:
            return _error(exc)

    # ------------------------------------------------------------------------------- messages

    def _read(self, request: Incoming) -> _Read:
        """Body, messages, headers, locality controls and session: read one way for every endpoint."""
        body = parse_body(request.body)
        messages = validate_messages(body)
        lookup = LowerHeaders.of(request.headers)
        controls = read_controls(lookup, body, self.config.locality.marker)
        session, _source = session_id(lookup, body)
        return _Read(body, messages, lookup, controls, session)

    def _refresh(self) -> None:
        """Read what other instances recorded; a ledger that cannot be read refuses the turn."""
        try:
            self.ledger.refresh()
        except LedgerUnavailable as exc:
            raise _ledger_down(exc) from None

    def _walk(self, read: _Read) -> Lineage:
        return walk(read.messages, self.ledger.index, session=read.session, marker=self.config.locality.marker)

    async def messages(self, request: Incoming) -> Outgoing:
        read = self._read(request)
        body, messages, controls, session = read.body, read.messages, read.controls, read.session
        stream = body.get("stream") is True
        request_id = new_request_id()
        self._refresh()
        turn = Turn(
            session,
            request_id,
            body,
            messages,
            functools.partial(self._walk, read),
            controls,
            stream,
            self.memory.compact,
        )
        await self.memory.prepare()
        continuation = self._continuation_route(messages)
        health_key = self._health_key(read.headers)
        health = self._health.get(health_key) or self._health.setdefault(health_key, CloudHealth())
        if health.probe_due(self.clock()):
            probe = self._start_probe(health, request.headers, body)
            if not controls.force_local and continuation != "local":
                # This turn could use the cloud: wait (bounded) for the one shared probe to say so.
                # A turn that runs locally anyway never waits on the cloud.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(probe), self.config.anthropic.probe_timeout + 1)
        lock = _ConversationLock(self._locks, session)
        await lock.acquire()
        try:
            conv = self._load(session)
            known = health.status if self.local is not None else Health.UP
            plan = decide(conv.state, controls=controls, continuation=continuation, health=known)
            turn.route, turn.reason = plan.route, plan.reason
            records = self._apply(conv, plan, turn, health.status, new_turn=continuation is None)
            if plan.route == "local" and turn.memory is None:
                turn.compact()  # a tool-loop continuation: same memory, no transition
            if records:  # a state change is durable before the turn runs; counters wait for the turn record
                self._commit(conv, records)
            else:
                turn.conversation = conv
            headers = self._trooper_headers(conv, turn)
            started = time.perf_counter()
            if plan.route == "local":
                origin = self._local_origin(controls, continuation, messages)
                fallback_error = None if origin == "forced" else health.last_failure
                # The lock covers the whole local turn: the reply stream releases it when it ends.
                reply = await self._run_local(turn, headers, origin=origin, cloud_error=fallback_error, lock=lock)
                return self._audited(reply, turn, started)
        finally:
            lock.release_unless_handed_on()
        reply = await self._run_cloud(request, turn, conv, health, headers)
        return self._audited(reply, turn, started)

    def _audited(self, reply: Outgoing, turn: Turn, started: float) -> Outgoing:
        """Write the turn's audit record and metrics once the response is complete.

        The record is written just *after* the response leaves (``call_soon``), not before: the
        log line, metrics and store write took about 85 µs per turn in the running server (timed
        there under the c=1 benchmark), all of it between the upstream's answer and the client's.
        The state change a turn makes is already durable before it runs (:meth:`_commit`); what a
        crash in that window can lose is the one turn's record, never a transition. Callbacks run in order on the loop,
        so anything the same server does next — the next request of the session, an admin read —
        sees the record.
        """
        first_byte = time.perf_counter() - started
        if reply.stream is None:
            _soon(self._record_turn, turn, reply.status, first_byte, first_byte)
            return reply
        reply.stream = self._finishing(reply.stream, turn, reply.status, started, first_byte)
        return reply

    async def _finishing(
        self, stream: AsyncIterator[bytes], turn: Turn, status: int, started: float, first_byte: float
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            _soon(self._record_turn, turn, status, first_byte, time.perf_counter() - started)

    def _record_turn(self, turn: Turn, status: int, first_byte: float, duration: float) -> None:
        """The audit trail's turn record: ids, route, counts and timings — never content (DESIGN I6)."""
        data: dict[str, Any] = {
            "request_id": turn.request_id,
            "route": turn.route,
            "reason": turn.reason,
            "status": status,
            "provider": turn.provider,
            "model": turn.model,
            "stream": turn.stream,
            "withheld_blocks": turn.withheld_blocks,
            "withheld_turns": turn.withheld_turns,
            "guard_hits": turn.guard_hits,
            "first_byte_ms": round(first_byte * 1000, 3),
            "duration_ms": round(duration * 1000, 3),
        }
        if turn.memory is not None:
            data["memory"] = turn.memory.layers
        conversation = conversation_to_dict(turn.conversation) if turn.conversation is not None else None
        self.store.write(turn.session, self.clock(), conversation, [("turn", data)])
        self.metrics.requests.labels(turn.route, str(status)).inc()
        self.metrics.first_byte.labels(turn.route).observe(first_byte)
        self.metrics.duration.labels(turn.route).observe(duration)
        if turn.reason in ("quota", "offline"):
            self.metrics.fallbacks.labels(turn.reason).inc()
        log.info(
            "turn", session=turn.session, **{k: v for k, v in data.items() if k != "memory"}, memory=data.get("memory")
        )

    def _continuation_route(self, messages: Sequence[JSON]) -> Route | None:
        """A tool loop keeps its turn's route: local when the tool calls it answers were local."""
        answered = _answered_tool_calls(messages)
        if answered is None:
            return None
        index = self.ledger.index
        return "local" if any(index.tool_origin(ref) is not None for ref in answered) else "cloud"

    def _local_origin(self, controls: Controls, continuation: Route | None, messages: Sequence[JSON]) -> Origin:
        """Forced when the user asked for it — now, or when the tool loop this request continues began.

        A loop's origin comes from its tool calls' records, never from the conversation's state at
        the time: another request of the session may have released the state in between.
        """
        if controls.force_local:
            return "forced"
        if continuation == "local":
            answered = _answered_tool_calls(messages) or []
            if any(self.ledger.index.tool_origin(ref) == "forced" for ref in answered):
                return "forced"
        return "fallback"

    def _apply(
        self, conv: Conversation, plan: Plan, turn: Turn, health: Health, *, new_turn: bool
    ) -> list[TransitionRecord]:
        now = self.clock()
        if new_turn:
            conv.turns += 1
        records = []
        for event in plan.events:
            record = fire(conv, event, reason=plan.reason, at=now, request_id=turn.request_id, health=health, turn=turn)
            if record is not None:
                records.append(record)
        conv.turn_route, conv.turn_reason = plan.route, plan.reason
        return records

    def _fallback(self, conv: Conversation, event: str, turn: Turn, reason: str) -> None:
        record = fire(conv, event, reason=reason, at=self.clock(), request_id=turn.request_id, turn=turn)
        conv.turn_route, conv.turn_reason = "local", reason
        turn.route, turn.reason = "local", reason
        if turn.memory is None:
            turn.compact()
        turn.conversation = None
        self._commit(conv, [record] if record is not None else [])

    def _commit(self, conv: Conversation, records: Sequence[TransitionRecord]) -> None:
        """The conversation and its new transitions, durably, in one transaction."""
        self.store.write(
            conv.id,
            self.clock(),
            conversation_to_dict(conv),
            [("transition", attrs.asdict(record)) for record in records],
        )
        for record in records:
            self.metrics.transitions.labels(record.event).inc()
            log.info(
                "transition",
                session=conv.id,
                trooper_event=record.event,
                source=record.source,
                dest=record.dest,
                reason=record.reason,
                request_id=record.request_id,
            )

    def _load(self, session: str) -> Conversation:
        data = self.store.load_conversation(session)
        return conversation_from_dict(data) if data else Conversation(id=session)

    def _health_key(self, headers: LowerHeaders) -> str:
        credential = headers.get("x-api-key") or headers.get("authorization") or ""
        digest = hashlib.blake2b(credential.encode(), digest_size=8).hexdigest()
        return f"{getattr(self.cloud, 'base_url', self.cloud.name)}#{digest}"

    def _trooper_headers(self, conv: Conversation, turn: Turn) -> list[tuple[str, str]]:
        headers = [
            ("x-trooper-route", turn.route),
            ("x-trooper-state", conv.state),
            ("x-trooper-session", conv.id),
            ("x-trooper-reason", turn.reason),
            ("x-trooper-request-id", turn.request_id),
        ]
        if turn.memory is not None:
            headers.append(("x-trooper-memory", turn.memory.header()))
        return headers

    # ---------------------------------------------------------------------------------- cloud

    def cloud_payload(
        self, read: _Read, lineage: Lineage | Callable[[], Lineage], raw: bytes
    ) -> tuple[bytes, CloudPlan] | Blocked:
        """The exact bytes the cloud receives: the original ones unless something must change.

        With nothing local in the ledger there is nothing to withhold and nothing to guard: the
        lineage is not even walked, and the original bytes go out.
        """
        locality = self.config.locality
        if not self.ledger.index.holds_local and not locality.protect_client_context:
            untouched = CloudPlan(read.messages, read.body.get("system", NO_SYSTEM), False)
            if not TROOPER_FIELDS & read.body.keys():
                return raw, untouched
            return orjson.dumps({k: v for k, v in read.body.items() if k not in TROOPER_FIELDS}), untouched
        plan = plan_cloud(
            read.body,
            read.messages,
            lineage if isinstance(lineage, Lineage) else lineage(),
            self.ledger.index,
            session=read.session,
            notice=locality.withheld_notice,
            egress_action=locality.egress_action,
            protect_context=locality.protect_client_context,
        )
        if isinstance(plan, Blocked):
            return plan
        if not plan.changed and not (TROOPER_FIELDS & read.body.keys()):
            return raw, plan
        out = {k: v for k, v in read.body.items() if k not in TROOPER_FIELDS}
        if plan.changed:
            out["messages"] = plan.messages
            if plan.system is not read.body.get("system", NO_SYSTEM):
                if plan.system is NO_SYSTEM or plan.system == []:
                    out.pop("system", None)
                else:
                    out["system"] = plan.system
        return orjson.dumps(out), plan

    async def _run_cloud(
        self, request: Incoming, turn: Turn, conv: Conversation, health: CloudHealth, headers: list[tuple[str, str]]
    ) -> Outgoing:
        turn.provider, turn.model = self.cloud.name, str(turn.body.get("model", ""))
        read = _Read(turn.body, turn.messages, LowerHeaders(), turn.controls, turn.session)
        planned = self.cloud_payload(read, lambda: turn.lineage, request.body)
        if isinstance(planned, Blocked):
            self.store.audit_append(
                conv.id,
                self.clock(),
                "egress_guard",
                {"request_id": turn.request_id, "action": "block", "hits": list(planned.paths)},
            )
            self.metrics.guard_hits.labels("block").inc()
            log.warning("egress_blocked", session=conv.id, request_id=turn.request_id, hits=len(planned.paths))
            return _error(TrooperError("permission_error", planned.message, status=403), headers)
        payload, plan = planned
        turn.withheld_blocks, turn.withheld_turns = plan.withheld_blocks + plan.vetted_blocks, plan.withheld_turns
        turn.guard_hits = len(plan.guard_hits)
        if turn.withheld_blocks:
            self.metrics.withheld.inc(turn.withheld_blocks)
        if plan.guard_hits:
            action = self.config.locality.egress_action
            self.metrics.guard_hits.labels(action).inc(len(plan.guard_hits))
            self.store.audit_append(
                conv.id,
                self.clock(),
                "egress_guard",
                {"request_id": turn.request_id, "action": action, "hits": list(plan.guard_hits)},
            )
        upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, payload)
        try:
            response, first = await self._first_bytes(upstream)
        except (QuotaExhausted, Unreachable, Overloaded) as exc:
            health.last_failure = exc.with_traceback(None)  # keep the answer, not the request's frames
            now = self.clock()
            if isinstance(exc, QuotaExhausted):
                health.observe_quota(now, exc.retry_after, exc.message)
                event, reason = "quota_hit", "quota"
            else:
                health.observe_unreachable(now, exc.message)
                event, reason = "connection_lost", "offline"
            if self.local is None:
                return self._provider_error(exc, headers)
            lock = _ConversationLock(self._locks, conv.id)
            await lock.acquire()
            try:
                fresh = self._load(conv.id)
                if turn.conversation is not None:  # this turn's counter was not saved yet
                    fresh.turns = max(fresh.turns, turn.conversation.turns)
                conv = fresh
                self._fallback(conv, event, turn, reason)
                return await self._run_local(
                    turn, self._trooper_headers(conv, turn), origin="fallback", cloud_error=exc, lock=lock
                )
            finally:
                lock.release_unless_handed_on()
        except (AuthError, BadRequest, ProviderError) as exc:
            return self._provider_error(exc, headers)
        health.observe_ok()
        if self.local is not None:  # calibration, not routing: after the response, like the turn record
            _soon(self._learn_tokens, turn, plan, first)
        _soon(self._remember_cloud, turn, plan)
        out_headers = _forwardable(response.headers) + headers
        if not response.sse:  # read whole already: one write, no relay generator
            await response.aclose()
            return Outgoing(response.status, out_headers, first[0])
        return Outgoing(response.status, out_headers, stream=self._relay(response, first))

    def _remember_cloud(self, turn: Turn, plan: CloudPlan) -> None:
        """Where the cloud has now received messages: later requests trust them without scanning.

        After the response, and best effort: a sighting that is lost only means the same history is
        vetted again next time.
        """
        protect = self.config.locality.protect_client_context
        if not self.ledger.index.holds_local and not protect:
            return
        records = cloud_sightings(
            turn.body,
            turn.messages,
            turn.lineage,
            self.ledger.index,
            plan,
            session=turn.session,
            protect_context=self.config.locality.protect_client_context,
        )
        try:
            self.ledger.append(records)
        except LedgerUnavailable as exc:
            log.warning("cloud_sightings_not_recorded", session=turn.session, error=str(exc))

    def _learn_tokens(self, turn: Turn, plan: CloudPlan, first: Sequence[bytes]) -> None:
        """Feed the cloud's exact input count to this conversation's token estimator."""
        tokens = input_tokens(first[0] if first else b"", turn.stream)
        if tokens is not None:
            self.memory.observe(turn.session, plan.messages, tokens)

    async def _first_bytes(self, upstream: UpstreamRequest) -> tuple[_Prefetched, list[bytes]]:
        """Send (retrying 529/5xx with back-off) and read up to the first chunk a client would see.

        Until the client has received a byte, any failure can still be answered by a fallback: a
        non-streaming body is read whole (it is small), a stream up to its first chunk (which the
        client would be waiting for anyway), so a connection reset there is still a clean fallback.
        """
        settings = self.config.anthropic
        pause = settings.overload_backoff
        for attempt in range(settings.overload_retries + 1):
            try:
                response = await self.cloud.send(upstream)
            except Overloaded:
                if attempt == settings.overload_retries:
                    raise
                await asyncio.sleep(pause)
                pause *= 2
                continue
            try:
                if _is_sse(response.headers):
                    chunks = response.aiter_raw()
                    first = [await anext(chunks, b"")]
                    return _Prefetched(response, chunks, sse=True), first
                return _Prefetched(response, None, sse=False), [await response.aread()]
            except ProviderError:
                await response.aclose()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _relay(self, response: UpstreamResponse, first: Sequence[bytes] = ()) -> AsyncIterator[bytes]:
        """Relay upstream bytes as they arrive; a failure mid-stream becomes an SSE error event."""
        is_sse = _is_sse(response.headers)
        try:
            for chunk in first:
                if chunk:
                    yield chunk
            async for chunk in response.aiter_raw():
                yield chunk
        except ProviderError as exc:
            log.warning("cloud_stream_broken", error=exc.message)
            if is_sse:
                yield encode_sse(error_payload("api_error", f"upstream stream failed: {exc.message}"))
        finally:
            await response.aclose()

    def _provider_error(self, exc: ProviderError, headers: Sequence[tuple[str, str]]) -> Outgoing:
        """The provider's own error response verbatim, or a Trooper error when there was none."""
        if exc.status is not None and exc.body is not None:
            kept = _forwardable(exc.headers)
            return Outgoing(exc.status, kept + list(headers), exc.body)
        status = 502 if isinstance(exc, Unreachable) else 500
        error = TrooperError(exc.error_type if exc.status else "api_error", exc.message, status=status)
        return _error(error, [*headers, ("x-should-retry", "false")] if status == 502 else headers)

    # ---------------------------------------------------------------------------------- local

    async def _run_local(
        self,
        turn: Turn,
        headers: list[tuple[str, str]],
        *,
        origin: Origin,
        cloud_error: ProviderError | None,
        lock: _ConversationLock,
    ) -> Outgoing:
        """Answer locally. Forced turns fail closed; fallback turns show the cloud's error if local fails.

        What the turn received is recorded before the local model sees it, and what the reply says
        before the client sees it (write-ahead, event by event): a stream cut at any point — by the
        client, by the model, by a crash — leaves in the ledger at least everything the client got.
        """
        if self.local is None:
            return self._local_failed(turn, headers, cloud_error, ProviderError("no local provider is configured"))
        locality = self.config.locality
        records, recorder = record_local_turn(
            turn.body,
            turn.messages,
            turn.lineage,
            self.ledger.index,
            session=turn.session,
            origin=origin,
            shareable=origin == "fallback" and locality.share_fallback_after_recovery,
            marker=locality.marker if turn.controls.source == "marker" else None,
            protect_context=locality.protect_client_context,
        )
        try:
            self.ledger.append(records)
        except LedgerUnavailable as exc:
            return _error(_ledger_down(exc), headers)
        memory = turn.memory
        if memory is None:
            return self._local_failed(
                turn,
                headers,
                cloud_error,
                BadRequest(f"the conversation does not fit the local model's context: {turn.memory_error}"),
            )
        local_body = {k: v for k, v in turn.body.items() if k not in TROOPER_FIELDS}
        local_body["messages"] = memory.messages
        if memory.max_tokens is not None:
            local_body["max_tokens"] = memory.max_tokens
        turn.provider, turn.model = self.local.name, self.config.ollama.model
        request = LocalRequest(local_body, model=self.config.ollama.model, stream=turn.stream, num_ctx=memory.num_ctx)
        events = self.local.events(request)
        try:
            first = await anext(events)
        except (ProviderError, StopAsyncIteration) as exc:
            failure = exc if isinstance(exc, ProviderError) else ProviderError("local provider sent nothing")
            return self._local_failed(turn, headers, cloud_error, failure)
        if turn.stream:
            headers = [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                *headers,
            ]
            return Outgoing(200, headers, stream=self._local_stream(turn, first, events, recorder, lock.hand_on()))
        accumulator = MessageAccumulator()
        try:
            event: JSON | None = first
            while event is not None:
                self.ledger.append(recorder.feed(event))
                accumulator.feed(event)
                event = await anext(events, None)
        except ProviderError as exc:
            return self._local_failed(turn, headers, cloud_error, exc)
        except LedgerUnavailable as exc:
            return _error(_ledger_down(exc), headers)
        finally:
            await _close(events)
        body = orjson.dumps(accumulator.message)
        return Outgoing(200, [("content-type", "application/json"), *headers], body)

    async def _local_stream(
        self,
        turn: Turn,
        first: JSON,
        events: AsyncIterator[JSON],
        recorder: ReplyRecorder,
        release: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        """SSE from local events, each one ledgered before it is sent.

        Cancelled when the client goes away (the server cancels the stream): the local generation is
        closed with it, and the conversation's lock is released, so the next request of the
        conversation runs knowing exactly what the client received.
        """
        try:
            event: JSON | None = first
            while event is not None:
                self.ledger.append(recorder.feed(event))
                yield encode_sse(event)
                event = await anext(events, None)
        except ProviderError as exc:
            log.warning(
                "local_stream_broken",
                session=turn.session,
                error_type=type(exc).__name__,
                error_length=len(exc.message),
            )
            error_type = exc.error_type if exc.error_type != "invalid_request_error" else "api_error"
            yield encode_sse(error_payload(error_type, f"local model failed: {exc.message}"))
        except LedgerUnavailable as exc:
            log.error("local_stream_stopped", session=turn.session, error=str(exc))
            yield encode_sse(error_payload("api_error", _ledger_down(exc).message))
        finally:
            await _close(events)
            release()

    def _local_failed(
        self,
        turn: Turn,
        headers: list[tuple[str, str]],
        cloud_error: ProviderError | None,
        failure: ProviderError,
    ) -> Outgoing:
        # A local model's error text may quote what it was given or said: log its kind and size only.
        log.warning(
            "local_failed",
            session=turn.session,
            request_id=turn.request_id,
            error_type=type(failure).__name__,
            error_length=len(failure.message),
            fallback=cloud_error is not None,
        )
        self.store.audit_append(
            turn.session,
            self.clock(),
            "local_failed",
            {"request_id": turn.request_id, "reason": turn.reason, "error": type(failure).__name__},
        )
        if cloud_error is not None:  # a fallback turn: the client sees what the cloud said
            return self._provider_error(cloud_error, headers)
        error_type = (
            failure.error_type if failure.error_type in ("not_found_error", "invalid_request_error") else "api_error"
        )
        status = {"not_found_error": 404, "invalid_request_error": 400}.get(error_type, 503)
        message = f"this turn must run locally and the local provider could not answer: {failure.message}"
        return _error(TrooperError(error_type, message, status=status), [*headers, ("x-should-retry", "false")])

    # ---------------------------------------------------------------------------------- other

    async def count_tokens(self, request: Incoming) -> Outgoing:
        """Counted by the cloud on the filtered payload; estimated locally when the cloud cannot or may not.

        Counting sends the conversation, so it obeys locality like a turn would, whatever session it
        names: a request carrying a local control, continuing a local tool loop, or of a conversation
        that is local right now is estimated here; any other is filtered as a turn would be, and one
        the egress guard would refuse is estimated rather than refused.
        """
        read = self._read(request)
        body = read.body
        self._refresh()
        if (
            read.controls.force_local
            or self._continuation_route(read.messages) == "local"
            or self._load(read.session).state == "local"
        ):
            return self._estimate_tokens(body)
        planned = self.cloud_payload(read, functools.partial(self._walk, read), request.body)
        if isinstance(planned, Blocked):
            return self._estimate_tokens(body)
        payload, _ = planned
        upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, payload)
        try:
            response = await self.cloud.send(upstream)
        except (QuotaExhausted, Unreachable, Overloaded):
            return self._estimate_tokens(body)
        except ProviderError as exc:
            return self._provider_error(exc, [])
        data = await response.aread()
        await response.aclose()
        kept = _forwardable(response.headers)
        return Outgoing(response.status, kept, data)

    def _estimate_tokens(self, body: JSON) -> Outgoing:
        tokens = self.memory.estimate_request(body)
        return Outgoing(
            200,
            [("content-type", "application/json"), ("x-trooper-estimate", "true")],
            orjson.dumps({"input_tokens": tokens}),
        )

    async def forward(self, request: Incoming) -> Outgoing:
        """Pass a request through unchanged (``GET /v1/models``)."""
        upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, request.body)
        try:
            response = await self.cloud.send(upstream)
        except ProviderError as exc:
            return self._provider_error(exc, [])
        kept = _forwardable(response.headers)
        return Outgoing(response.status, kept, stream=self._relay(response))

    def _start_probe(self, health: CloudHealth, headers: Sequence[tuple[str, str]], body: JSON) -> asyncio.Task[None]:
        """The probe for this upstream and credential: one in flight at a time, shared by every turn."""
        if health.probe is None or health.probe.done():
            health.probe = asyncio.ensure_future(self._probe(health, headers, body))
        return health.probe

    async def _probe(self, health: CloudHealth, headers: Sequence[tuple[str, str]], body: JSON) -> None:
        """A call that costs no tokens: count_tokens on a one-word prompt, with the caller's credentials.

        Only the credential and ``anthropic-*`` headers are sent: the probe is Trooper's request, and
        nothing else of the turn that triggered it belongs in it.
        """
        health.last_probe = self.clock()
        probe = orjson.dumps(
            {"model": body.get("model", "claude-sonnet-4-5"), "messages": [{"role": "user", "content": "ping"}]}
        )
        kept = [
            (k, v)
            for k, v in headers
            if k.lower() in ("x-api-key", "authorization") or k.lower().startswith("anthropic-")
        ]
        kept.append(("content-type", "application/json"))
        try:
            async with asyncio.timeout(self.config.anthropic.probe_timeout):
                response = await self.cloud.send(UpstreamRequest("POST", "/v1/messages/count_tokens", "", kept, probe))
                await response.aread()
                await response.aclose()
        except TimeoutError:
            health.observe_unreachable(self.clock(), "health probe timed out")
            return
        except QuotaExhausted as exc:
            health.observe_quota(self.clock(), exc.retry_after, exc.message)
            return
        except (Unreachable, Overloaded) as exc:
            health.observe_unreachable(self.clock(), exc.message)
            return
        except ProviderError:
            pass  # the probe's own request was refused: the cloud answers, so let the turn try
        health.observe_ok()
        log.info("cloud_recovered", upstream=getattr(self.cloud, "base_url", self.cloud.name))

    def health_snapshot(self) -> dict[str, Any]:
        """Cloud health per upstream and credential; credentials appear only as a short hash."""
        return {key: value.snapshot() for key, value in self._health.items()}

    async def health_report(self) -> dict[str, Any]:
        """Cloud health, whether the local provider answers, and whether the store does."""
        local: dict[str, Any] = {
            "provider": _provider_name(self.local),
            "model": self.config.ollama.model,
            "context_tokens": self.memory.context_tokens,
        }
        check = getattr(self.local, "health", None)
        if check is not None:
            try:
                local["up"] = bool(await asyncio.wait_for(check(), timeout=5))
            except (TimeoutError, ProviderError):
                local["up"] = False
        try:
            self.store.list_conversations(1)
            store: dict[str, Any] = {"ok": True, "kind": type(self.store).__name__}
        except Exception as exc:  # any store failure is what this report is for
            store = {"ok": False, "kind": type(self.store).__name__, "error": type(exc).__name__}
        return {
            "status": "ok",
            "cloud": {"provider": self.cloud.name, "upstreams": self.health_snapshot()},
            "local": local,
            "store": store,
            "uptime_seconds": round(self.clock() - self.started_at, 3),
        }

    def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {
                "id": data["id"],
                "state": data.get("state"),
                "turns": data.get("turns", 0),
                "transitions": data.get("transitions", 0),
                "last_activity": data.get("updated"),
            }
            for data in self.store.list_conversations(limit)
        ]

    def session_report(self, session: str) -> dict[str, Any] | None:
        data = self.store.load_conversation(session)
        if data is None:
            return None
        conv = conversation_from_dict(data)
        transitions = [e for e in self.store.audit(session) if e["kind"] == "transition"]
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

    def session_graph(self, session: str, fmt: Literal["mermaid", "dot"]) -> str | None:
        data = self.store.load_conversation(session)
        if data is None:
            return None
        from trooper.graph import render

        return render(fmt, conversation_from_dict(data), title=f"Trooper conversation {session}")

    def prune(self) -> dict[str, int]:
        """Apply the retention policy; ledger entries are never pruned (DESIGN I5)."""
        retention = self.config.retention
        older = (self.clock() - retention.max_age_days * 86400) if retention.max_age_days is not None else None
        removed = self.store.prune(
            older_than=older, max_sessions=retention.max_sessions, max_audit_per_session=retention.max_audit_per_session
        )
        if any(removed.values()):
            log.info("pruned", **removed)
        return removed

    # ------------------------------------------------------------------------------- embedding

    async def create(
        self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> tuple[int, JSON, dict[str, str]]:
        """Embedding API: one non-streaming Messages call; returns ``(status, json, headers)``."""
        payload = {**body}
        payload.pop("stream", None)
        reply = await self.handle(
            Incoming("POST", "/v1/messages", "", list((headers or {}).items()), orjson.dumps(payload))
        )
        data = reply.body
        if reply.stream is not None:
            data = b"".join([chunk async for chunk in reply.stream])
        return reply.status, orjson.loads(data), {k.lower(): v for k, v in reply.headers}


def input_tokens(chunk: bytes, sse: bool) -> int | None:
    """Total input tokens (cache reads and writes included) from a response's first bytes, if there."""
    try:
        if sse:
            for event, data in SSEDecoder().feed(chunk):
                if event == "message_start":
                    usage = orjson.loads(data)["message"]["usage"]
                    break
            else:
                return None
        else:
            usage = orjson.loads(chunk)["usage"]
        return (
            int(usage.get("input_tokens", 0))
            + int(usage.get("cache_read_input_tokens") or 0)
            + int(usage.get("cache_creation_input_tokens") or 0)
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _is_sse(headers: Sequence[tuple[str, str]]) -> bool:
    return any(len(k) == 12 and k.lower() == "content-type" and "text/event-stream" in v for k, v in headers)


def _soon(callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback`` right after the current step of the event loop (at once when there is none)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback(*args)
        return
    loop.call_soon(callback, *args)


class _Prefetched:
    """An upstream response whose first bytes were already read: the rest continues the same stream."""

    def __init__(self, response: UpstreamResponse, rest: AsyncIterator[bytes] | None, *, sse: bool) -> None:
        self._response = response
        self._rest = rest
        self.sse = sse
        self.status = response.status
        self.headers = response.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._rest is not None:
            async for chunk in self._rest:
                yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        await self._response.aclose()


def parse_body(raw: bytes) -> JSON:
    """The request body as a dict, or a 400 that says what is wrong with it."""
    if not raw:
        raise invalid_request("request body is empty: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_request(f"request body must be a JSON object, got {type(body).__name__}")
    return body


#: Top-level fields Trooper reads, and the JSON types it can work with.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "system": ((str, list), "a string or a list of text blocks"),
    "stream": ((bool,), "a boolean"),
    "tools": ((list,), "a list of tools"),
    "metadata": ((dict,), "an object"),
    "max_tokens": ((int,), "an integer"),
}


def validate_messages(body: JSON) -> list[JSON]:
    """Check what Trooper reads (``messages`` and a few fields); the rest is for the provider to judge."""
    for field, (types, described) in _FIELD_TYPES.items():
        value = body.get(field)
        if value is not None and (not isinstance(value, types) or (field == "max_tokens" and isinstance(value, bool))):
            raise invalid_request(f"{field}: must be {described}, got {type(value).__name__}")
    for field in ("system", "tools"):
        value = body.get(field)
        if isinstance(value, list):
            for number, item in enumerate(value):
                if not isinstance(item, dict):
                    raise invalid_request(f"{field}.{number}: must be an object")
    messages = body.get("messages")
    if messages is None:
        raise invalid_request("messages: field required")
    if not isinstance(messages, list):
        raise invalid_request(f"messages: must be a list, got {type(messages).__name__}")
    if not messages:
        raise invalid_request("messages: at least one message is required")
    if len(messages) > 100_000:
        raise invalid_request(f"messages: at most 100000 messages are allowed, got {len(messages)}")
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(f"messages.{position}: must be an object")
        if message.get("role") not in MESSAGE_ROLES:
            raise invalid_request(f"messages.{position}.role: must be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if isinstance(content, list):
            for number, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise invalid_request(f"messages.{position}.content.{number}: must be an object with a type")
        elif not isinstance(content, str):
            raise invalid_request(f"messages.{position}.content: must be a string or a list of blocks")
    if not any(message["role"] == "user" for message in messages):
        raise invalid_request("messages: at least one message must have role 'user'")
    return messages


__all__ = ["Engine", "Incoming", "Outgoing", "Turn", "parse_body", "validate_messages"]
