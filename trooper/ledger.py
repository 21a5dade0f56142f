"""Provenance of local content, the cloud payload filter and the egress guard (DESIGN §6).

Clients are stateless: they re-send the whole history on every request, local turns included. So
Trooper remembers *fingerprints* of what each local turn added — its prompt blocks, tool results and
the reply as the client will see it — and removes matching blocks from every cloud-bound request.

Fingerprints are block-level hashes over a normalised form (``cache_control`` ignored, string
content ≡ one text block, whitespace folded, case folded), so they survive clients that re-wrap,
re-indent or re-order messages; they never depend on the session id, so they hold across sessions,
restarts and instances sharing a store. Tool-use ids generated for local tool calls are ledgered
too: a ``tool_result`` answering a local tool call is local whatever its text.

The **egress guard** is the backstop for what block fingerprints cannot see — local text pasted into
a new prompt, or a local message a client rewrote: it hashes word shingles of local text and scans
outgoing text for them. Blocks the cloud has already received verbatim are exempt (sending them again
reveals nothing new), which keeps the scan to the new part of each request.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import orjson

from trooper.store.base import LedgerEntry, Origin, SessionStore
from trooper.wire import JSON, TrooperError

_WORD: Final = re.compile(r"\w+")
_MASK: Final = (1 << 64) - 1
_BASE: Final = 0x100000001B3
WITHHELD_RESULT: Final = "[content withheld by Trooper: produced during a local turn]"
REDACTED: Final = "[redacted by Trooper: this text matches content handled locally]"
SYSTEM_REMINDER: Final = "<system-reminder>"

EgressAction = Literal["block", "redact", "warn"]


# ----------------------------------------------------------------------------------- fingerprints


def fold(text: str) -> str:
    """Whitespace- and case-folded text: what a re-formatting client cannot change."""
    return " ".join(text.split()).casefold()


def _digest(tag: str, canonical: str | bytes) -> str:
    data = canonical.encode("utf-8", "surrogatepass") if isinstance(canonical, str) else canonical
    return tag + hashlib.blake2b(data, digest_size=16).hexdigest()


@functools.lru_cache(maxsize=4096)
def _text_digest(tag: str, text: str) -> str:
    """Digest of folded text, memoised: clients re-send the same history on every request, so most
    blocks of a request were fingerprinted on the previous one (a string's hash is cached on it)."""
    return _digest(tag, fold(text))


def block_text(block: Any) -> str:
    """The human-readable text of a block (for shingles and for the memory layers)."""
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    if kind == "tool_use":
        return orjson.dumps(block.get("input", {}), option=orjson.OPT_SORT_KEYS).decode()
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return "\n".join(block_text(part) for part in content)
        return str(content)
    if kind == "document":
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "text":
            return str(source.get("data", ""))
    return ""


def block_fingerprint(block: Any) -> str:
    """A stable hash of a block's normalised content (``cache_control`` and whitespace ignored)."""
    if isinstance(block, str):
        return _text_digest("t", block)
    if not isinstance(block, Mapping):
        return _digest("o", orjson.dumps(block, option=orjson.OPT_SORT_KEYS))
    kind = block.get("type")
    if kind == "text":
        return _text_digest("t", str(block.get("text", "")))
    if kind == "thinking":
        return _text_digest("k", str(block.get("thinking", "")))
    if kind == "tool_use":
        return _text_digest("u", f"{block.get('name')}\x00{block_text(block)}")
    if kind == "tool_result":
        return _text_digest("r", block_text(block))
    if kind in {"image", "document"}:
        source = block.get("source")
        payload = source if isinstance(source, Mapping) else {}
        return _digest("i", str(payload.get("data") or payload.get("url") or payload.get("file_id") or ""))
    if kind == "redacted_thinking":
        return _digest("x", str(block.get("data", "")))
    rest = {k: v for k, v in block.items() if k != "cache_control"}
    return _digest("o", orjson.dumps(rest, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))


def id_fingerprint(tool_use_id: str) -> str:
    return _digest("d", tool_use_id)


def content_blocks(message: Mapping[str, Any]) -> list[Any]:
    """A message's content as a list of blocks (a string is one text block)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    return []


def shingles(text: str, size: int) -> list[int]:
    """64-bit hashes of every run of ``size`` consecutive words (case folded).

    A rolling polynomial hash over per-word hashes: one multiply-add per word instead of hashing
    every window, which keeps the first scan of a 200 KB history in single milliseconds. Texts
    shorter than ``size`` words give one shingle of the whole text when they have at least half
    that many words, so a short but distinctive local answer is still guarded.
    """
    words = _WORD.findall(text.casefold())
    count = len(words)
    if count < size:
        if count < max(4, size // 2):
            return []
        size = count
    hashes = [_word_hash(word) for word in words]
    power = pow(_BASE, size - 1, 1 << 64)
    value = 0
    for word in hashes[:size]:
        value = (value * _BASE + word) & _MASK
    out = [value]
    for position in range(size, count):
        value = ((value - hashes[position - size] * power) * _BASE + hashes[position]) & _MASK
        out.append(value)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")


# ------------------------------------------------------------------------------------ turns


def is_tool_results_only(message: Mapping[str, Any]) -> bool:
    blocks = content_blocks(message)
    return bool(blocks) and all(isinstance(b, Mapping) and b.get("type") == "tool_result" for b in blocks)


#: Roles of the messages a conversation is made of. Claude Code (2.1.x) also sends ``system`` messages
#: inside ``messages`` (its environment notes, right after the first prompt); those are the client's
#: context, like the top-level ``system`` field: forwarded as they are, never a turn of their own.
MESSAGE_ROLES: Final = ("user", "assistant", "system")


def last_turn_message(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the last user or assistant message: what a request "ends with", system notes aside."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") != "system":
            return index
    return None


def current_turn_start(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the user message that began the current turn (the last prompt that is not tool results)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user" and not is_tool_results_only(message):
            return index
    return 0


def continues_tool_loop(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when the last user message starts with ``tool_result``: the request continues a turn."""
    last = last_turn_message(messages)
    if last is None or messages[last].get("role") != "user":
        return False
    blocks = content_blocks(messages[last])
    return bool(blocks) and isinstance(blocks[0], Mapping) and blocks[0].get("type") == "tool_result"


# ------------------------------------------------------------------------------------ the index


@attrs.define
class LedgerIndex:
    """In-memory sets of every fingerprint in the store: all filtering is set lookups (DESIGN §11)."""

    blocks: set[str] = attrs.field(factory=set)
    ids: set[str] = attrs.field(factory=set)
    shingles: set[int] = attrs.field(factory=set)
    cloud: set[str] = attrs.field(factory=set)
    share_fallback: bool = False

    def add(self, entries: Iterable[LedgerEntry]) -> None:
        for entry in entries:
            if entry.kind == "cloud":
                self.cloud.add(entry.fingerprint)
            elif entry.shareable and self.share_fallback:
                continue
            elif entry.kind == "block":
                self.blocks.add(entry.fingerprint)
            elif entry.kind == "id":
                self.ids.add(entry.fingerprint)
            elif entry.kind == "shingle":
                self.shingles.add(int(entry.fingerprint, 16))

    @property
    def empty(self) -> bool:
        return not (self.blocks or self.ids or self.shingles)

    def is_local(self, block: Any) -> bool:
        if block_fingerprint(block) in self.blocks:
            return True
        if isinstance(block, Mapping):
            ref = block.get("id") if block.get("type") == "tool_use" else block.get("tool_use_id")
            if isinstance(ref, str) and id_fingerprint(ref) in self.ids:
                return True
        return False


def local_entries(
    blocks: Iterable[Any],
    *,
    session: str,
    origin: Origin,
    shareable: bool,
    shingle_words: int,
    marker: str | None = None,
) -> list[LedgerEntry]:
    """Ledger entries for the blocks a local turn saw or produced.

    A prompt that carried the locality marker is fingerprinted with and without it, since the
    client re-sends it with the marker while the model saw it without.
    """
    out: dict[tuple[str, str], LedgerEntry] = {}

    def put(fingerprint: str, kind: Literal["block", "id", "shingle"]) -> None:
        out[(fingerprint, kind)] = LedgerEntry(fingerprint, kind, session, origin, shareable)

    for block in blocks:
        variants = [block]
        if marker and isinstance(block, Mapping) and block.get("type") == "text":
            text = str(block.get("text", ""))
            stripped = strip_marker(text, marker)
            if stripped is not None:
                variants.append({"type": "text", "text": stripped})
        elif marker and isinstance(block, str):
            stripped = strip_marker(block, marker)
            if stripped is not None:
                variants.append(stripped)
        for variant in variants:
            put(block_fingerprint(variant), "block")
        if isinstance(block, Mapping):
            ref = block.get("id") if block.get("type") == "tool_use" else block.get("tool_use_id")
            if isinstance(ref, str):
                put(id_fingerprint(ref), "id")
        text = block_text(block)
        if text and not text.lstrip().startswith(SYSTEM_REMINDER):
            for value in shingles(text, shingle_words):
                put(f"{value:016x}", "shingle")
    return list(out.values())


def strip_marker(text: str, marker: str) -> str | None:
    """``text`` without a leading locality marker, or None when it does not start with one."""
    stripped = text.lstrip()
    if marker and stripped.startswith(marker):
        rest = stripped[len(marker) :]
        if not rest or rest[0].isspace() or not marker[-1].isalnum():
            return rest.lstrip()
    return None


# -------------------------------------------------------------------------------------- filter


@attrs.frozen
class GuardHit:
    """Where the egress guard found ledgered text (never *what* it found)."""

    path: str
    shingles: int


@attrs.frozen
class FilterResult:
    """The cloud-bound messages and what was kept back; ``changed`` is False when nothing was."""

    messages: list[JSON]
    changed: bool
    withheld_blocks: int
    withheld_turns: int
    guard_hits: tuple[GuardHit, ...]
    new_cloud_fingerprints: frozenset[str]


def filter_messages(
    messages: Sequence[JSON],
    index: LedgerIndex,
    *,
    turn_start: int,
    notice: bool,
    egress_action: EgressAction,
    shingle_words: int,
    system: Any = None,
) -> FilterResult:
    """Remove ledgered content from ``messages[:turn_start]`` and run the egress guard on the rest.

    The current turn (``messages[turn_start:]``) was routed to the cloud, so its blocks are never
    withheld for matching a fingerprint — a user typing "yes" again is not a leak — but they are
    scanned by the guard like everything the cloud has not seen verbatim before.
    Raises :class:`~trooper.wire.TrooperError` (403) when the guard blocks.
    """
    if index.empty:
        return FilterResult(list(messages), False, 0, 0, (), frozenset())
    withheld_blocks = 0
    withheld_turns = 0
    kept: list[JSON] = []
    dropped_uses: set[str] = set()
    withheld_results: set[str] = set()
    first_gap: int | None = None
    for position, message in enumerate(messages):
        if position >= turn_start:
            kept.append(message)
            continue
        blocks = content_blocks(message)
        survivors = []
        lost_prompt = False
        for block in blocks:
            if index.is_local(block):
                withheld_blocks += 1
                if isinstance(block, Mapping) and block.get("type") == "tool_use":
                    dropped_uses.add(str(block.get("id")))
                elif isinstance(block, Mapping) and block.get("type") == "tool_result":
                    withheld_results.add(str(block.get("tool_use_id")))
                else:
                    lost_prompt = lost_prompt or message.get("role") == "user"
                continue
            survivors.append(block)
        if lost_prompt:
            withheld_turns += 1
        if len(survivors) != len(blocks):
            if first_gap is None:
                first_gap = len(kept)
            if survivors:
                kept.append({**message, "content": survivors})
        else:
            kept.append(message)
    if withheld_blocks:
        kept = _repair(kept, dropped_uses, withheld_results)
        if notice and withheld_turns:
            kept = _add_notice(kept, first_gap or 0, withheld_turns)
    cloud_fps, hits = _guard(kept, index, shingle_words, system)
    if hits and egress_action == "block":
        where = ", ".join(hit.path for hit in hits[:3])
        raise TrooperError(
            "permission_error",
            f"Trooper refused to send this request to the cloud: {len(hits)} passage(s) match content "
            f"that was handled locally ({where}). Remove that text, or send this turn locally.",
            status=403,
        )
    if hits and egress_action == "redact":
        kept = _redact(kept, {hit.path for hit in hits})
    return FilterResult(
        kept,
        bool(withheld_blocks) or (bool(hits) and egress_action == "redact"),
        withheld_blocks,
        withheld_turns,
        tuple(hits),
        frozenset(cloud_fps),
    )


def _repair(messages: list[JSON], dropped_uses: set[str], withheld_results: set[str]) -> list[JSON]:
    """Keep the request valid: no orphan tool_result, no tool_use without its result, roles merged."""
    fixed: list[JSON] = []
    for message in messages:
        blocks = content_blocks(message)
        new_blocks = []
        for block in blocks:
            if isinstance(block, Mapping) and block.get("type") == "tool_result":
                ref = str(block.get("tool_use_id"))
                if ref in dropped_uses:
                    continue
            new_blocks.append(block)
        if not new_blocks:
            continue
        if new_blocks is not blocks and len(new_blocks) != len(blocks):
            message = {**message, "content": new_blocks}
        if fixed and fixed[-1].get("role") == message.get("role"):
            fixed[-1] = _merge(fixed[-1], message)
        else:
            fixed.append(message)
    # A kept tool_use whose result was withheld gets a content-free result, so pairing stays valid.
    for position, message in enumerate(fixed):
        if message.get("role") != "assistant":
            continue
        uses = [b.get("id") for b in content_blocks(message) if isinstance(b, Mapping) and b.get("type") == "tool_use"]
        missing = [u for u in uses if u in withheld_results]
        if not missing:
            continue
        placeholders = [{"type": "tool_result", "tool_use_id": u, "content": WITHHELD_RESULT} for u in missing]
        following = fixed[position + 1] if position + 1 < len(fixed) else None
        if following is not None and following.get("role") == "user":
            fixed[position + 1] = {**following, "content": placeholders + content_blocks(following)}
        else:
            fixed.insert(position + 1, {"role": "user", "content": placeholders})
    # The request must open with a user message, also when what opened it was withheld and the
    # next survivor is an assistant reply or a system note (Claude Code sends [prompt, note, ...]).
    if fixed and fixed[0].get("role") != "user":
        fixed.insert(0, {"role": "user", "content": [{"type": "text", "text": "[earlier turns withheld]"}]})
    return fixed


def _merge(first: JSON, second: JSON) -> JSON:
    blocks = content_blocks(first) + content_blocks(second)
    if first.get("role") == "user":  # tool_result blocks must lead a user message
        results = [b for b in blocks if isinstance(b, Mapping) and b.get("type") == "tool_result"]
        others = [b for b in blocks if not (isinstance(b, Mapping) and b.get("type") == "tool_result")]
        blocks = results + others
    return {**first, "content": blocks}


def _add_notice(messages: list[JSON], at: int, turns: int) -> list[JSON]:
    plural = turns != 1
    text = (
        f"[Trooper: {turns} earlier turn{'s' if plural else ''} of this conversation ran on a local "
        f"model and {'are' if plural else 'is'} withheld from the cloud.]"
    )
    note = {"type": "text", "text": text}
    for position in range(min(at, len(messages)), len(messages)):
        message = messages[position]
        if message.get("role") == "user":
            blocks = content_blocks(message)
            lead = [b for b in blocks if isinstance(b, Mapping) and b.get("type") == "tool_result"]
            messages[position] = {**message, "content": [*lead, note, *blocks[len(lead) :]]}
            return messages
    return messages


def _guard(
    messages: Sequence[JSON], index: LedgerIndex, shingle_words: int, system: Any
) -> tuple[set[str], list[GuardHit]]:
    """Scan text the cloud has not received verbatim before for shingles of local content."""
    fresh: set[str] = set()
    hits: list[GuardHit] = []
    candidates: list[tuple[str, Any]] = []
    if isinstance(system, str):
        candidates.append(("system", system))
    elif isinstance(system, list):
        candidates.extend((f"system.{number}", block) for number, block in enumerate(system))
    for position, message in enumerate(messages):
        for number, block in enumerate(content_blocks(message)):
            candidates.append((f"messages.{position}.content.{number}", block))
    for path, block in candidates:
        fingerprint = block_fingerprint(block)
        if fingerprint in index.cloud:
            continue
        fresh.add(fingerprint)
        if not index.shingles:
            continue
        text = block_text(block)
        matched = len(index.shingles.intersection(shingles(text, shingle_words))) if text else 0
        if matched:
            hits.append(GuardHit(path, matched))
    return fresh, hits


def _redact(messages: list[JSON], paths: set[str]) -> list[JSON]:
    out: list[JSON] = []
    for position, message in enumerate(messages):
        blocks = content_blocks(message)
        replaced = []
        for number, block in enumerate(blocks):
            if f"messages.{position}.content.{number}" in paths:
                if isinstance(block, Mapping) and block.get("type") == "tool_result":
                    block = {"type": "tool_result", "tool_use_id": block.get("tool_use_id"), "content": REDACTED}
                elif isinstance(block, Mapping) and block.get("type") == "tool_use":
                    block = {**block, "input": {}}
                else:
                    block = {"type": "text", "text": REDACTED}
            replaced.append(block)
        out.append({**message, "content": replaced})
    return out


# -------------------------------------------------------------------------------------- the edge


class Ledger:
    """The index kept in step with the store: write-ahead recording, cross-instance refresh."""

    def __init__(self, store: SessionStore, *, shingle_words: int = 12, share_fallback: bool = False) -> None:
        self.store = store
        self.shingle_words = shingle_words
        self.index = LedgerIndex(share_fallback=share_fallback)
        self._cursor = 0
        self.refresh()

    def refresh(self) -> None:
        """Pick up entries other instances (or an earlier run) wrote; one indexed query."""
        entries, self._cursor = self.store.ledger_since(self._cursor)
        self.index.add(entries)

    def record_local(
        self, blocks: Iterable[Any], *, session: str, origin: Origin, shareable: bool = False, marker: str | None = None
    ) -> int:
        """Durably record a local turn's blocks before anything else happens; returns entries written."""
        entries = local_entries(
            blocks,
            session=session,
            origin=origin,
            shareable=shareable and origin != "forced",
            shingle_words=self.shingle_words,
            marker=marker,
        )
        self.store.ledger_add(entries)
        self.index.add(entries)
        return len(entries)

    def record_cloud(self, fingerprints: Iterable[str], *, session: str) -> None:
        """Remember blocks the cloud has now received verbatim (exempt from later guard scans)."""
        entries = [LedgerEntry(fp, "cloud", session) for fp in fingerprints if fp not in self.index.cloud]
        if entries:
            self.store.ledger_add(entries)
            self.index.add(entries)
