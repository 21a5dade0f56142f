"""A request and a response as bytes: what the server hands the engine, and what it gets back.

The engine is called with these by the HTTP server and by embedders alike, so neither needs the
other's objects: a response is a status, headers, and a whole body or a stream of chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import attrs

from trooper.wire.errors import TrooperError


@attrs.frozen
class Incoming:
    """A request as bytes."""

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


def error_response(exc: TrooperError, extra: Sequence[tuple[str, str]] = ()) -> Outgoing:
    """Trooper's own error, in Anthropic's shape, with its status and extra headers."""
    headers = [("content-type", "application/json"), *exc.headers.items(), *extra]
    return Outgoing(exc.status, headers, exc.body())


__all__ = ["Incoming", "Outgoing", "error_response"]
