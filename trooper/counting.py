"""``count_tokens``: counted by the cloud on what it may receive, estimated here when it may not or cannot.

Counting sends the conversation, so it obeys locality like a turn: a request that is local (a
control, a local tool loop, a conversation that is local now) or that holds local content is
estimated on this machine, and so is one the cloud cannot answer (quota, unreachable). Every answer
says which it was (``x-trooper-route``, ``x-trooper-estimate``, ``x-trooper-reason``).
"""

from __future__ import annotations

import orjson

from trooper import relay, turn
from trooper.context import Memory
from trooper.providers.base import (
    CloudProvider,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    Unreachable,
    UpstreamRequest,
)
from trooper.wire import JSON, Outgoing


async def count_tokens(cloud: CloudProvider, memory: Memory, facts: turn.Facts) -> Outgoing:
    """The answer to one ``count_tokens`` request whose facts (conversation, ledger) are gathered."""
    request, conversation = facts.request, facts.conversation
    known = [("x-trooper-session", conversation.id), ("x-trooper-state", conversation.state)]
    if turn.count_estimated(facts):
        return _estimate(memory, request.body, [*known, ("x-trooper-reason", "local")])
    call = turn.cloud_call(request, turn.LazyLineage(facts), facts.index, facts.locality)
    if isinstance(call, turn.Refuse):
        return _estimate(memory, request.body, [*known, ("x-trooper-reason", "guarded")])
    upstream = UpstreamRequest(request.method, request.path, request.query, request.headers, call.payload)
    headers = [("x-trooper-route", "cloud"), *known, ("x-trooper-reason", "default")]
    try:
        response = await cloud.send(upstream)
    except (QuotaExhausted, Unreachable, Overloaded) as exc:
        reason = "quota" if isinstance(exc, QuotaExhausted) else "offline"
        return _estimate(memory, request.body, [*known, ("x-trooper-reason", reason)])
    except ProviderError as exc:
        return relay.provider_error(exc, headers)
    data = await response.aread()
    await response.aclose()
    return Outgoing(response.status, relay.forwardable(response.headers) + headers, data)


def _estimate(memory: Memory, body: JSON, headers: list[tuple[str, str]]) -> Outgoing:
    """Trooper's own count."""
    return Outgoing(
        200,
        [("content-type", "application/json"), ("x-trooper-estimate", "true"), *headers],
        orjson.dumps({"input_tokens": memory.estimate_request(body)}),
    )


__all__ = ["count_tokens"]
