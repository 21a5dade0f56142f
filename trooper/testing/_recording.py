"""What a fake upstream remembers of each request: shared by the fake Anthropic and the fake Ollama."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import orjson


@attrs.frozen
class RecordedRequest:
    """One request exactly as a fake received it (headers in arrival order, body bytes untouched)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises on a body that is not JSON)."""
        return orjson.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    def raw(self) -> bytes:
        """The request as HTTP/1.1 bytes (request line, headers, blank line, body).

        Reassembled from what the server parsed, so header order is kept; this is what egress
        assertions scan, since a leak could hide in the path, the query, a header or the body.
        """
        target = self.path + (f"?{self.query}" if self.query else "")
        head = f"{self.method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers)
        return head.encode("latin-1", "replace") + b"\r\n" + self.body


class RequestLog:
    """The recording half of a fake: every request kept in order, safe to read from any thread.

    The fakes' servers run in their own threads while tests read from theirs, hence the lock (which
    subclasses also use for their reply queues).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def received_bytes(self) -> bytes:
        """Everything received, request after request, as HTTP/1.1 bytes: where a canary would show."""
        return b"\n".join(request.raw() for request in self.requests)

    def last_json(self, path: str | None = None) -> Any:
        """The JSON body of the last request to ``path`` (default: the last one that had a body)."""
        for request in reversed(self.requests):
            if (path is None and request.body) or request.path == path:
                return request.json()
        raise LookupError(f"no request {f'to {path}' if path else 'with a body'} was received")

    def clear(self) -> None:
        """Forget recorded requests (scripted replies stay queued)."""
        with self._lock:
            self._requests.clear()

    def _keep(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
