"""The provenance ledger and the cloud payload filter: pure, synchronous, no I/O.

The ledger is an append-only log of :class:`LedgerRecord` batches — 64-bit fingerprints, never text.
:class:`LedgerIndex` holds them in memory for set lookups. Three kinds of knowledge live in it:

* **provenance** — where local messages stood in their conversations' lineages (``prompt`` and
  ``reply`` keys, see :mod:`trooper.lineage`) and which tool calls were local (``tool``);
* **content** — the distinctive and long spans (:mod:`trooper.spans`) and the blobs of what local
  turns *produced* (prompts typed, replies, tool calls) and what they *received* (tool results);
* **cloud sightings** — where the cloud has already received a message (``seen``), so re-sent
  history it has is trusted without scanning and content it has is never treated as a leak.

:func:`record_local_turn` says what a local turn records before the local model is called, and a
:class:`ReplyRecorder` what each event of the local reply records before it is sent: nothing
reaches the client that the ledger does not hold. :func:`plan_cloud` turns a request into what the
cloud may receive — local blocks withheld by provenance, unvetted history vetted by content, new
content checked by the egress guard — or a refusal.

Fallback content recorded as shareable (``locality.share_fallback_after_recovery``) is skipped by an
index told to share it; anything else recorded for the same key keeps it local, whatever the order in
which the records arrive, so forced-local content never becomes shareable.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import numpy as np

from trooper.keyset import U64, KeySet, as_array, difference, member, sorted_unique, union
from trooper.lineage import (
    MESSAGE,
    Lineage,
    Step,
    context_items,
    context_key,
    prompt_key,
    reply_key,
    scoped,
    seen_key,
    strong,
    text_identity,
    tool_key,
    tool_key_of,
)
from trooper.spans import (
    fingerprints_of,
    folded_fingerprints,
    local_fingerprints,
    pack,
    query_fingerprints,
    sorted_fingerprints,
    unpack,
)
from trooper.text import (
    block_blobs,
    block_texts,
    context_only,
    fold,
    fold_uncached,
    partial_json_strings,
    reminders,
    strip_reminders,
)
from trooper.wire.messages import block_type, content_blocks, tool_result_id, tool_use_id

JSON = dict[str, Any]
Origin = Literal["forced", "fallback"]
Scope = Literal["produced", "received"]
RecordKind = Literal[
    "prompt",
    "prompt.session",
    "reply",
    "reply.session",
    "tool",
    "span.produced",
    "span.received",
    "blob.produced",
    "blob.received",
    "context",
    "context.session",
    "seen",
    "seen.reply",
    "seen.context",
]
EgressAction = Literal["block", "redact", "warn"]

WITHHELD_RESULT: Final = "[content withheld by Trooper: a local model handled it]"
REDACTED: Final = "[redacted by Trooper: this text matches content handled locally]"
OPENING: Final = "[earlier turns withheld by Trooper]"

_SPAN_KINDS: Final = {"span.produced": "produced", "span.received": "received"}


@attrs.frozen
class LedgerRecord:
    """One batch of fingerprints of one kind, as appended to the store."""

    kind: RecordKind
    values: bytes
    session: str = ""
    origin: str = "forced"
    shareable: bool = False

    @classmethod
    def of(
        cls,
        kind: RecordKind,
        values: Iterable[int] | U64,
        *,
        session: str = "",
        origin: str = "forced",
        shareable: bool = False,
    ) -> LedgerRecord:
        array = values if isinstance(values, np.ndarray) else as_array(list(values))
        return cls(kind, pack(sorted_unique(array)), session, origin, shareable)

    def array(self) -> U64:
        return unpack(self.values)

    def __len__(self) -> int:
        return len(self.values) // 8


def blob_value(digest: str) -> int:
    return int(digest[:16], 16)


# ------------------------------------------------------------------------------------------- the index


class LedgerIndex:
    """Every fingerprint of the ledger, in memory, answering the questions of the walk and the filter.

    Each kind of fingerprint is a :class:`~trooper.keyset.KeySet` — about nine bytes a key, because
    the ledger is never pruned — for local content (strict), shareable fallback content (shared)
    and cloud sightings (seen).
    """

    def __init__(self, *, share_fallback: bool = False) -> None:
        self.share_fallback = share_fallback
        self._strict: dict[str, KeySet] = collections.defaultdict(KeySet)
        self._shared: dict[str, KeySet] = collections.defaultdict(KeySet)
        self._spans = {scope: (KeySet(), KeySet()) for scope in ("produced", "received")}
        #: Local tool calls by (shareable, origin): a call recorded as forced anywhere is forced.
        self._tools = {(shared, origin): KeySet() for shared in (False, True) for origin in ("forced", "fallback")}
        self._seen: dict[str, KeySet] = collections.defaultdict(KeySet)
        self._holds_local = False
        #: What the walk asks of every message, kept ready: the tool sets that hold anything (with
        #: whether they are shareable), and the positional kinds recorded for one session only.
        self._live_tools: tuple[tuple[bool, KeySet], ...] = ()
        self._bound: frozenset[str] = frozenset()
        #: Change when records of local content, or of what the cloud received, are added. The walk
        #: remembers its verdicts on messages that were not local (:data:`walk_memo`) under the first:
        #: keys are never removed, so "not local" holds until a local record comes, "seen" for ever,
        #: and "unseen" until the cloud is seen receiving more.
        self.local_generation = 0
        self.seen_generation = 0
        self.walk_memo: dict[Hashable, tuple[int, int, str, int]] = {}
        #: Changes when content fingerprints are added (cached scans look again).
        self.version = 0
        #: Verdicts on client context, which is re-sent unchanged with every request.
        self.context_verdicts: collections.OrderedDict[tuple[int, str], bool] = collections.OrderedDict()

    def add(self, records: Iterable[LedgerRecord]) -> None:
        """Index records; the values bound for one set are added together (a read of many records
        at start-up is then one merge per set, not one per record)."""
        batches: dict[int, tuple[KeySet, list[U64]]] = {}
        content = False
        generation = self.local_generation
        for record in records:
            values = record.array()
            if not len(values):
                continue
            target = self._target(record)
            batches.setdefault(id(target), (target, []))[1].append(values)
            if record.kind.startswith("seen"):
                self.seen_generation += 1
            else:
                self.local_generation += 1
                self._holds_local = True
                content = content or record.kind in _SPAN_KINDS or record.kind.startswith("blob")
        for target, parts in batches.values():
            target.add(parts[0] if len(parts) == 1 else np.concatenate(parts))
        if generation != self.local_generation:  # sightings change neither
            self._live_tools = tuple((shared, keys) for (shared, _), keys in self._tools.items() if keys)
            self._bound = frozenset(
                kind
                for kinds in (self._strict, self._shared)
                for kind, keys in kinds.items()
                if kind.endswith(".session") and keys
            )
        if content:
            self.version += 1

    def _target(self, record: LedgerRecord) -> KeySet:
        kind, shared = record.kind, record.shareable
        if kind.startswith("seen"):
            return self._seen[kind]
        if kind in _SPAN_KINDS:
            strict, loose = self._spans[_SPAN_KINDS[kind]]
            return loose if shared else strict
        if kind == "tool":
            return self._tools[(shared, "forced" if record.origin == "forced" else "fallback")]
        return (self._shared if shared else self._strict)[kind]

    @property
    def holds_local(self) -> bool:
        """Whether anything local was ever recorded (if not, nothing can need withholding)."""
        return self._holds_local

    def _has(self, kind: str, value: int) -> bool:
        strict = self._strict.get(kind)
        if strict is not None and value in strict:
            return True
        shared = None if self.share_fallback else self._shared.get(kind)
        return shared is not None and value in shared

    def _positional(self, kind: str, value: int, session: str) -> bool:
        """A key recorded for every session, or (for a short lineage) for this one."""
        if self._has(kind, value):
            return True
        bound = _BOUND[kind]
        return bound in self._bound and self._has(bound, scoped(value, session))

    # --- what the walk asks (trooper.lineage.Provenance)

    def local_reply(self, value: int, session: str) -> bool:
        return self._positional("reply", value, session)

    def local_prompt(self, value: int, session: str) -> bool:
        return self._positional("prompt", value, session)

    def local_tool(self, tool_use_id: str) -> bool:
        # Asked of every tool call of every request: only the sets that hold anything are asked.
        value = tool_key_of(tool_use_id)
        return any(value in tools and not (shared and self.share_fallback) for shared, tools in self._live_tools)

    def seen(self, value: int) -> bool:
        seen = self._seen.get("seen")
        return seen is not None and value in seen

    def seen_reply(self, value: int) -> bool:
        seen = self._seen.get("seen.reply")
        return seen is not None and value in seen

    @property
    def sightings(self) -> bool:
        return bool(self._seen.get("seen") or self._seen.get("seen.reply"))

    # --- what the filter and the engine ask

    def tool_origin(self, tool_use_id: str) -> str | None:
        """``forced``/``fallback`` for a local tool call (shareable or not: a loop keeps its route)."""
        value = tool_key_of(tool_use_id)
        for origin in ("forced", "fallback"):
            if any(value in self._tools[(shared, origin)] for shared in (False, True)):
                return origin
        return None

    def local_context(self, value: int, session: str) -> bool:
        return self._positional("context", value, session)

    def seen_context(self, value: int) -> bool:
        seen = self._seen.get("seen.context")
        return seen is not None and value in seen

    def span_hits(self, values: U64, scope: Scope | None) -> np.ndarray:
        """A mask over ``values``: which are spans of local content (``None``: produced or received)."""
        mask = np.zeros(len(values), dtype=np.bool_)
        for name in ("produced", "received") if scope is None else (scope,):
            strict, loose = self._spans[name]
            mask |= strict.contains(values)
            if not self.share_fallback and len(loose):
                mask |= loose.contains(values)
        return mask

    def blob_hit(self, value: int, scope: Scope | None) -> bool:
        names = ("produced", "received") if scope is None else (scope,)
        return any(self._has(f"blob.{name}", value) for name in names)

    def _sets(self) -> list[KeySet]:
        spans = [keys for pair in self._spans.values() for keys in pair]
        return [*self._strict.values(), *self._shared.values(), *self._seen.values(), *spans, *self._tools.values()]

    def size(self) -> int:
        """Fingerprints held (for reports and benchmarks)."""
        return sum(len(keys) for keys in self._sets())

    def nbytes(self) -> int:
        """Roughly what the index holds in memory."""
        return sum(keys.nbytes() for keys in self._sets())


# ------------------------------------------------------------------------------- recording a local turn


#: The kind of a positional key recorded for one session only (a short lineage's), by its kind.
_BOUND: Final = {kind: f"{kind}.session" for kind in ("reply", "prompt", "context")}


def _scope_of(block: Any) -> Scope:
    """A tool result is what a local turn *received*; everything else in a turn it *produced* or was typed."""
    return "received" if block_type(block) == "tool_result" else "produced"


def _content_texts(block: Any, marker: str | None) -> Iterator[str]:
    for text in block_texts(block):
        text = strip_reminders(text)
        if marker and block_type(block) in ("text", None):
            stripped = text.lstrip()
            if stripped.startswith(marker):
                text = stripped[len(marker) :]
        if text.strip():
            yield text


class _Collector:
    """Accumulates the records of one local turn, minus what the cloud already has."""

    def __init__(self, base: U64, base_blobs: set[int], *, session: str, origin: Origin, shareable: bool) -> None:
        self.base = base
        self.base_blobs = base_blobs
        self.session = session
        self.origin = origin
        self.shareable = shareable
        self.keys: dict[RecordKind, set[int]] = collections.defaultdict(set)
        self.spans: dict[Scope, list[U64]] = collections.defaultdict(list)

    def key(self, kind: Literal["prompt", "reply", "context"], value: int, *, bound: bool) -> None:
        if bound:
            self.keys[f"{kind}.session"].add(scoped(value, self.session))  # type: ignore[index]
        else:
            self.keys[kind].add(value)

    def content(self, block: Any, scope: Scope, marker: str | None = None) -> None:
        for text in _content_texts(block, marker):
            self.spans[scope].append(local_fingerprints(text))
        for digest in block_blobs(block):
            value = blob_value(digest)
            if value not in self.base_blobs:
                self.keys[f"blob.{scope}"].add(value)  # type: ignore[index]

    def records(self) -> list[LedgerRecord]:
        out = [self.record(kind, values) for kind, values in self.keys.items() if values]
        for scope, parts in self.spans.items():
            values = difference(np.concatenate(parts), self.base) if parts else None
            if values is not None and len(values):
                out.append(self.record(f"span.{scope}", values))  # type: ignore[arg-type]
        return out

    def record(self, kind: RecordKind, values: Iterable[int] | U64) -> LedgerRecord:
        return LedgerRecord.of(kind, values, session=self.session, origin=self.origin, shareable=self.shareable)


def cloud_visible(messages: Sequence[Mapping[str, Any]], lineage: Lineage) -> tuple[U64, set[int]]:
    """Span fingerprints and blobs of what the cloud has of a request: its non-local history.

    Content a local turn shares with it is not the local turn's to protect — the cloud said it, or
    received it in a cloud turn — so it is left out of what the turn records.
    """
    texts: list[str] = []
    blobs: set[int] = set()
    for step in lineage.steps:
        if step.cls == "local" or step.index >= lineage.new_start:
            continue
        for number, block in enumerate(content_blocks(messages[step.index])):
            if number in step.local_blocks:
                continue
            texts.extend(strip_reminders(text) for text in block_texts(block))
            blobs.update(blob_value(digest) for digest in block_blobs(block))
    return fingerprints_of(texts), blobs


def record_local_turn(
    body: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    lineage: Lineage,
    index: LedgerIndex,
    *,
    session: str,
    origin: Origin,
    shareable: bool,
    marker: str | None,
    protect_context: bool,
) -> tuple[list[LedgerRecord], ReplyRecorder]:
    """What a local turn records before the local model sees it, and the recorder of its reply.

    The turn's content is the request's new part — the last user message and what follows it —
    because everything before was either recorded by an earlier local request or received by the
    cloud (a fallback in the middle of a cloud tool loop records only the new tool results).
    ``marker`` is the locality marker when the prompt carried it: such a lineage is trusted across
    sessions, and the marker itself is not content.
    """
    base, base_blobs = cloud_visible(messages, lineage)
    collect = _Collector(base, base_blobs, session=session, origin=origin, shareable=shareable)
    marked = bool(marker)
    for step in lineage.steps:
        if step.index < lineage.new_start:
            continue
        bound = not strong(step.weight, marked or step.marked)
        blocks = content_blocks(messages[step.index])
        if step.role == "assistant":
            collect.key("reply", reply_key(step.before), bound=bound)
            for block in blocks:
                collect.content(block, "produced")
                _collect_tool(collect, block)
            continue
        # A message the cloud has already received at this very position (in a cloud turn of this
        # or of an identical conversation) is not this turn's to protect.
        unseen = not index.seen(seen_key(step.before, step.identity))
        if unseen and step.identity:
            collect.key("prompt", prompt_key(step.before, MESSAGE + step.identity), bound=bound)
        for number, block in enumerate(blocks):
            if number in step.context_blocks:
                continue
            part = _identity_of(block)
            if part is not None and unseen:
                collect.key("prompt", prompt_key(step.before, part), bound=bound)
            collect.content(block, _scope_of(block), marker)
    bound = not strong(lineage.end_weight, marked or lineage.end_marked)
    collect.key("reply", reply_key(lineage.reply_before), bound=bound)
    if protect_context:
        for _path, anchor, tag, text in context_items(body, messages, lineage):
            value = context_key(anchor, tag, text_identity(text) or fold(text))
            if not index.seen_context(value):
                collect.key("context", value, bound=bound)
    recorder = ReplyRecorder(base, base_blobs, session=session, origin=origin, shareable=shareable)
    return collect.records(), recorder


def summary_records(text: str, base: U64, *, session: str) -> list[LedgerRecord]:
    """What a model-written SITREP records before it is kept: its spans, as local content.

    It is written from the whole conversation, local turns included, so it is local content; only the
    spans it shares with what the cloud has already received (``base``, as for the turn it was
    planned in) are not, or cloud history it quotes would start to look local.
    """
    values = difference(local_fingerprints(text), base)
    return [LedgerRecord.of("span.produced", values, session=session)] if len(values) else []


def _identity_of(block: Any) -> str | None:
    from trooper.lineage import block_identity

    return block_identity(block)


def _collect_tool(collect: _Collector, block: Any) -> None:
    ref = tool_use_id(block)
    if ref is not None:
        collect.keys["tool"].add(tool_key(ref))


#: Characters of folded text re-fingerprinted behind the end of a growing block: enough to cover
#: every span or winnowing window that was still open when the block last grew.
_REVISIT: Final = 512


class ReplyRecorder:
    """Turns the events of a local reply into ledger records, before each event is sent.

    A reply streams block by block and delta by delta; whatever a delta reveals — a tool call's id,
    a stretch of text or of a tool call's JSON (decoded) — is fingerprinted when it arrives, so the
    ledger already holds it when the client receives it, also when the stream is cut right after.
    """

    def __init__(self, base: U64, base_blobs: set[int], *, session: str, origin: Origin, shareable: bool) -> None:
        self._collect = _Collector(base, base_blobs, session=session, origin=origin, shareable=shareable)
        self._kinds: dict[int, str] = {}
        self._raw: dict[int, str] = {}
        self._folded_length: dict[int, int] = {}
        self._recorded: U64 = np.empty(0, dtype=np.uint64)
        self.base = base

    def feed(self, event: Mapping[str, Any]) -> list[LedgerRecord]:
        """The records to write before ``event`` is sent to the client (often none)."""
        kind = event.get("type")
        records: list[LedgerRecord] = []
        if kind == "message_start":
            message = event.get("message")
            content = message.get("content") if isinstance(message, Mapping) else None
            for number, block in enumerate(content or []):
                records += self._start(1_000_000 + number, block)
        elif kind == "content_block_start":
            block = event.get("content_block")
            records += self._start(int(event.get("index", 0)), block if isinstance(block, Mapping) else {})
        elif kind == "content_block_delta":
            number = int(event.get("index", 0))
            delta = event.get("delta")
            if isinstance(delta, Mapping):
                piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
                if isinstance(piece, str) and piece:
                    self._raw[number] = self._raw.get(number, "") + piece
                    records += self._grow(number)
        return records

    def _start(self, number: int, block: Mapping[str, Any]) -> list[LedgerRecord]:
        kind = str(block.get("type"))
        self._kinds[number] = kind
        records: list[LedgerRecord] = []
        ref = tool_use_id(block)
        if ref is not None:
            records.append(self._collect.record("tool", [tool_key(ref)]))
            initial = block.get("input")
            self._raw[number] = "" if not initial else "\n".join(partial_json_strings(_json(initial)))
        else:
            self._raw[number] = str(block.get("text") or block.get("thinking") or "")
        blobs = [blob_value(digest) for digest in block_blobs(block)]
        if blobs:
            records.append(self._collect.record("blob.produced", blobs))
        return records + self._grow(number)

    def _text(self, number: int) -> str:
        raw = self._raw.get(number, "")
        if self._kinds.get(number) in ("tool_use", "server_tool_use", "mcp_tool_use"):
            return "\n".join(partial_json_strings(raw))
        return raw

    def _grow(self, number: int) -> list[LedgerRecord]:
        folded = fold_uncached(self._text(number))
        start = max(0, self._folded_length.get(number, 0) - _REVISIT)
        self._folded_length[number] = len(folded)
        if not folded:
            return []
        values = difference(difference(folded_fingerprints(folded[start:]), self.base), self._recorded)
        if not len(values):
            return []
        self._recorded = union(self._recorded, values)
        return [self._collect.record("span.produced", values)]


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def cloud_sightings(
    body: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    lineage: Lineage,
    index: LedgerIndex,
    plan: CloudPlan,
    *,
    session: str,
    protect_context: bool,
) -> list[LedgerRecord]:
    """What to remember once the cloud has answered a request: where it has now received messages.

    Only worth recording while there is local content to tell apart from cloud content; client
    context is recorded always under ``protect_client_context``, since the cloud having seen it is
    what keeps a later local turn from making it local.
    """
    out: list[LedgerRecord] = []
    if index.holds_local:
        seen = {
            seen_key(step.before, step.identity)
            for step in lineage.steps
            if step.cls in ("unseen", "new")
            and step.index not in plan.unsent
            and not index.seen(seen_key(step.before, step.identity))
        }
        if seen:
            out.append(LedgerRecord.of("seen", seen, origin="cloud"))
        value = reply_key(lineage.reply_before)
        if not index.seen_reply(value):
            out.append(LedgerRecord.of("seen.reply", [value], origin="cloud"))
    if protect_context:
        visible = {
            context_key(anchor, tag, text_identity(text) or fold(text))
            for _path, anchor, tag, text in context_items(body, messages, lineage)
        }
        fresh = {
            value for value in visible if not index.seen_context(value) and not index.local_context(value, session)
        }
        if fresh:
            out.append(LedgerRecord.of("seen.context", fresh, origin="cloud"))
    return out


# ------------------------------------------------------------------------------------ the cloud payload


@attrs.frozen
class Blocked:
    """The egress guard refused the request; ``message`` says what was found where, and what to do."""

    paths: tuple[str, ...]
    message: str


@attrs.frozen
class CloudPlan:
    """What the cloud may receive of a request, and what was kept back."""

    messages: list[JSON]
    system: Any
    changed: bool
    withheld_blocks: int = 0
    withheld_turns: int = 0
    #: Unvetted history blocks that content matching withheld (provenance could not vouch for them).
    vetted_blocks: int = 0
    #: Where the guard found local content in new content (redacted or, with ``warn``, sent anyway).
    guard_hits: tuple[str, ...] = ()
    #: Messages of which a block was kept back by content matching or redacted: the cloud has not
    #: received them whole, so they are not remembered as seen.
    unsent: frozenset[int] = frozenset()


#: Stands for a request without a system prompt (so one that is withheld whole can be told apart).
NO_SYSTEM: Final = object()


class _Scan:
    """Content matching over a request, with what the cloud already has as the exemption."""

    def __init__(self, index: LedgerIndex, messages: Sequence[Mapping[str, Any]], lineage: Lineage) -> None:
        self.index = index
        self.messages = messages
        self.lineage = lineage
        self._seen: list[Any] | None = None

    def _seen_blocks(self) -> list[Any]:
        """The blocks of the messages the cloud is known to have received (computed when first needed)."""
        if self._seen is None:
            self._seen = [
                block
                for step in self.lineage.steps
                if step.cls == "seen"
                for number, block in enumerate(content_blocks(self.messages[step.index]))
                if number not in step.local_blocks
            ]
        return self._seen

    def _cloud_has(self, hits: U64) -> bool:
        """Whether every matched fingerprint also occurs in what the cloud has received: then sending it
        again discloses nothing. Looks only for the few matched values, text by text, and stops as soon
        as all are found — matches are rare, and most requests never get here."""
        missing = sorted_unique(hits)
        for block in reversed(self._seen_blocks()):  # what overlaps new content is mostly recent
            for text in block_texts(block):
                if len(text) < 16:
                    continue
                missing = missing[~member(sorted_fingerprints(strip_reminders(text)), missing)]
                if not len(missing):
                    return True
        return False

    def texts_hit(self, texts: Iterable[str], scope: Scope | None) -> bool:
        parts = [query_fingerprints(text) for text in texts if len(text) >= 16]
        if not parts:
            return False
        values = np.concatenate(parts)
        hits = values[self.index.span_hits(values, scope)]
        return bool(len(hits)) and not self._cloud_has(hits)

    def block_hit(self, block: Any, scope: Scope | None) -> bool:
        blobs = {blob_value(digest) for digest in block_blobs(block)}
        matched = {value for value in blobs if self.index.blob_hit(value, scope)}
        if matched:
            seen = {blob_value(digest) for seen in self._seen_blocks() for digest in block_blobs(seen)}
            if matched - seen:
                return True
        return self.texts_hit((strip_reminders(text) for text in block_texts(block)), scope)


def _guard_scope(step: Step, block: Any) -> Scope | None:
    """What a block is checked against: the user's own words against everything local turns saw or
    said; a tool result or the cloud's own words against what local turns produced."""
    if block_type(block) == "tool_result" or (step.role == "assistant" and step.cls == "unseen"):
        return "produced"
    return None


