"""A local turn, run: the records written ahead, the local model called, its reply streamed and ledgered.

Write-ahead is the point of this module. What a local turn received is in the ledger before the
local model sees it, and each event of the reply is in the ledger before the client receives it, so
that a stream cut at any point — by the client, by the model, by a crash — leaves the ledger holding
at least everything the client got. A forced turn whose local model cannot answer fails closed; a
fallback turn whose local model fails shows the cloud's own error instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import structlog

from trooper import relay, turn
from trooper.books import Books
from trooper.providers.base import BadRequest, LocalProvider, LocalRequest, ProviderError
from trooper.recorder import Ledger, LedgerUnavailable, ledger_refusal
from trooper.store.base import Lease
from trooper.wire import JSON, MessageAccumulator, Outgoing, TrooperError, encode_sse, error_payload, error_response

log = structlog.get_logger("trooper")


class Held:
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


class LocalRunner:
    """Runs local turns on one local provider, ledgering as it goes."""

    def __init__(self, local: LocalProvider | None, ledger: Ledger, books: Books) -> None:
        self.local = local
        self.ledger = ledger
        self.books = books

    async def run(
        self,
        planned: turn.Turn,
        action: turn.LocalCall,
        headers: list[tuple[str, str]],
        *,
        cloud_error: ProviderError | None,
        held: Held,
    ) -> Outgoing:
        """Answer locally. Forced turns fail closed; fallback turns show the cloud's error if local fails.

        What the turn received is recorded before the local model sees it, and what the reply says
        before the client sees it (write-ahead, event by event): a stream cut at any point — by the
        client, by the model, by a crash — leaves in the ledger at least everything the client got.
        """
        if self.local is None:
            return await self._failed(planned, headers, cloud_error, ProviderError("no local provider"))
        try:
            await self.ledger.append(action.records)
        except LedgerUnavailable as exc:
            return error_response(ledger_refusal(exc), headers)
        if action.memory_error is not None:
            unfit = BadRequest(f"the conversation does not fit the local model's context: {action.memory_error}")
            return await self._failed(planned, headers, cloud_error, unfit)
        planned.provider, planned.model = self.local.name, self.local.model
        request = LocalRequest(action.body, model=self.local.model, stream=action.stream, num_ctx=action.num_ctx)
        events = self.local.events(request)
        try:
            first = await anext(events)
        except (ProviderError, StopAsyncIteration) as exc:
            failure = exc if isinstance(exc, ProviderError) else ProviderError("local provider sent nothing")
            return await self._failed(planned, headers, cloud_error, failure)
        if action.stream:
            sse = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), *headers]
            return Outgoing(200, sse, stream=self._stream(planned, action, first, events, held.hand_on()))
        accumulator = MessageAccumulator()
        try:
            event: JSON | None = first
            while event is not None:
                await self.ledger.append(action.recorder.feed(event))
                accumulator.feed(event)
                self.books.learn_local_tokens(planned, event)
                event = await anext(events, None)
        except ProviderError as exc:
            return await self._failed(planned, headers, cloud_error, exc)
        except LedgerUnavailable as exc:
            return error_response(ledger_refusal(exc), headers)
        finally:
            await _close(events)
        return Outgoing(200, [("content-type", "application/json"), *headers], orjson.dumps(accumulator.message))

    async def _stream(
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
                self.books.learn_local_tokens(planned, event)
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
            yield encode_sse(error_payload("api_error", ledger_refusal(exc).message))
        finally:
            await _close(events)
            await release()

    async def _failed(
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
        await self.books.audit(
            planned, (("local_failed", {"reason": planned.reason, "error": type(failure).__name__}),)
        )
        if cloud_error is not None:  # a fallback turn: the client sees what the cloud said
            return relay.provider_error(cloud_error, headers)
        error_type = (
            failure.error_type if failure.error_type in ("not_found_error", "invalid_request_error") else "api_error"
        )
        status = {"not_found_error": 404, "invalid_request_error": 400}.get(error_type, 503)
        message = f"this turn must run locally and the local provider could not answer: {failure.message}"
        return error_response(TrooperError(error_type, message, status=status), [*headers, ("x-should-retry", "false")])


async def _close(events: AsyncIterator[JSON]) -> None:
    closing = getattr(events, "aclose", None)
    if closing is not None:
        with contextlib.suppress(Exception):
            await closing()


__all__ = ["Held", "LocalRunner"]
