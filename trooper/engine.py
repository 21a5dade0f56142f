"""The engine: an async driver of the sans-IO turn (:mod:`trooper.turn`), as ``h11.Connection`` drives its state.

For each request it gathers the facts — the ledger refreshed from the store, the cloud's shared health,
the conversation under its lock — asks :func:`trooper.turn.begin` what to do, and does it: commit the
transitions, write the ledger records ahead, call a provider, stream the answer, keep the books. The
HTTP server is a thin layer over :meth:`Engine.handle`; embedders call the same engine with provider
objects and a store of their choosing (``async with Engine(...) as engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import attrs
import orjson
import structlog

from trooper import relay, turn
from trooper.admin import Admin
from trooper.config import Config
from trooper.context import Memory
from trooper.conversation import Conversation, Health, TransitionRecord, conversation_from_dict, conversation_to_dict
from trooper.health import CloudHealth
from trooper.ledger import cloud_sightings
from trooper.metrics import Metrics
from trooper.providers.base import (
    AuthError,
    BadRequest,
    CloudProvider,
    LocalProvider,
    LocalRequest,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    Unreachable,
    UpstreamRequest,
)
from trooper.recorder import Ledger, LedgerUnavailable
from trooper.spans import warm_up
from trooper.store.base import Lease, SessionStore
from trooper.wire import (
    JSON,
    Incoming,
    MessageAccumulator,
    Outgoing,
    TrooperError,
    encode_sse,
    error_payload,
    error_response,
    new_request_id,
)

log = structlog.get_logger("trooper")

#: How long a conversation's lock may be held before another instance may take it (a holder that
#: died mid-turn blocks its conversation no longer than this).
LOCK_TTL = 900.0


class _Held:
    """A conversation's lease, which a local turn hands on to its reply stream (released once)."""

    def __init__(self, lease: Lease) -> None:
        self._lease: Lease | None = lease
        self.handed_on = False

    def hand_on(self) -> Callable[[], Awaitable[None]]:
        self.handed_on = True
        return self.release

    async def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()