def _context_hit(scan: _Scan, text: str) -> bool:
    """Client context (system prompt, tool descriptions, reminders) is re-sent with every request:
    its verdict is cached on the index until the ledger's content changes."""
    cache = scan.index.context_verdicts
    cache_key = (scan.index.version, text)
    found = cache.get(cache_key)
    if found is None:
        found = scan.texts_hit([text], "produced")
        cache[cache_key] = found
        while len(cache) > 2048:
            cache.popitem(last=False)
    else:
        cache.move_to_end(cache_key)
    return found


def plan_cloud(
    body: Mapping[str, Any],
    messages: Sequence[JSON],
    lineage: Lineage,
    index: LedgerIndex,
    *,
    session: str,
    notice: bool,
    egress_action: EgressAction,
    protect_context: bool,
) -> CloudPlan | Blocked:
    """The messages (and system prompt) the cloud may receive, or why the request may not go at all.

    * Local blocks — by provenance — are withheld, the current turn included; client context inside
      them (reminders) stays, unless ``protect_context`` makes what a local turn saw of it local.
    * Unvetted history (messages the cloud never received and provenance cannot place) is checked by
      content matching; a block holding local content is withheld, never refused: re-sent history
      must not trip the guard, or a conversation would be stuck.
    * New content — the last user message and what follows, the system prompt, tool descriptions and
      client context — goes through the egress guard: ``block`` refuses the request, ``redact``
      replaces what matched, ``warn`` sends it and reports where.
    The result stays a valid Messages request (no orphan tool results, no tool call without a result,
    opening with a user message); an optional notice says how many turns were withheld, never what
    they said, and only when a turn was.
    """
    system = body.get("system", NO_SYSTEM)
    if not index.holds_local:
        return CloudPlan(list(messages), system, False)
    steps = lineage.by_index()
    scan = _Scan(index, messages, lineage)
    kept: list[JSON] = []
    withheld_blocks = withheld_turns = vetted = 0
    in_run = False
    first_gap: int | None = None
    dropped_uses: set[str] = set()
    withheld_results: set[str] = set()
    hits: list[str] = []
    unsent: set[int] = set()
    prompt_lost = False
    withheld_context = _local_context(body, messages, lineage, index, session) if protect_context else set()
    for position, message in enumerate(messages):
        step = steps.get(position)
        blocks = content_blocks(message)
        if step is None:  # a system message inside messages: client context
            texts = [_text_of(block) for block in blocks]
            paths = [f"messages.{position}.content.{number}" for number in range(len(blocks))]
            if any(pair in withheld_context for pair in zip(paths, texts, strict=True)):
                withheld_blocks += len(blocks)
                continue
            hits.extend(path for path, text in zip(paths, texts, strict=True) if text and _context_hit(scan, text))
            kept.append(message)
            continue
        survivors: list[Any] = []
        lost = context_lost = 0
        rewritten = False
        for number, block in enumerate(blocks):
            path = f"messages.{position}.content.{number}"
            if number in step.local_blocks:
                lost += 1
                _note_ids(block, dropped_uses, withheld_results)
                remainder = _kept_context(block, path, withheld_context)
                if remainder is not None:
                    survivors.append(remainder)
                continue
            if number in step.context_blocks:
                remainder = _kept_context(block, path, withheld_context) if withheld_context else block
                if remainder is None:
                    context_lost += 1
                    continue
                if step.cls != "seen" and _context_hit(scan, str(block.get("text", ""))):
                    hits.append(path)
                survivors.append(remainder)
                continue
            if step.cls == "unseen" and scan.block_hit(block, _guard_scope(step, block)):
                vetted += 1
                unsent.add(position)
                _note_ids(block, dropped_uses, withheld_results)
                continue
            if step.cls == "new" and scan.block_hit(block, _guard_scope(step, block)):
                hits.append(f"messages.{position}.content.{number}")
                if egress_action == "redact":
                    # Here, not by position afterwards: repair and the notice move blocks about.
                    block = _redacted(block)
                    rewritten = True
                    unsent.add(position)
            survivors.append(block)
        withheld_blocks += lost + context_lost
        if position == lineage.new_start and lost and all(context_only(block) for block in survivors):
            prompt_lost = True
        if lost:  # a turn's content, not just client context
            if not in_run:
                withheld_turns += 1
            in_run = True
        else:
            in_run = False
        if len(survivors) != len(blocks) or lost or context_lost:
            if first_gap is None:
                first_gap = len(kept)
            if survivors:
                kept.append({**message, "content": survivors})
        elif rewritten:
            kept.append({**message, "content": survivors})
        else:
            kept.append(message)
    system, system_hits = _plan_system(system, scan, withheld_context)
    hits = system_hits + hits + _tool_hits(body, scan)
    if hits and egress_action == "block":
        return Blocked(tuple(hits), _refusal(hits))
    changed = bool(withheld_blocks or vetted) or system is not body.get("system", NO_SYSTEM)
    if withheld_blocks or vetted:
        kept = _repair(kept, dropped_uses, withheld_results)
        if notice and withheld_turns:
            kept = _add_notice(kept, first_gap or 0, withheld_turns)
    if hits and egress_action == "redact":
        system = _redact_system(system, system_hits)
        changed = True
    if prompt_lost or not any(message.get("role") == "user" for message in kept):
        return Blocked(
            (),
            "Trooper refused to send this request to the cloud: everything in it stood in a local turn of this "
            "conversation and stays local. Run it locally (start the prompt with ::local, or send "
            "x_force_local: true), or send a new prompt.",
        )
    return CloudPlan(kept, system, changed, withheld_blocks, withheld_turns, vetted, tuple(hits), frozenset(unsent))


