"""What a provider is: the two protocols the engine calls, and the typed errors they raise.

Two shapes, because the two directions have different jobs:

* a **cloud** provider (:class:`CloudProvider`) forwards a request as close to byte-for-byte as
  possible and hands back the upstream's raw response, so cloud turns stay faithful and
  cheap (no re-serialisation on the hot path);
* a **local** provider (:class:`LocalProvider`) takes a neutral request — an Anthropic Messages body
  as a dict — and yields Anthropic stream events as dicts, whatever its own wire format is, so the
  engine can record the reply in the ledger before the final event and encode it for the client.

Errors are typed: the engine maps them to state-machine events, and returns
:class:`AuthError` / :class:`BadRequest` to the client as they are — never masked by a fallback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from trooper.wire import JSON

ProviderKind = Literal["cloud", "local"]


# ------------------------------------------------------------------------------------------ errors


class ProviderError(Exception):
    """A provider could not answer. Base of the taxonomy.

    ``status``/``headers``/``body`` hold the upstream's own response when there was one, so the
    client can be shown exactly what the provider said (status, ``retry-after``, ``request-id``, body).
    """

    error_type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = list(headers)
        self.body = body


class QuotaExhausted(ProviderError):
    """The account cannot be served for a while (429, spend limit, credit balance too low)."""

    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unreachable(ProviderError):
    """No HTTP answer: connection refused, DNS failure, reset, timeout before headers."""

    error_type = "api_error"


class Overloaded(ProviderError):
    """The provider answered but is overloaded or failing (529, 5xx)."""

    error_type = "overloaded_error"


class AuthError(ProviderError):
    """Credentials refused (401/403). The client's problem: never answered by a fallback."""

    error_type = "authentication_error"


class BadRequest(ProviderError):
    """The request itself is wrong (4xx). The client's problem: never answered by a fallback."""

    error_type = "invalid_request_error"


class ModelNotFound(BadRequest):
    """The configured model does not exist on the provider (Ollama 404)."""

    error_type = "not_found_error"


# ------------------------------------------------------------------------------------ cloud (raw)


@attrs.frozen
class UpstreamRequest:
    """A request to forward: method, path with query, headers to send and the exact body bytes."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes


class UpstreamResponse(Protocol):
    """The upstream's response, headers received, body not yet read."""

    status: int
    headers: Sequence[tuple[str, str]]

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class CloudProvider(Protocol):
    """A provider that receives requests as bytes and answers as bytes (Anthropic and compatibles)."""

    name: str
    kind: Literal["cloud"]

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send and return once headers arrived; raises :class:`Unreachable` when none do."""
        ...

    async def probe(self, headers: Sequence[tuple[str, str]], model: str) -> None:
        """The cheapest call that tells whether the cloud serves this credential again; raises the
        typed error (:class:`QuotaExhausted`, :class:`Unreachable`…) when it does not."""
        ...

    async def aclose(self) -> None: ...


# ------------------------------------------------------------------------------------ local (events)


@attrs.frozen
class LocalRequest:
    """A neutral request for a local model.

    ``body`` is an Anthropic Messages body (already compacted and stripped of Trooper's fields);
    ``model`` is the local model to run; ``num_ctx`` is the context the memory was budgeted for.
    """

    body: JSON
    model: str
    stream: bool
    num_ctx: int | None = None


@runtime_checkable
class LocalProvider(Protocol):
    """A provider that runs on this machine and speaks in Anthropic stream events."""

    name: str
    kind: Literal["local"]
    #: The model this provider runs.
    model: str

    def events(self, request: LocalRequest) -> AsyncIterator[JSON]:
        """Yield the full Anthropic event sequence (``message_start`` … ``message_stop``).

        Raises a :class:`ProviderError` before the first event when the model cannot be reached or
        does not exist; an error after the first event is raised from the iterator.
        """
        ...

    async def context_length(self, model: str) -> int | None:
        """The model's context window, if the provider can tell (Ollama's ``/api/show``)."""
        ...

    async def health(self) -> bool:
        """Whether the local server answers at all."""
        ...

    async def aclose(self) -> None: ...


Provider = CloudProvider | LocalProvider
