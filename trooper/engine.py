"""The engine: an async driver of the sans-IO turn (:mod:`trooper.turn`), as ``h11.Connection`` drives its state.

For each request it gathers the facts — the ledger refreshed from the store, the cloud's shared health,
the conversation under its lock — asks :func:`trooper.turn.begin` what to do, and does it: commit the
transitions, call a provider, stream the answer. Running a local turn (:mod:`trooper.local_run`), the
books (:mod:`trooper.books`), the cloud's health and probe (:mod:`trooper.cloud_watch`), the relay
(:mod:`trooper.relay`) and the admin queries (:mod:`trooper.admin`) are its edges. The HTTP server is a
thin layer over :meth:`Engine.handle`; embedders call the same engine with provider objects and a store
of their choosing (``async with Engine(...) as engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import orjson
import structlog

from trooper import relay, turn
from trooper.admin import Admin
from trooper.books import Books
from trooper.cloud_watch import CloudWatch
from trooper.config import Config
from trooper.context import Memory
from trooper.conversation import Conversation, Health, conversation_from_dict
from trooper.counting import count_tokens
from trooper.health import CloudHealth
from trooper.local_run import Held, LocalRunner
from trooper.memory import ModelSitrep
from trooper.metrics import Metrics
from trooper.providers.base import (
    AuthError,
    BadRequest,
    CloudProvider,
    LocalProvider,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    Unreachable,
    UpstreamRequest,
)
from trooper.recorder import Ledger, LedgerUnavailable, ledger_refusal
from trooper.spans import warm_up
from trooper.store.base import SessionStore, StoreUnavailable
from trooper.summaries import SummaryWriter
from trooper.wire import JSON, Incoming, Outgoing, TrooperError, error_response, stamped

log = structlog.get_logger("trooper")

#: How long a conversation's lock may be held before another instance may take it (a holder that
#: died mid-turn blocks its conversation no longer than this).
LOCK_TTL = 900.0


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
        self.books = Books(
            store, self.ledger, memory=self.memory, metrics=self.metrics, locality=self.config.locality, clock=clock
        )
        self.runner = LocalRunner(local, self.ledger, self.books)
        self.summaries = SummaryWriter(
            self.config.memory, local, store, self.ledger, num_ctx=lambda: self.memory.context_tokens, clock=clock
        )
        self.books.after_local_turn = self._plan_summary
        self.watch = CloudWatch(cloud, store, clock, probe_timeout=self.config.anthropic.probe_timeout)
        self.admin = Admin(self, clock)
        self.started_at = clock()

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
        return cls(cloud=cloud, local=local, store=open_store(config.store), config=config)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write what is owed, stop the probes, close the providers and the store."""
        await self.settle()
        await self.summaries.aclose()
        self.watch.close()
        await self.cloud.aclose()
        if self.local is not None:
            await self.local.aclose()
        await self.store.close()

    async def settle(self) -> None:
        """Wait until the bookkeeping of every response already sent is written."""
        await self.books.settle()

    # ------------------------------------------------------------------------------- dispatch

    async def handle(self, request: Incoming) -> Outgoing:
        """Serve one API request; Trooper's own failures come back in Anthropic's error shape.

        Every response says which request it was and where it went (``x-trooper-request-id``,
        ``x-trooper-route``), whatever answered it.
        """
        return stamped(await self._dispatch(request), request.request_id)

    async def _dispatch(self, request: Incoming) -> Outgoing:
        try:
            if request.path == "/v1/messages" and request.method == "POST":
                return await self.messages(request)
            if request.path == "/v1/messages/count_tokens" and request.method == "POST":
                return await self.count_tokens(request)
            if request.path.startswith("/v1/models") and request.method == "GET":
                return await relay.forward(self.cloud, request)
            raise TrooperError("not_found_error", f"{request.method} {request.path}: no such route")
        except TrooperError as exc:
            return error_response(exc)
        except StoreUnavailable as exc:  # fail closed: nothing was sent that could not be checked
            log.error("store_unavailable", path=request.path, request_id=request.request_id, error=str(exc))
            return error_response(ledger_refusal(exc))

    def _read(self, request: Incoming) -> turn.Request:
        return turn.read_request(
            request.method,
            request.path,
            request.query,
            request.headers,
            request.body,
            marker=self.config.locality.marker,
        )

    def _facts(
        self,
        request: turn.Request,
        conversation: Conversation,
        health: Health,
        request_id: str,
        summaries: tuple[ModelSitrep, ...] = (),
    ) -> turn.Facts:
        compact = self.memory.compact
        if self.summaries.enabled:
            compact = functools.partial(compact, sitrep=self.config.memory.sitrep, summaries=summaries)
        return turn.Facts(
            request,
            conversation,
            health if self.local is not None else Health.UP,
            self.clock(),
            request_id,
            self.ledger.index,
            self.config.locality,
            self.local.model if self.local is not None else None,
            compact,
        )

    def _plan_summary(self, planned: turn.Turn) -> None:
        """After a local turn: ask the local model for the SITREP its compaction says is due."""
        action = planned.action
        due = planned.memory.summary if planned.memory is not None else None
        if due is not None and isinstance(action, turn.LocalCall):
            self.summaries.schedule(planned.request.session, due, action.recorder.base)

    async def _refresh(self) -> None:
        """Read what other instances recorded; a ledger that cannot be read refuses the turn."""
        try:
            await self.ledger.refresh()
        except LedgerUnavailable as exc:
            raise ledger_refusal(exc) from None

    async def _load(self, session: str) -> Conversation:
        data = await self.store.load_conversation(session)
        return conversation_from_dict(data) if data else Conversation(id=session)

    # ------------------------------------------------------------------------------- a turn

    async def messages(self, incoming: Incoming) -> Outgoing:
        request = self._read(incoming)
        # The lock first, then everything read under it: the ledger as of now, the cloud's health, the
        # conversation (a shared store answers all of them with the lock, in one round trip).
        held = Held(await self.store.lock(request.session, LOCK_TTL))
        try:
            await self._refresh()
            await self.memory.prepare()
            key = self.watch.key(request)
            health = await self.watch.health(key)
            local_anyway = request.controls.force_local or (
                turn.continuation_route(request.messages, self.ledger.index) == "local"
            )
            if health.probe_due(self.clock()):
                probe = self.watch.start_probe(key, health, request)
                if probe is not None and not local_anyway:
                    # This turn could use the cloud: wait (bounded) for the probe to say so. A turn that
                    # runs locally anyway never waits on the cloud.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(probe), self.config.anthropic.probe_timeout + 1)
                    health = await self.watch.health(key)
            conversation = await self._load(request.session)
            local = turn.may_run_locally(request, conversation, health.status, self.ledger.index)
            summaries = await self.summaries.load(request.session) if local else ()
            facts = self._facts(request, conversation, health.status, incoming.request_id, summaries)
            planned = turn.begin(facts)
            if planned.records:  # a state change is durable before the turn runs
                await self.books.commit(planned.conversation, planned.records)
            started = time.perf_counter()
            headers = turn.trooper_headers(planned)
            action = planned.action
            if isinstance(action, turn.Refuse):
                await self.books.audit(planned, action.audit)
                self.metrics.guard_hits.labels("block").inc()
                log.warning("egress_blocked", session=request.session, request_id=planned.request_id)
                reply = error_response(action.error, headers)
                return self.books.finish(reply, planned, started, saved=bool(planned.records))
            if isinstance(action, turn.LocalCall):
                reply = await self.runner.run(planned, action, headers, cloud_error=None, held=held)
                return self.books.finish(reply, planned, started, saved=bool(planned.records))
        finally:
            if not held.handed_on:
                await held.release()
        reply, ended = await self._run_cloud(planned, action, headers, key, health)
        return self.books.finish(reply, ended, started, saved=bool(ended.records))

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
        await self.books.audit(planned, action.audit)
        if action.plan.guard_hits:
            self.metrics.guard_hits.labels(self.config.locality.egress_action).inc(len(action.plan.guard_hits))
        if planned.withheld[0]:
            self.metrics.withheld.inc(planned.withheld[0])
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
            await self.watch.save(key, health)
            if self.local is None:
                return relay.provider_error(exc, headers), planned
            return await self._fall_back(planned, event, exc, health.status)
        except (AuthError, BadRequest, ProviderError) as exc:
            return relay.provider_error(exc, headers), planned
        if health.status is not Health.UP:
            health.observe_ok()
            await self.watch.save(key, health)
        if self.local is not None:  # calibration, not routing: after the response, like the turn record
            self.books.learn_tokens(request, action, first)
        self.books.remember_cloud(planned, action)
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
        held = Held(await self.store.lock(session, LOCK_TTL))
        try:
            conversation = await self._load(session)
            summaries = await self.summaries.load(session)
            fresh = self._facts(planned.request, conversation, health, planned.request_id, summaries)
            fallback = turn.fall_back(planned, fresh, event)
            await self.books.commit(fallback.conversation, fallback.records)
            assert isinstance(fallback.action, turn.LocalCall)
            headers = turn.trooper_headers(fallback)
            reply = await self.runner.run(fallback, fallback.action, headers, cloud_error=error, held=held)
            return reply, fallback
        finally:
            if not held.handed_on:
                await held.release()

    # ------------------------------------------------------------------------------- other endpoints

    async def count_tokens(self, incoming: Incoming) -> Outgoing:
        request = self._read(incoming)
        await self._refresh()
        facts = self._facts(request, await self._load(request.session), Health.UP, incoming.request_id)
        return await count_tokens(self.cloud, self.memory, facts)

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


__all__ = ["Engine", "Incoming", "Outgoing"]
