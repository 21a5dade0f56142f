"""Per-turn extraction for the extractive SITREP.

A turn is read once (then cached by fingerprint) and turned into *candidates*: short entries for the
SITREP's fixed sections, each with the exact entity strings it carries and the content words used to
judge its rarity. Nothing here looks at other turns, which is what makes the extract cacheable; rarity
across the conversation is applied later (:mod:`trooper.memory.sitrep`).

Why these rules: research on offline compaction found that a cheap salience heuristic — rare words,
names, numbers — keeps clearly more answerable facts than a recency window or TextRank on chat. So the
extractor keeps exact strings (identifiers, paths, URLs, numbers with units, emails, names, dates,
versions, hashes, ticket ids), keeps user instructions near-verbatim (losing a constraint is the costliest
mistake a summary makes), and reduces tool calls to "name + key argument → outcome", flagging errors.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from trooper.memory._lexicon import (
    CONSTRAINT_RE,
    DECISION_RE,
    ERROR_RE,
    IMPERATIVES,
    NAME_STOP,
    OPEN_RE,
    STOPWORDS,
    TOOL_ARG_KEYS,
)
from trooper.memory.turns import blocks, content_text, is_prompt, json_text

__all__ = [
    "Candidate",
    "Entity",
    "Section",
    "TurnExtract",
    "extract_turn",
    "find_entities",
    "split_sentences",
]


class Section(enum.IntEnum):
    """SITREP sections, in rendering order."""

    GOALS = 0
    DECISIONS = 1
    FACTS = 2
    TOOLS = 3
    OPEN = 4


SECTION_TITLES: Final = {
    Section.GOALS: "Goals and constraints",
    Section.DECISIONS: "Decisions",
    Section.FACTS: "Facts",
    Section.TOOLS: "Tool actions",
    Section.OPEN: "Open items",
}

# Static prior of each section: user instructions and decisions matter most; bare facts must earn
# their place through their entities' rarity.
_PRIOR: Final = {
    Section.GOALS: 1.2,
    Section.DECISIONS: 2.0,
    Section.FACTS: 0.3,
    Section.TOOLS: 0.6,
    Section.OPEN: 1.0,
}
#: Extra prior of a hard constraint ("never", "must", "always", "don't"…): the costliest thing to lose.
_CONSTRAINT_BONUS: Final = 2.0
#: Entities of a tool's *output* say less about what happened than its arguments (a log's first line
#: is arbitrary); they count at this fraction unless the call failed.
_OUTPUT_DAMPING: Final = 0.3

#: Scan at most this much of one block: a pasted 1 MB log must not cost 1 MB of regex per turn.
MAX_SCAN: Final = 24_000
#: Keep at most this many candidates per turn (the highest-prior ones).
MAX_CANDIDATES: Final = 80

_LIMIT: Final = {
    Section.GOALS: 300,
    Section.DECISIONS: 220,
    Section.FACTS: 110,
    Section.TOOLS: 200,
    Section.OPEN: 180,
}

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_UNITS = (
    r"%|ms|µs|us|ns|s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?|days?|weeks?|months?|years?|"
    r"[KMGTP]i?B|[kmgt]b|bytes?|px|rps|qps|req/s|rpm|fps|[kK]|x|°[CF]|km|cm|mm|kg|lbs?|tokens?|"
    r"lines?|rows?|users?|requests?|cores?|vCPUs?|CPUs?|GPUs?|nodes?|replicas?|pods?|workers?|"
    r"threads?|connections?|retries|attempts?|files?|tests?|errors?|items?|records?|customers?|"
    r"EUR|USD|GBP|CHF|dollars?|euros?|points?|pts"
)
_TLD = (
    r"com|org|net|io|dev|ai|app|cloud|co|internal|local|lan|corp|svc|cluster|edu|gov|uk|de|fr|eu|us|"
    r"me|sh|tech|xyz|info|biz|int"
)

# Alternations tried left to right at each position: the order is the priority when two kinds could
# start at the same character (a URL before the path inside it, a date before a number). Kinds that
# start with a word character sit behind one ``(?<!\w)(?=\w)`` guard, so the scan skips the inside
# of ordinary words with a single check instead of trying every alternative there (several times
# faster on prose).
_WORD_START: Final = [
    r"(?P<url>(?:https?|ftp|wss?|s3|gs|git|ssh)://[^\s<>\"'`\]\)}|]+)",
    r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\b)",
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)",
    r"(?P<timestamp>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)",
    r"(?P<date>\d{4}-\d{2}-\d{2}\b"
    r"|\d{1,2}/\d{1,2}/\d{2,4}\b"
    rf"|{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?\b"
    rf"|\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}(?: \d{{4}})?\b)",
    r"(?P<ip>\d{1,3}(?:\.\d{1,3}){3}(?::\d{2,5})?(?:/\d{1,2})?\b)",
    r"(?P<version>v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?\b|v\d+(?:\.\d+)?\b)",
    r"(?P<ticket>[A-Z][A-Z0-9]{1,9}-\d{1,6}\b)",
    r"(?P<path>(?:[\w@+-][\w.@+-]*/)+[\w.@+-]*\.[A-Za-z][A-Za-z0-9]{0,7}\b"
    r"|(?:[\w@+-][\w.@+-]*/){2,}[\w.@+-]+)",
    rf"(?P<host>(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+(?:{_TLD})(?::\d{{2,5}})?\b"
    r"|[a-z][\w-]*:\d{2,5}\b)",
    r"(?P<hash>(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,64}\b)",
    rf"(?P<quantity>\d[\d,]*(?:\.\d+)?\s?(?:{_UNITS})(?![\w]))",
    r"(?P<time>\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?[Mm]\.?)?(?:\s?(?:UTC|GMT|[A-Z]{2,4}T))?\b)",
    r"(?P<ident>[A-Za-z_]\w+(?:\.[A-Za-z_]\w+)+\b"
    r"|[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+\b"
    r"|[a-z]+[A-Z][A-Za-z0-9]*\b"
    r"|[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b)",
    r"(?P<alnum>(?=[A-Za-z0-9-]*\d)(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+\b"
    r"|(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{4,}\b)",
    r"(?P<name>[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
    r"(?:[ ]+(?:(?:van|von|de|da|del|der|la|le|bin|al|di)[ ]+)?[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?){1,3}\b)",
    r"(?P<number>\d+(?:[.,]\d+)+\b|\d{3,}\b)",
]
_OTHER_START: Final = [
    r"(?P<money>[$€£¥]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:[kKmMbB]n?|million|billion)\b)?)",
    r"(?P<issue>(?<![\w&#])#\d{2,7}\b)",
    r"(?P<abspath>(?<![\w:/.])(?:~|\.\.?)?(?:/[\w.@+-]+){2,}/?)",
    r"(?P<code>`[^`\n]{2,80}`)",
]
_ENTITY_RE: Final = re.compile(r"(?<!\w)(?=\w)(?:" + "|".join(_WORD_START) + ")|" + "|".join(_OTHER_START))
#: Group names that are spellings of another kind.
_ALIAS: Final = {"issue": "ticket", "abspath": "path"}

#: How much an entity kind says on its own (multiplied by its rarity in the conversation).
KIND_WEIGHT: Final[Mapping[str, float]] = {
    "url": 3.0,
    "email": 3.0,
    "uuid": 2.0,
    "date": 2.5,
    "timestamp": 0.6,
    "ip": 2.5,
    "version": 2.5,
    "money": 2.5,
    "ticket": 2.5,
    "path": 2.0,
    "host": 2.5,
    "hash": 1.5,
    "quantity": 1.8,
    "time": 1.5,
    "code": 2.0,
    "ident": 1.5,
    "alnum": 1.5,
    "name": 2.0,
    "number": 0.8,
}
#: Kinds strong enough to pull a line out of a tool result or a code block.
_STRONG: Final = frozenset({"url", "email", "uuid", "date", "ip", "version", "money", "ticket", "host", "hash", "path"})

_WORD_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_'-]{2,}")
_SENT_RE: Final = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[`*_A-Z0-9])")
_ABBREV_RE: Final = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|Mr|Mrs|Ms|Dr|No|Fig|St)\.)$", re.IGNORECASE)
_BULLET_RE: Final = re.compile(r"^\s*(?:[-*+•>]+|\d{1,3}[.)]|#{1,6})\s+")
_DEF_RE: Final = re.compile(
    r"^\s*(?:export\s+)?(?:async\s+)?(?:def|class|function|func|fn|interface|struct|enum|trait|impl|"
    r"type|const|let|var|CREATE\s+TABLE|create\s+table)\s+([A-Za-z_][\w.]*)",
    re.MULTILINE,
)
_TRAILING: Final = ".,;:!?)]}'\""


class Entity(NamedTuple):
    """An exact string worth keeping, with its kind and position in the sentence it came from."""

    kind: str
    text: str
    start: int
    end: int


class Candidate(NamedTuple):
    """One possible SITREP entry, as extracted from a single turn.

    ``prior`` is the static part of its salience (section, cue words, entity kinds); the rarity part
    is added by the SITREP from in-conversation document frequencies of ``ekeys`` and ``terms``.
    """

    section: Section
    text: str
    #: Normalised text for de-duplication across turns.
    key: str
    #: Exact entity strings, as they appear (what must survive verbatim).
    entities: tuple[str, ...]
    #: Lower-cased entity strings (coverage and rarity keys), aligned with ``weights``.
    ekeys: tuple[str, ...]
    weights: tuple[float, ...]
    #: Distinct content words of the entry (rarity).
    terms: tuple[str, ...]
    prior: float
    #: Position within the turn (stable tie-breaker).
    seq: int


class TurnExtract(NamedTuple):
    """Everything the SITREP needs from one turn; a pure function of the turn's content."""

    candidates: tuple[Candidate, ...]
    #: Every distinct content word and entity key of the turn (the turn's contribution to document
    #: frequencies).
    terms: frozenset[str]
    #: Entity keys present anywhere in the turn (used to mark them covered when the turn is shown
    #: verbatim in the Anchor or the Tail).
    ekeys: frozenset[str]
    #: De-duplication keys of the candidates (entries already visible when the turn is shown).
    keys: frozenset[str] = frozenset()


