"""Turn segmentation, turn fingerprints and the text of content blocks.

A *turn* is a user prompt plus every assistant message and tool-result message that follows it until
the next prompt. Memory works on whole turns because a whole turn is the unit that keeps
``tool_use``/``tool_result`` pairs together: dropping or keeping turns as a block can never orphan one
half of a pair.

A prompt is a user message that carries no ``tool_result`` block. The Messages API requires tool
results to open the user message that answers a ``tool_use``; a client may append text after them (an
interruption, a system reminder), and such a message still *continues* the turn — splitting there would
separate the results from the ``tool_use`` blocks they answer.

Fingerprints are blake2b digests of a normalised turn, used as cache keys for everything derived from
a turn's content alone (extracts, token counts). The normalisation removes only what no derived value
depends on: ``cache_control`` markers (clients move them every request) and the string-vs-single-text-
block spelling of content. Whitespace is *not* folded, unlike the ledger's fingerprints: the extract
depends on line breaks, so folding them would let a cache hit change the output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any, Final, NamedTuple, overload

import orjson

__all__ = [
    "HistoryTurn",
    "TurnIndex",
    "block_text",
    "blocks",
    "chain_fingerprint",
    "content_text",
    "is_prompt",
    "json_bytes",
    "json_text",
    "message_text",
    "prompt_starts",
    "segment",
    "turn_fingerprint",
]

_CC: Final = b'"cache_control"'
_DUMP: Final = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


class HistoryTurn(NamedTuple):
    """One turn of the history a request carries (not the request in flight, which the engine models).

    A named tuple rather than an attrs class because a 1,000-turn conversation is segmented on every
    request and tuple construction is several times cheaper.
    """

    #: 1-based position in the conversation; SITREP tags (``[t12]``) and ``sources`` use it.
    number: int
    #: Index of the turn's first message in the request's ``messages``.
    start: int
    messages: tuple[Mapping[str, Any], ...]
    fingerprint: bytes
    #: False only for messages that precede the first prompt (a history that starts mid-turn).
    has_prompt: bool


def json_bytes(value: Any, *, sort: bool = False) -> bytes:
    """``value`` as compact JSON bytes; never raises.

    orjson refuses a few things a Python caller can hand us (lone surrogates, integers beyond 64 bits);
    those fall back to the standard library, which is slower but deterministic too.
    """
    try:
        return orjson.dumps(value, option=_DUMP if sort else orjson.OPT_NON_STR_KEYS, default=str)
    except (orjson.JSONEncodeError, TypeError):
        text = json.dumps(value, default=str, sort_keys=sort, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "surrogatepass")


def json_text(value: Any) -> str:
    """``value`` as compact JSON text (what a model sees of a tool input); never raises."""
    return json_bytes(value).decode("utf-8", "replace")


def blocks(content: Any) -> list[Mapping[str, Any]]:
    """The content as a list of blocks: a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list | tuple):
        return [b for b in content if isinstance(b, Mapping)]
    return []


def is_prompt(message: Mapping[str, Any]) -> bool:
    """Whether ``message`` starts a new turn: a user message with no ``tool_result`` block."""
    if message.get("role") != "user":
        return False
    content = message.get("content")
    if isinstance(content, list | tuple):
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "tool_result":
                return False
    return True


def _canonical(content: Any) -> Any:
    if isinstance(content, list) and len(content) == 1:
        block = content[0]
        if (
            isinstance(block, Mapping)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
            and all(k in ("type", "text", "cache_control") for k in block)
        ):
            return block["text"]
    return content


def _strip_cc(content: Any) -> Any:
    """Remove ``cache_control`` from blocks (and tool-result inner blocks), nowhere else.

    Tool inputs are user data: a ``cache_control`` key inside one is content and must stay.
    """
    if not isinstance(content, list | tuple):
        return content
    out: list[Any] = []
    for block in content:
        if isinstance(block, Mapping) and "cache_control" in block:
            block = {k: v for k, v in block.items() if k != "cache_control"}
        if isinstance(block, Mapping) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                block = {**block, "content": _strip_cc(inner)}
        out.append(block)
    return _canonical(out)