def _refusal(paths: Sequence[str]) -> str:
    where = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return (
        f"Trooper refused to send this request to the cloud: {where} holds content that a local turn received "
        "or produced. Remove that content, or run this turn locally (start the prompt with ::local, or send "
        "x_force_local: true)."
    )


def _text_of(block: Any) -> str:
    if isinstance(block, str):
        return block
    return str(block.get("text", "")) if isinstance(block, Mapping) else ""


def _note_ids(block: Any, dropped_uses: set[str], withheld_results: set[str]) -> None:
    used = tool_use_id(block)
    if used is not None:
        dropped_uses.add(used)
    answered = tool_result_id(block)
    if answered is not None:
        withheld_results.add(answered)


def _local_context(
    body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], lineage: Lineage, index: LedgerIndex, session: str
) -> set[tuple[str, str]]:
    """``(path, text)`` of the client context that local turns of this lineage saw and the cloud did not."""
    out: set[tuple[str, str]] = set()
    for path, anchor, tag, text in context_items(body, messages, lineage):
        value = context_key(anchor, tag, text_identity(text) or fold(text))
        if index.local_context(value, session) and not index.seen_context(value):
            out.add((path, text))
    return out


def _kept_context(block: Any, path: str, withheld: set[tuple[str, str]]) -> JSON | None:
    """What of a text block's reminders stays for the cloud (None: nothing)."""
    if block_type(block) != "text":
        return None
    segments = [segment for segment in reminders(str(block.get("text", ""))) if (path, segment) not in withheld]
    if not segments:
        return None
    return {**{k: v for k, v in block.items() if k != "citations"}, "text": "\n".join(segments)}


