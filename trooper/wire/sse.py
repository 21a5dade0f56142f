"""Server-sent events in Anthropic's grammar: encoding, incremental decoding, accumulation.

The server, the providers and the fakes in ``trooper.testing`` all speak the stream through these
helpers, so a byte-level change to the grammar happens in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from trooper.wire.errors import JSON


def encode_sse(event: Mapping[str, Any]) -> bytes:
    """One SSE frame whose ``event:`` name equals the JSON ``type``, as Anthropic sends them."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class SSEDecoder:
    """Incremental SSE parser: feed raw bytes as they arrive, get complete ``(event, data)`` frames.

    Line ends may be ``\\r\\n``, ``\\n`` or a lone ``\\r``, as the SSE spec defines them; comments
    and multi-line ``data:`` fields are understood. Only the bytes that arrive are normalised, once,
    and a ``\\r`` that ends a chunk waits for the next one (it may be half of ``\\r\\n``), so the
    frames never depend on where the stream was cut.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._carriage_return = False

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        if self._carriage_return:
            chunk, self._carriage_return = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._carriage_return = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return
            frame, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            parsed = _parse_frame(frame)
            if parsed is not None:
                yield parsed

    def flush(self) -> Iterator[tuple[str, str]]:
        """Whatever complete-looking frame is left when the stream ends without a blank line."""
        self._carriage_return = False
        frame, self._buffer = self._buffer.strip(b"\n"), b""
        if frame:
            parsed = _parse_frame(frame)
            if parsed is not None:
                yield parsed


def _parse_frame(frame: bytes) -> tuple[str, str] | None:
    event = "message"
    data: list[str] = []
    for raw_line in frame.split(b"\n"):
        line = raw_line.decode("utf-8", "replace")
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if not data:
        return None
    return event, "\n".join(data)


# ------------------------------------------------------------------------------------- accumulation


class MessageAccumulator:
    """Builds the final ``Message`` from a stream of Anthropic stream events.

    Used to answer a non-streaming client from a provider that streams, and to learn what a local
    reply said (for the provenance ledger) before its final event is released.
    """

    def __init__(self) -> None:
        self.message: JSON | None = None
        self._partial_json: dict[int, str] = {}

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.message = dict(event["message"])
            self.message["content"] = list(self.message.get("content") or [])
            self.message["usage"] = dict(self.message.get("usage") or {})
            return
        message = self.message
        if message is None:
            return
        content: list[JSON] = message["content"]
        if kind == "content_block_start":
            block = dict(event["content_block"])
            index = int(event["index"])
            while len(content) <= index:
                content.append({})
            content[index] = block
        elif kind == "content_block_delta":
            self._apply_delta(content[int(event["index"])], int(event["index"]), event["delta"])
        elif kind == "content_block_stop":
            index = int(event["index"])
            if index in self._partial_json:
                text = self._partial_json.pop(index)
                content[index]["input"] = orjson.loads(text) if text.strip() else {}
        elif kind == "message_delta":
            message.update({k: v for k, v in event.get("delta", {}).items()})
            message["usage"].update(event.get("usage") or {})

    def _apply_delta(self, block: JSON, index: int, delta: Mapping[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = delta["signature"]
        elif kind == "input_json_delta":
            self._partial_json[index] = self._partial_json.get(index, "") + delta["partial_json"]
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])


def message_events(message: Mapping[str, Any]) -> Iterator[JSON]:
    """The full SSE event sequence that streams ``message`` (inverse of :class:`MessageAccumulator`)."""
    usage = dict(message.get("usage") or {})
    start = dict(message)
    start["content"] = []
    start["stop_reason"] = None
    start["stop_sequence"] = None
    start["usage"] = {**usage, "output_tokens": min(1, int(usage.get("output_tokens", 0)))}
    yield {"type": "message_start", "message": start}
    for index, block in enumerate(message.get("content") or []):
        yield from block_events(index, block)
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
        "usage": {"output_tokens": int(usage.get("output_tokens", 0))},
    }
    yield {"type": "message_stop"}


def block_events(index: int, block: Mapping[str, Any]) -> Iterator[JSON]:
    """``content_block_start`` / ``_delta`` / ``_stop`` for one finished content block."""
    kind = block.get("type")
    if kind == "text":
        yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
        for citation in block.get("citations") or ():
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "citations_delta", "citation": citation},
            }
        yield {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}}
    elif kind == "thinking":
        yield {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        }
        yield {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")},
        }
        if block.get("signature"):
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "signature_delta", "signature": block["signature"]},
            }
    elif kind == "tool_use":
        yield {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
        }
        yield {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input", {})).decode()},
        }
    else:
        yield {"type": "content_block_start", "index": index, "content_block": dict(block)}
    yield {"type": "content_block_stop", "index": index}