# --------------------------------------------------------------------------------------- helpers


_OPAQUE_RE: Final = re.compile(r"[0-9a-f]{6,}|\d{4,}|(?=[a-z]*\d)[a-z0-9]{5,}(?![a-z])", re.IGNORECASE)


def entity_weight(entity: Entity) -> float:
    """How much an entity says on its own.

    Opaque machine identifiers (request ids, pod suffixes, long hex runs inside names) are everywhere
    in tool output and rarely what a reader needs later, so identifier-like kinds that are mostly
    random characters weigh less than readable ones (``checkout_fjord_v7``, ``ACME_EMBER_TIMEOUT``).
    """
    weight = KIND_WEIGHT.get(entity.kind, 1.0)
    if entity.kind in ("ident", "alnum", "code"):
        noise = sum(len(m) for m in _OPAQUE_RE.findall(entity.text))
        if noise * 3 >= len(entity.text):
            weight = 0.7
    return weight


def find_entities(text: str) -> list[Entity]:
    """Exact entity strings in ``text`` (non-overlapping, left to right)."""
    out: list[Entity] = []
    for m in _ENTITY_RE.finditer(text):
        kind = m.lastgroup or "number"
        kind = _ALIAS.get(kind, kind)
        s, e = m.span()
        value = m.group()
        if kind in ("url", "path"):
            stripped = value.rstrip(_TRAILING)
            e -= len(value) - len(stripped)
            value = stripped
        elif kind == "code":
            value = value[1:-1].strip()
            s, e = s + 1, e - 1
            if not value:
                continue
        elif kind == "name":
            words = value.split()
            while words and words[0] in NAME_STOP:
                words = words[1:]
            while words and words[-1] in NAME_STOP:
                words = words[:-1]
            if len(words) < 2:
                continue
            lo = value.index(words[0])
            hi = value.rindex(words[-1]) + len(words[-1])
            s, e, value = s + lo, s + hi, value[lo:hi]
        elif kind == "ident" and value.count(".") == 1 and value.split(".")[1].lower() in _COMMON_TAIL:
            continue
        out.append(Entity(kind, value, s, e))
    return out


