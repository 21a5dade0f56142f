"""A request and a response as bytes: what the server hands the engine, and what it gets back.

The engine is called with these by the HTTP server and by embedders alike, so neither needs the
other's objects: a response is a status, headers, and a whole body or a stream of chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import attrs

from trooper.wire.errors import TrooperError, new_request_id

#: What ``x-trooper-route`` says when Trooper answered itself (its own error, a token estimate) and
#: neither model received anything.
ANSWERED_BY_TROOPER = "none"


@attrs.frozen
class Incoming:
    """A request as bytes."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""
    #: The id every response, log line and audit row of this request carries.
    request_id: str = attrs.field(factory=new_request_id)


@attrs.define
class Outgoing:
    """A response as bytes: a full body or a stream of chunks."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def error_response(exc: TrooperError, extra: Sequence[tuple[str, str]] = ()) -> Outgoing:
    """Trooper's own error, in Anthropic's shape, with its status and extra headers."""
    headers = [("content-type", "application/json"), *exc.headers.items(), *extra]
    return Outgoing(exc.status, headers, exc.body())


def stamped(reply: Outgoing, request_id: str) -> Outgoing:
    """``reply`` with the ``x-trooper-*`` headers every API response carries, where it lacks them.

    A turn's response has its route, state, session and reason already; anything else Trooper
    answers — its own errors, a token count, the model list — still says which request it was and
    where it went, so a client can tell Trooper's answers from the cloud's without guessing.
    """
    names = {name.lower() for name, _ in reply.headers}
    if "x-trooper-route" not in names:
        reply.headers.append(("x-trooper-route", ANSWERED_BY_TROOPER))
    if "x-trooper-request-id" not in names:
        reply.headers.append(("x-trooper-request-id", request_id))
    return reply


__all__ = ["ANSWERED_BY_TROOPER", "Incoming", "Outgoing", "error_response", "stamped"]