def _plan_system(system: Any, scan: _Scan, withheld: set[tuple[str, str]]) -> tuple[Any, list[str]]:
    if system is NO_SYSTEM:
        return system, []
    hits: list[str] = []
    if isinstance(system, str):
        if ("system", system) in withheld:
            return NO_SYSTEM, []
        return system, ["system"] if _context_hit(scan, system) else []
    if isinstance(system, list):
        kept = []
        for number, block in enumerate(system):
            text = str(block.get("text", "")) if isinstance(block, Mapping) else ""
            if (f"system.{number}", text) in withheld:
                continue
            if text and _context_hit(scan, text):
                hits.append(f"system.{number}")
            kept.append(block)
        return (kept if len(kept) != len(system) else system), hits
    return system, hits


def _tool_hits(body: Mapping[str, Any], scan: _Scan) -> list[str]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    hits = []
    for number, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            text = f"{tool.get('name', '')}\n{tool.get('description', '')}"
            if _context_hit(scan, text):
                hits.append(f"tools.{number}")
    return hits


def _repair(messages: list[JSON], dropped_uses: set[str], withheld_results: set[str]) -> list[JSON]:
    """Keep the request valid: no orphan tool_result, no tool_use without its result, roles merged."""
    fixed: list[JSON] = []
    for message in messages:
        blocks = content_blocks(message)
        new_blocks = [block for block in blocks if tool_result_id(block) not in dropped_uses]
        if not new_blocks:
            continue
        if len(new_blocks) != len(blocks):
            message = {**message, "content": new_blocks}
        if fixed and fixed[-1].get("role") == message.get("role") and message.get("role") in ("user", "assistant"):
            fixed[-1] = _merge(fixed[-1], message)
        else:
            fixed.append(message)
    for position, message in enumerate(fixed):
        if message.get("role") != "assistant":
            continue
        uses = [used for used in map(tool_use_id, content_blocks(message)) if used is not None]
        following = _next_turn_message(fixed, position)
        answered = (
            {ref for ref in map(tool_result_id, content_blocks(fixed[following])) if ref}
            if following is not None and fixed[following].get("role") == "user"
            else set()
        )
        missing = [used for used in uses if used in withheld_results and used not in answered]
        if not missing:
            continue
        placeholders = [{"type": "tool_result", "tool_use_id": used, "content": WITHHELD_RESULT} for used in missing]
        if following is not None and fixed[following].get("role") == "user":
            fixed[following] = {**fixed[following], "content": placeholders + content_blocks(fixed[following])}
        else:
            fixed.insert(position + 1, {"role": "user", "content": placeholders})
    first = _next_turn_message(fixed, -1)
    if first is not None and fixed[first].get("role") != "user":
        fixed.insert(first, {"role": "user", "content": [{"type": "text", "text": OPENING}]})
    return fixed