# "done.Next" or "e.g.example" would otherwise look like dotted identifiers.
_COMMON_TAIL: Final = frozenset({"the", "and", "but", "then", "next", "also", "this", "that"})


def split_sentences(text: str) -> list[str]:
    """Lines, then sentences: a dependency-free splitter that respects common abbreviations."""
    out: list[str] = []
    for raw in text.splitlines():
        line = _BULLET_RE.sub("", raw).replace("**", "").strip()
        if not line:
            continue
        parts = _SENT_RE.split(line)
        buf = ""
        for part in parts:
            buf = f"{buf} {part}" if buf else part
            if _ABBREV_RE.search(buf):
                continue
            out.append(buf.strip())
            buf = ""
        if buf:
            out.append(buf.strip())
    return out


def _words(text: str) -> list[str]:
    return [w for w in (m.lower() for m in _WORD_RE.findall(text)) if w not in STOPWORDS]


def _norm_key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))[:160]


def _clip(text: str, entities: Sequence[Entity], limit: int) -> str:
    """Clip ``text`` to about ``limit`` characters, keeping the window that holds its entities."""
    if len(text) <= limit:
        return text
    if not entities:
        cut = text.rfind(" ", 0, limit - 1)
        cut = cut if cut > limit // 2 else limit - 1
        return text[:cut].rstrip() + "…"
    a, b = entities[0].start, entities[-1].end
    if b - a > limit - 2:
        best = max(entities, key=lambda e: (KIND_WEIGHT.get(e.kind, 1.0), -e.start))
        a, b = best.start, best.end
    room = max(0, limit - (b - a))
    # More context before the entities than after: the subject of a sentence usually precedes them.
    s, e = max(0, a - room * 3 // 5), min(len(text), b + room * 2 // 5)
    if s == 0:
        e = min(len(text), max(e, limit))
    if e == len(text):
        s = max(0, min(s, len(text) - limit))
    if s > 0:
        sp = text.find(" ", s, a)
        s = sp + 1 if sp != -1 else s
    if e < len(text):
        sp = text.rfind(" ", b, e)
        e = sp if sp != -1 else e
    return ("…" if s > 0 else "") + text[s:e].strip() + ("…" if e < len(text) else "")


def _scan(text: str) -> str:
    if len(text) <= MAX_SCAN:
        return text
    head = MAX_SCAN * 3 // 4
    return text[:head] + "\n" + text[-(MAX_SCAN - head) :]


class _Builder:
    """Accumulates the candidates and terms of one turn."""

    def __init__(self) -> None:
        self.cands: list[Candidate] = []
        self.terms: set[str] = set()
        self.ekeys: set[str] = set()
        self.seq = 0

    def add(
        self,
        section: Section,
        text: str,
        entities: Sequence[Entity],
        bonus: float = 0.0,
        damped: frozenset[str] = frozenset(),
    ) -> None:
        text = _clip(text, entities, _LIMIT[section])
        kept = [e for e in entities if text.find(e.text) != -1]
        ekeys = tuple(dict.fromkeys(e.text.lower() for e in kept))
        weights: list[float] = []
        seen: set[str] = set()
        ents: list[str] = []
        for e in kept:
            k = e.text.lower()
            if k in seen:
                continue
            seen.add(k)
            ents.append(e.text)
            weights.append(entity_weight(e) * (_OUTPUT_DAMPING if e.text in damped else 1.0))
        terms = tuple(dict.fromkeys(_words(text)))
        self.cands.append(
            Candidate(
                section=section,
                text=text,
                key=_norm_key(text),
                entities=tuple(ents),
                ekeys=ekeys,
                weights=tuple(weights),
                terms=terms,
                prior=_PRIOR[section] + bonus,
                seq=self.seq,
            )
        )
        self.seq += 1

    def note(self, text: str, entities: Iterable[Entity]) -> None:
        self.terms.update(_words(text))
        for e in entities:
            k = e.text.lower()
            self.terms.add(k)
            self.ekeys.add(k)


# ---------------------------------------------------------------------------------- extraction


def extract_turn(messages: Sequence[Mapping[str, Any]]) -> TurnExtract:
    """Extract SITREP candidates from the messages of one turn."""
    b = _Builder()
    uses: list[tuple[str, str, Any]] = []  # (id, name, input) in order
    results: dict[str, tuple[str, bool]] = {}
    for message in messages:
        role = str(message.get("role", ""))
        prompt = is_prompt(message)
        for block in blocks(message.get("content")):
            kind = block.get("type")
            if kind == "text":
                _text(b, str(block.get("text", "")), role, prompt)
            elif kind == "tool_use":
                uses.append((str(block.get("id", "")), str(block.get("name", "tool")), block.get("input")))
            elif kind == "tool_result":
                text = content_text(block.get("content", ""))
                results[str(block.get("tool_use_id", ""))] = (text, bool(block.get("is_error")))
    for tid, name, tool_input in uses:
        result = results.pop(tid, None)
        _tool(b, name, tool_input, result)
    for text, _err in results.values():  # results whose tool_use is in another turn (clipped history)
        _tool_result_facts(b, _scan(text))
    cands = b.cands
    if len(cands) > MAX_CANDIDATES:
        keep = sorted(cands, key=lambda c: (-c.prior - sum(c.weights), c.seq))[:MAX_CANDIDATES]
        cands = sorted(keep, key=lambda c: c.seq)
    return TurnExtract(tuple(cands), frozenset(b.terms), frozenset(b.ekeys), frozenset(c.key for c in cands))


def _text(b: _Builder, text: str, role: str, prompt: bool) -> None:
    parts = _scan(text).split("```")
    for i, part in enumerate(parts):
        if i % 2:
            _code(b, part)
        else:
            _prose(b, part, role, prompt)


_HARD = (
    r"\b(?:never|must(?:n't| not)?|always|don't|do not|make sure|under no|only ever|at most|at least|"
    r"no more than|no later than|deadline|required|mandatory|not allowed|forbidden)\b"
)
# One case-sensitive scan of the lower-cased sentence finds every cue kind: four separate
# case-insensitive searches were four times slower, and this runs on every sentence of every turn.
_CUES_RE: Final = re.compile(
    f"(?P<hard>{_HARD})|(?P<constraint>{CONSTRAINT_RE.pattern})"
    f"|(?P<decision>{DECISION_RE.pattern})|(?P<open>{OPEN_RE.pattern})"
)


def _prose(b: _Builder, text: str, role: str, prompt: bool) -> None:
    user = role == "user"
    sentences = split_sentences(text)
    last = len(sentences) - 1
    for idx, sent in enumerate(sentences):
        ents = find_entities(sent)
        b.note(sent, ents)
        words = sent.split()
        if len(words) < 3 and not ents:
            continue
        first = words[0].lower().strip(",:;") if words else ""
        question = sent.endswith("?")
        cues = {m.lastgroup for m in _CUES_RE.finditer(sent.lower())}
        if user and not question and "hard" in cues:
            b.add(Section.GOALS, sent, ents, _CONSTRAINT_BONUS)
        elif user and not question and (first in IMPERATIVES or "constraint" in cues):
            b.add(Section.GOALS, sent, ents)
        elif "decision" in cues:
            b.add(Section.DECISIONS, sent, ents)
        elif "open" in cues or (not user and question and idx == last):
            b.add(Section.OPEN, sent, ents)
        elif ents:
            b.add(Section.FACTS, sent, ents)
        elif user and prompt and idx == 0 and len(words) >= 4 and not question:
            # The opening sentence of a prompt says what the turn was about.
            b.add(Section.GOALS, sent, ents, -0.6)


def _code(b: _Builder, code: str) -> None:
    lang, _, body = code.partition("\n")
    lang = lang.strip()[:20] if lang.strip().isidentifier() else ""
    names = list(dict.fromkeys(_DEF_RE.findall(body)))[:8]
    ents = find_entities(body)
    b.note(body, ents)
    if names:
        text = f"code{f' ({lang})' if lang else ''} defines " + ", ".join(names)
        b.add(Section.FACTS, text, find_entities(text), 0.2)
    strong = 0
    for line in body.splitlines():
        if strong >= 3:
            break
        le = [e for e in find_entities(line) if e.kind in _STRONG]
        if le:
            b.add(Section.FACTS, line.strip(), le, -0.1)
            strong += 1


def _args(tool_input: Any) -> str:
    if not isinstance(tool_input, Mapping):
        return "" if tool_input is None else json_text(tool_input)[:160]
    for key in TOOL_ARG_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            first = str(value).strip().splitlines()[0]
            return first[:160]
    parts = [f"{k}={v}" for k, v in tool_input.items() if isinstance(v, str | int | float | bool)][:2]
    return ", ".join(parts)[:160]


def _outcome(text: str, is_error: bool) -> tuple[str, bool]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("<")]
    err_line = next((ln for ln in lines[:200] if ERROR_RE.search(ln.lower())), None)
    error = is_error or (err_line is not None and lines.index(err_line) < 3)
    if error and err_line is not None:
        return err_line[:140], True
    if not lines:
        return ("(no output)" if not is_error else "failed"), is_error
    summary = lines[0][:140]
    if len(lines) > 1:
        summary += f" (+{len(lines) - 1} more)"
    return summary, error