def turn_fingerprint(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """A 16-byte blake2b digest of the normalised messages of one turn (as :func:`segment` computes)."""
    parts = [(m.get("role"), _canonical(m.get("content"))) for m in messages]
    data = json_bytes(parts, sort=True)
    if _CC in data:
        parts = [(r, _strip_cc(c)) for r, c in parts]
        data = json_bytes(parts, sort=True)
    return blake2b(data, digest_size=16).digest()


def chain_fingerprint(fingerprints: Sequence[bytes]) -> str:
    """One hex digest of a chain of turn fingerprints: names a whole history prefix (``turns 1..k``),
    so a value derived from it is used for that exact prefix only."""
    return blake2b(b"".join(fingerprints), digest_size=16).hexdigest()


def prompt_starts(messages: Sequence[Mapping[str, Any]], begin: int = 0) -> list[int]:
    """Indexes of the messages from ``begin`` on that start a turn (``begin`` itself always does).

    A plain loop on purpose: on a 1,000-turn history this runs on every request that misses the
    running state's fast path.
    """
    starts = [begin] if begin < len(messages) else []
    for i in range(begin + 1, len(messages)):
        m = messages[i]
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list | tuple):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") == "tool_result":
                    break
            else:
                starts.append(i)
        else:
            starts.append(i)
    return starts


class TurnIndex(Sequence[HistoryTurn]):
    """Turns of a request, built lazily from turn boundaries.

    Compaction touches only a few turns by content (the Anchor, the Tail, new turns); building a
    :class:`HistoryTurn` — and hashing its content — for each of 1,000 turns on every request would be most of
    the cost of an incremental compaction. Fingerprints already known (from the running state) are
    passed in; the others are computed on first use.
    """

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]],
        starts: list[int],
        fps: list[bytes | None] | None = None,
    ) -> None:
        self.messages = messages
        self.starts = starts
        self._fps: list[bytes | None] = fps if fps is not None else [None] * len(starts)
        self._fps.extend([None] * (len(starts) - len(self._fps)))
        self._turns: dict[int, HistoryTurn] = {}

    def __len__(self) -> int:
        return len(self.starts)

    def bounds(self, i: int) -> tuple[int, int]:
        stop = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.messages)
        return self.starts[i], stop

    def fingerprint(self, i: int) -> bytes:
        fp = self._fps[i]
        if fp is None:
            a, b = self.bounds(i)
            fp = self._fps[i] = turn_fingerprint(self.messages[a:b])
        return fp

    def fingerprints(self, stop: int | None = None) -> list[bytes]:
        end = len(self.starts) if stop is None else stop
        return [self.fingerprint(i) for i in range(end)]

    def _turn(self, i: int) -> HistoryTurn:
        turn = self._turns.get(i)
        if turn is None:
            a, b = self.bounds(i)
            msgs = tuple(self.messages[a:b])
            turn = HistoryTurn(i + 1, a, msgs, self.fingerprint(i), i > 0 or is_prompt(msgs[0]))
            self._turns[i] = turn
        return turn

    @overload
    def __getitem__(self, index: int) -> HistoryTurn: ...

    @overload
    def __getitem__(self, index: slice) -> list[HistoryTurn]: ...

    def __getitem__(self, index: int | slice) -> HistoryTurn | list[HistoryTurn]:
        if isinstance(index, slice):
            return [self._turn(i) for i in range(*index.indices(len(self.starts)))]
        if index < 0:
            index += len(self.starts)
        if not 0 <= index < len(self.starts):
            raise IndexError(index)
        return self._turn(index)


def segment(messages: Sequence[Mapping[str, Any]]) -> list[HistoryTurn]:
    """Split ``messages`` into turns (see the module docstring for the rule)."""
    index = TurnIndex(messages, prompt_starts(messages))
    return index[:]


def content_text(content: Any) -> str:
    """The text of a ``content`` field: the string itself, or its text blocks newline-joined.

    A tool result's content is a string or a list of text (and image) blocks; this is what a model
    reads of it, and what truncation and extraction work on.
    """
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in blocks(content) if b.get("type") == "text")


#: Block types that carry text a model reads (everything else is media or opaque data).
_TEXTUAL: Final = frozenset({"text", "tool_use", "tool_result", "thinking"})


def block_text(block: Mapping[str, Any]) -> str:
    """The human-readable text of one block: its text, a tool call as ``name {input}``, a tool
    result's text, or a thinking block's reasoning; ``""`` for media and opaque blocks."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return f"{block.get('name', '')} {json_text(block.get('input', {}))}"
    if kind == "tool_result":
        return content_text(block.get("content", ""))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    return ""


def message_text(message: Mapping[str, Any]) -> str:
    """All human-readable text of a message (text, tool inputs and results), newline-joined.

    Used by the benchmark and the tests to ask "is this string present in what the model sees".
    """
    return "\n".join(block_text(b) for b in blocks(message.get("content")) if b.get("type") in _TEXTUAL)
