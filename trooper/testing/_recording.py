"""What a fake upstream remembers of each request: shared by the fake Anthropic and the fake Ollama."""

from __future__ import annotations

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