def _tool(b: _Builder, name: str, tool_input: Any, result: tuple[str, bool] | None) -> None:
    args = _args(tool_input)
    scanned = _scan(result[0]) if result else ""
    if result is None:
        outcome, error = "(no result in this turn)", False
    else:
        outcome, error = _outcome(scanned, result[1])
    # Entities are found in the raw argument and outcome: the backticks added for display would
    # otherwise make the whole command one "code" entity.
    arg_ents = find_entities(args)
    out_ents = find_entities(outcome)
    b.note(args, arg_ents)
    text = f"{name}" + (f" `{args}`" if args else "") + f" → {'ERROR: ' if error else ''}{outcome}"
    ents = [_at(text, e) for e in (*arg_ents, *out_ents)]
    damped = frozenset() if error else frozenset(e.text for e in out_ents) - {e.text for e in arg_ents}
    b.add(Section.TOOLS, text, ents, 0.8 if error else 0.0, damped)
    if result is not None:
        _tool_result_facts(b, scanned)


def _at(text: str, e: Entity) -> Entity:
    """``e`` re-positioned in ``text`` (clipping uses positions)."""
    i = text.find(e.text)
    return e._replace(start=i, end=i + len(e.text)) if i != -1 else e


_TOKEN_CLASS: Final = re.compile(r"\S+")