def _next_turn_message(messages: Sequence[Mapping[str, Any]], after: int) -> int | None:
    for position in range(after + 1, len(messages)):
        if messages[position].get("role") in ("user", "assistant"):
            return position
    return None


def _merge(first: JSON, second: JSON) -> JSON:
    blocks = content_blocks(first) + content_blocks(second)
    if first.get("role") == "user":  # tool_result blocks must lead a user message
        results = [block for block in blocks if block_type(block) == "tool_result"]
        others = [block for block in blocks if block_type(block) != "tool_result"]
        blocks = results + others
    return {**first, "content": blocks}


def _add_notice(messages: list[JSON], at: int, turns: int) -> list[JSON]:
    plural = turns != 1
    text = (
        f"[Trooper: {turns} earlier turn{'s' if plural else ''} of this conversation ran on a local model and "
        f"{'are' if plural else 'is'} withheld from the cloud.]"
    )
    note = {"type": "text", "text": text}
    for position in range(min(at, len(messages)), len(messages)):
        message = messages[position]
        if message.get("role") == "user":
            blocks = content_blocks(message)
            lead = [block for block in blocks if block_type(block) == "tool_result"]
            messages[position] = {**message, "content": [*lead, note, *blocks[len(lead) :]]}
            return messages
    return messages


def _redacted(block: Any) -> Any:
    """``block`` with what the guard matched replaced, its shape kept (a tool call keeps its id)."""
    if block_type(block) == "tool_result":
        return {"type": "tool_result", "tool_use_id": block.get("tool_use_id"), "content": REDACTED}
    if block_type(block) == "tool_use":
        return {**block, "input": {}}
    return {"type": "text", "text": REDACTED}


def _redact_system(system: Any, system_hits: list[str]) -> Any:
    if not system_hits:
        return system
    if isinstance(system, str):
        return REDACTED
    if isinstance(system, list):
        numbers = {int(path.split(".")[1]) for path in system_hits if "." in path}
        return [
            {"type": "text", "text": REDACTED} if number in numbers else block for number, block in enumerate(system)
        ]
    return system


__all__ = [
    "NO_SYSTEM",
    "OPENING",
    "REDACTED",
    "WITHHELD_RESULT",
    "Blocked",
    "CloudPlan",
    "EgressAction",
    "LedgerIndex",
    "LedgerRecord",
    "Origin",
    "ReplyRecorder",
    "cloud_sightings",
    "cloud_visible",
    "plan_cloud",
    "record_local_turn",
    "summary_records",
]