def _ledger_down(exc: Exception) -> TrooperError:
    return TrooperError(
        "api_error",
        f"Trooper refused this turn: {exc}, so it cannot check or record what stays local. Try again when the "
        "store is back.",
        status=503,
    )


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config or Config()
        self.cloud, self.local, self.store = cloud, local, store
        self.clock, self.sleep = clock, sleep
        self.ledger = Ledger(store, share_fallback=self.config.locality.share_fallback_after_recovery)
        self.memory = Memory(self.config, local)
        self.metrics = Metrics()
        self.admin = Admin(self, clock)
        self.started_at = clock()
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._health_keys: set[str] = set()
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: Config) -> Engine:
        """Build providers through the entry-point registry and open the configured store."""
        from trooper.providers.registry import build, discover
        from trooper.store import open_store

        factories = discover()
        cloud = build(config.providers.cloud, config, factories)
        local = build(config.providers.local, config, factories) if config.providers.local else None
        if not isinstance(cloud, CloudProvider) or (local is not None and not isinstance(local, LocalProvider)):
            from trooper.config import ConfigError

            raise ConfigError("providers.cloud must name a cloud provider and providers.local a local one")
        # The word list that tells rare words from everyday ones takes a moment to load; load it now,
        # off the event loop, rather than during the first local turn.
        threading.Thread(target=warm_up, name="trooper-vocabulary", daemon=True).start()
        return cls(cloud=cloud, local=local, store=open_store(config.store.path), config=config)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.settle()
        for task in self._probes.values():
            task.cancel()
        await self.cloud.aclose()
        if self.local is not None:
            await self.local.aclose()
        await self.store.close()

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
            return error_response(exc)

    def _read(self, request: Incoming) -> turn.Request:
        return turn.read_request(
            request.method,
            request.path,
            request.query,
            request.headers,
            request.body,
            marker=self.config.locality.marker,
        )

    def _facts(self, request: turn.Request, conversation: Conversation, health: Health) -> turn.Facts:
        return turn.Facts(
            request,
            conversation,
            health if self.local is not None else Health.UP,
            self.clock(),
            new_request_id(),
            self.ledger.index,
            self.config.locality,
            self.local.model if self.local is not None else None,
            self.memory.compact,
        )

    # ------------------------------------------------------------------------------- a turn

    async def messages(self, incoming: Incoming) -> Outgoing:
        request = self._read(incoming)
        await self._refresh()
        await self.memory.prepare()
        key = self._health_key(request)
        health = await self._health(key)
        if health.probe_due(self.clock()):
            probe = self._start_probe(key, health, request)
            local_anyway = request.controls.force_local or (
                turn.continuation_route(request.messages, self.ledger.index) == "local"
            )
            if probe is not None and not local_anyway:
                # This turn could use the cloud: wait (bounded) for the probe to say so. A turn that
                # runs locally anyway never waits on the cloud.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(probe), self.config.anthropic.probe_timeout + 1)
                health = await self._health(key)
        held = _Held(await self.store.lock(request.session, LOCK_TTL))
        try:
            current = self._facts(request, await self._load(request.session), health.status)
            planned = turn.begin(current)
            if planned.records:  # a state change is durable before the turn runs
                await self._commit(planned.conversation, planned.records)
            started = time.perf_counter()
            headers = turn.trooper_headers(planned)
            action = planned.action
            if isinstance(action, turn.Refuse):
                await self._audit(planned, action.audit)
                self.metrics.guard_hits.labels("block").inc()
                log.warning("egress_blocked", session=request.session, request_id=planned.request_id)
                return self._finish(
                    error_response(action.error, headers), planned, started, saved=bool(planned.records)
                )
            if isinstance(action, turn.LocalCall):
                reply = await self._run_local(planned, action, headers, cloud_error=None, held=held)
                return self._finish(reply, planned, started, saved=bool(planned.records))
        finally:
            if not held.handed_on:
                await held.release()
        reply, ended = await self._run_cloud(planned, action, headers, key, health)
        return self._finish(reply, ended, started, saved=bool(ended.records))

    async def _run_cloud(
        self,
        planned: turn.Turn,
        action: turn.CloudCall,
        headers: list[tuple[str, str]],
        key: str,
        health: CloudHealth,
    ) -> tuple[Outgoing, turn.Turn]:
        """Send, relay, remember; on a quota or connection failure before the first byte, the turn
        falls back to the local model and the turn returned is the fallback one."""
        request = planned.request
        planned.provider, planned.model = self.cloud.name, str(request.body.get("model", ""))
        await self._audit(planned, action.audit)
        if action.plan.guard_hits:
            self.metrics.guard_hits.labels(self.config.locality.egress_action).inc(len(action.plan.guard_hits))
        withheld = planned.withheld[0]
        if withheld:
            self.metrics.withheld.inc(withheld)
        upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, action.payload)
        settings = self.config.anthropic
        try:
            response, first = await relay.first_bytes(
                self.cloud,
                upstream,
                retries=settings.overload_retries,
                backoff=settings.overload_backoff,
                sleep=self.sleep,
            )
        except (QuotaExhausted, Unreachable, Overloaded) as exc:
            event = health.observe_failure(self.clock(), exc.with_traceback(None))
            await self.store.health_set(key, health.to_dict())
            if self.local is None:
                return relay.provider_error(exc, headers), planned
            return await self._fall_back(planned, event, exc, health.status)
        except (AuthError, BadRequest, ProviderError) as exc:
            return relay.provider_error(exc, headers), planned
        if health.status is not Health.UP:
            health.observe_ok()
            await self.store.health_set(key, health.to_dict())
        if self.local is not None:  # calibration, not routing: after the response, like the turn record
            _soon(self._learn_tokens, request, action, first)
        _soon(self._remember_cloud, planned, action)
        out_headers = relay.forwardable(response.headers) + headers
        if not response.sse:  # read whole already: one write, no relay generator
            await response.aclose()
            return Outgoing(response.status, out_headers, first[0]), planned
        return Outgoing(response.status, out_headers, stream=relay.relay(response, first)), planned

    async def _fall_back(
        self, planned: turn.Turn, event: str, error: ProviderError, health: Health
    ) -> tuple[Outgoing, turn.Turn]:
        """The cloud failed before answering: the same turn runs locally, under the conversation's lock."""
        session = planned.request.session
        held = _Held(await self.store.lock(session, LOCK_TTL))
        try:
            fresh = self._facts(planned.request, await self._load(session), health)
            fallback = turn.fall_back(planned, attrs.evolve(fresh, request_id=planned.request_id), event)
            await self._commit(fallback.conversation, fallback.records)
            assert isinstance(fallback.action, turn.LocalCall)
            reply = await self._run_local(
                fallback, fallback.action, turn.trooper_headers(fallback), cloud_error=error, held=held
            )
            return reply, fallback
        finally:
            if not held.handed_on:
                await held.release()

    async def _run_local(
        self,
        planned: turn.Turn,
        action: turn.LocalCall,
        headers: list[tuple[str, str]],
        *,
        cloud_error: ProviderError | None,
        held: _Held,
    ) -> Outgoing:
        """Answer locally. Forced turns fail closed; fallback turns show the cloud's error if local fails.

        What the turn received is recorded before the local model sees it, and what the reply says
        before the client sees it (write-ahead, event by event): a stream cut at any point — by the
        client, by the model, by a crash — leaves in the ledger at least everything the client got.
        """
        if self.local is None:
            return await self._local_failed(planned, headers, cloud_error, ProviderError("no local provider"))
        try:
            await self.ledger.append(action.records)
        except LedgerUnavailable as exc:
            return error_response(_ledger_down(exc), headers)
        if action.memory_error is not None:
            unfit = BadRequest(f"the conversation does not fit the local model's context: {action.memory_error}")
            return await self._local_failed(planned, headers, cloud_error, unfit)
        planned.provider, planned.model = self.local.name, self.local.model
        request = LocalRequest(action.body, model=self.local.model, stream=action.stream, num_ctx=action.num_ctx)
        events = self.local.events(request)
        try:
            first = await anext(events)
        except (ProviderError, StopAsyncIteration) as exc:
            failure = exc if isinstance(exc, ProviderError) else ProviderError("local provider sent nothing")
            return await self._local_failed(planned, headers, cloud_error, failure)
        if action.stream:
            sse = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), *headers]
            return Outgoing(200, sse, stream=self._local_stream(planned, action, first, events, held.hand_on()))
        accumulator = MessageAccumulator()
        try:
            event: JSON | None = first
            while event is not None:
                await self.ledger.append(action.recorder.feed(event))
                accumulator.feed(event)
                event = await anext(events, None)
        except ProviderError as exc:
            return await self._local_failed(planned, headers, cloud_error, exc)
        except LedgerUnavailable as exc:
            return error_response(_ledger_down(exc), headers)
        finally:
            await _close(events)
        return Outgoing(200, [("content-type", "application/json"), *headers], orjson.dumps(accumulator.message))

    async def _local_stream(
        self,
        planned: turn.Turn,
        action: turn.LocalCall,
        first: JSON,
        events: AsyncIterator[JSON],
        release: Callable[[], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        """SSE from local events, each one ledgered before it is sent.

        Cancelled when the client goes away (the server cancels the stream): the local generation is
        closed with it and the conversation's lock released, so the next request of the conversation
        runs knowing exactly what the client received.
        """
        try:
            event: JSON | None = first
            while event is not None:
                await self.ledger.append(action.recorder.feed(event))
                yield encode_sse(event)
                event = await anext(events, None)
        except ProviderError as exc:
            log.warning(
                "local_stream_broken",
                session=planned.request.session,
                error_type=type(exc).__name__,
                error_length=len(exc.message),
            )
            error_type = exc.error_type if exc.error_type != "invalid_request_error" else "api_error"
            yield encode_sse(error_payload(error_type, f"local model failed: {exc.message}"))
        except LedgerUnavailable as exc:
            log.error("local_stream_stopped", session=planned.request.session, error=str(exc))
            yield encode_sse(error_payload("api_error", _ledger_down(exc).message))
        finally:
            await _close(events)
            await release()

    async def _local_failed(
        self,
        planned: turn.Turn,
        headers: list[tuple[str, str]],
        cloud_error: ProviderError | None,
        failure: ProviderError,
    ) -> Outgoing:
        # A local model's error text may quote what it was given or said: log its kind and size only.
        log.warning(
            "local_failed",
            session=planned.request.session,
            request_id=planned.request_id,
            error_type=type(failure).__name__,
            error_length=len(failure.message),
            fallback=cloud_error is not None,
        )
        await self._audit(planned, (("local_failed", {"reason": planned.reason, "error": type(failure).__name__}),))
        if cloud_error is not None:  # a fallback turn: the client sees what the cloud said
            return relay.provider_error(cloud_error, headers)
        error_type = (
            failure.error_type if failure.error_type in ("not_found_error", "invalid_request_error") else "api_error"
        )
        status = {"not_found_error": 404, "invalid_request_error": 400}.get(error_type, 503)
        message = f"this turn must run locally and the local provider could not answer: {failure.message}"
        return error_response(TrooperError(error_type, message, status=status), [*headers, ("x-should-retry", "false")])

    # ------------------------------------------------------------------------------- bookkeeping

    async def _refresh(self) -> None:
        """Read what other instances recorded; a ledger that cannot be read refuses the turn."""
        try:
            await self.ledger.refresh()
        except LedgerUnavailable as exc:
            raise _ledger_down(exc) from None

    async def _load(self, session: str) -> Conversation:
        data = await self.store.load_conversation(session)
        return conversation_from_dict(data) if data else Conversation(id=session)

    async def _commit(self, conversation: Conversation, records: Sequence[TransitionRecord]) -> None:
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

    async def _audit(self, planned: turn.Turn, rows: Sequence[tuple[str, JSON]]) -> None:
        if rows:
            data = [(kind, {"request_id": planned.request_id, **row}) for kind, row in rows]
            await self.store.write(planned.request.session, self.clock(), None, data)

    def _finish(self, reply: Outgoing, planned: turn.Turn, started: float, *, saved: bool) -> Outgoing:
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
        data = turn.turn_record(
            planned,
            status=status,
            provider=planned.provider,
            model=planned.model,
            first_byte=first_byte,
            duration=duration,
        )
        saved = conversation_to_dict(conversation) if conversation is not None else None
        self._later(self.store.write(planned.request.session, self.clock(), saved, [("turn", data)]))
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

    def _learn_tokens(self, request: turn.Request, action: turn.CloudCall, first: Sequence[bytes]) -> None:
        """Feed the cloud's exact input count to this conversation's token estimator."""
        tokens = relay.input_tokens(first[0] if first else b"", request.stream)
        if tokens is not None:
            self.memory.observe(request.session, action.plan.messages, tokens)

    def _remember_cloud(self, planned: turn.Turn, action: turn.CloudCall) -> None:
        """Where the cloud has now received messages, so later requests trust them without scanning.

        After the response, and best effort: a sighting that is lost only means the same history is
        vetted again next time.
        """
        protect = self.config.locality.protect_client_context
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
            self._later(self.ledger.append(records))

    def _later(self, work: Awaitable[None]) -> None:
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

    # ------------------------------------------------------------------------------- health

    def _health_key(self, request: turn.Request) -> str:
        credential = request.lookup.get("x-api-key") or request.lookup.get("authorization") or ""
        digest = hashlib.blake2b(credential.encode(), digest_size=8).hexdigest()
        key = f"{self.cloud.name}@{getattr(self.cloud, 'base_url', '')}#{digest}"
        self._health_keys.add(key)
        return key

    async def _health(self, key: str) -> CloudHealth:
        try:
            data = await self.store.health_get(key)
        except Exception as exc:  # the store is down: so is the ledger; refuse rather than guess
            raise _ledger_down(exc) from None
        return CloudHealth.from_dict(data) if data else CloudHealth()

    @property
    def health_keys(self) -> frozenset[str]:
        """The upstream + credential keys this engine has seen (their health lives in the store)."""
        return frozenset(self._health_keys)

    async def health_snapshot(self) -> dict[str, Any]:
        """Cloud health per upstream and credential; credentials appear only as a short hash."""
        return {key: (await self._health(key)).snapshot() for key in sorted(self._health_keys)}

    def _start_probe(self, key: str, health: CloudHealth, request: turn.Request) -> asyncio.Task[None] | None:
        """The recovery probe for this upstream and credential: one in flight across all instances."""
        running = self._probes.get(key)
        if running is not None and not running.done():
            return running
        task = asyncio.ensure_future(self._probe(key, health, request))
        self._probes[key] = task
        return task

    async def _probe(self, key: str, health: CloudHealth, request: turn.Request) -> None:
        timeout = self.config.anthropic.probe_timeout
        claim = f"probe:{key}"
        if not await self.store.claim(claim, timeout + 1):
            return  # another instance probes right now
        try:
            await self._send_probe(key, health, request, seconds=timeout)
        finally:
            await self.store.unclaim(claim)

    async def _send_probe(self, key: str, health: CloudHealth, request: turn.Request, *, seconds: float) -> None:
        health.last_probe = self.clock()
        try:
            async with asyncio.timeout(seconds):
                await self.cloud.probe(request.headers, str(request.body.get("model", "claude-sonnet-4-5")))
        except TimeoutError:
            health.observe_unreachable(self.clock(), "health probe timed out")
        except (QuotaExhausted, Unreachable, Overloaded) as exc:
            health.observe_failure(self.clock(), exc)
        except ProviderError:
            health.observe_ok()  # the cloud answers: let the turn try
        else:
            health.observe_ok()
            log.info("cloud_recovered", upstream=key.split("#", 1)[0])
        await self.store.health_set(key, health.to_dict())

    # ------------------------------------------------------------------------------- other endpoints

    async def count_tokens(self, incoming: Incoming) -> Outgoing:
        """Counted by the cloud on the filtered payload; estimated here when the cloud cannot or may not."""
        request = self._read(incoming)
        await self._refresh()
        facts = self._facts(request, await self._load(request.session), Health.UP)
        if turn.count_estimated(facts):
            return self._estimate_tokens(request.body)
        call = turn.cloud_call(request, turn.LazyLineage(facts), self.ledger.index, self.config.locality)
        if isinstance(call, turn.Refuse):
            return self._estimate_tokens(request.body)
        upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, call.payload)
        try:
            response = await self.cloud.send(upstream)
        except (QuotaExhausted, Unreachable, Overloaded):
            return self._estimate_tokens(request.body)
        except ProviderError as exc:
            return relay.provider_error(exc, [])
        data = await response.aread()
        await response.aclose()
        return Outgoing(response.status, relay.forwardable(response.headers), data)

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
            return relay.provider_error(exc, [])
        return Outgoing(response.status, relay.forwardable(response.headers), stream=relay.relay(response))

    async def create(
        self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> tuple[int, JSON, dict[str, str]]:
        """Embedding API: one non-streaming Messages call; returns ``(status, json, headers)``."""
        payload = {k: v for k, v in body.items() if k != "stream"}
        reply = await self.handle(
            Incoming("POST", "/v1/messages", "", list((headers or {}).items()), orjson.dumps(payload))
        )
        data = reply.body
        if reply.stream is not None:
            data = b"".join([chunk async for chunk in reply.stream])
        return reply.status, orjson.loads(data), {k.lower(): v for k, v in reply.headers}


async def _close(events: AsyncIterator[JSON]) -> None:
    closing = getattr(events, "aclose", None)
    if closing is not None:
        with contextlib.suppress(Exception):
            await closing()


def _soon(callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback`` right after the current step of the event loop (at once when there is none)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback(*args)
        return
    loop.call_soon(callback, *args)


__all__ = ["Engine", "Incoming", "Outgoing"]