def _shape(line: str) -> str:
    """A coarse template of a line: one letter per token class (word, number-ish, path-ish, other).

    Lines of a log or a listing share a shape; the line that does not is usually the one that says
    something (a template-mining idea, as in log parsers).
    """
    out = []
    for tok in _TOKEN_CLASS.findall(line):
        if any(ch.isdigit() for ch in tok):
            out.append("N")
        elif "/" in tok:
            out.append("P")
        elif tok.isalpha():
            out.append("W")
        else:
            out.append("O")
    return "".join(out)


def _tool_result_facts(b: _Builder, text: str) -> None:
    """At most three lines of a tool result carrying strong entities, odd-one-out lines first."""
    b.note(text, ())
    rows: list[tuple[str, list[Entity]]] = []
    shapes: dict[str, int] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        shape = _shape(stripped)
        shapes[shape] = shapes.get(shape, 0) + 1
        ents = find_entities(stripped)
        b.note(stripped, ents)
        if any(e.kind in _STRONG for e in ents):
            rows.append((stripped, ents))
    rows.sort(key=lambda r: shapes[_shape(r[0])] > 1)  # stable: unique shapes first, then in order
    routine_taken = 0
    for line, ents in rows[:3]:
        if shapes[_shape(line)] > 1:
            # A line shaped like its neighbours (a log line, a listing row): at most one, damped.
            if routine_taken:
                break
            routine_taken += 1
            b.add(Section.FACTS, line, ents, -0.3, frozenset(e.text for e in ents))
        else:
            b.add(Section.FACTS, line, ents)
