"""Per-turn extraction for the extractive SITREP: the turn's *units*.

A unit is a sentence or clause of the conversation kept as a span of one message — in the order its
words had there, attributed to its role and speaker — plus the content terms that could make it worth
keeping. Tool calls become a unit too: the call's key argument and the first line of what it returned
(or its error), each a span of its own block. Nothing here looks at other turns, which is what makes the
extract cacheable by the turn's fingerprint; how rare a term is in the conversation, and so what a unit
is worth, is decided later (:mod:`trooper.memory.sitrep`).

Why sentences and clauses: a SITREP is read by a model, so its entries must read like the conversation
— a bag of keywords or a clipped fragment around an identifier loses who said what and why. Why the
*light* compression only (interjections and intensifiers dropped, see :data:`~._lexicon.FILLER_WORDS`):
anything stronger starts changing what a line says.

What makes a unit informative is recorded here, per unit: its content terms (rare content words,
names, numbers with units, identifiers, dates), whether it is a question (which usually carries
little), whether the speaker talks about themselves (events, plans, preferences — what a later turn
asks about), and whether it reports work done or still open. Phatic lines (greetings, thanks,
acknowledgements) have no content terms at all and never become units.

Chat transcripts carry their own structure, which is honoured: a message whose every line reads
``Name: text`` is a transcript, its lines are attributed to their named speakers, and a line opening
with a bracketed date (``[29.12.2023, 22:42:04] Emi: Hey!``) starts a session on that date.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from trooper.memory._dates import SessionDate, find_session_date, relative_spans
from trooper.memory._lexicon import (
    DECISION_RE,
    DISCOURSE_MARKERS,
    DONE_RE,
    ERROR_RE,
    FILLER_WORDS,
    INTERJECTIONS,
    LEADING_WORDS,
    OPEN_RE,
    PHATIC,
    STOPWORDS,
    TOOL_ARG_KEYS,
)
from trooper.memory.turns import blocks, content_text, json_text, message_text

__all__ = [
    "CONTINUES",
    "DECISION",
    "DONE",
    "FAILED",
    "FIRST_PERSON",
    "OPEN",
    "QUESTION",
    "TurnExtract",
    "Unit",
    "UnitKind",
    "compress",
    "content_terms",
    "extract_turn",
    "split_sentences",
    "visible_terms",
]


class UnitKind(enum.IntEnum):
    """What a unit is a span of."""

    #: A sentence or clause someone wrote.
    SAID = 0
    #: A tool call (its key argument) and the first line of its outcome.
    TOOL = 1
    #: A line of a tool's output that stands out from the rest.
    OUTPUT = 2


#: Flags of a unit (bits of :attr:`Unit.flags`).
QUESTION: Final = 1
FIRST_PERSON: Final = 2
OPEN: Final = 4
DONE: Final = 8
FAILED: Final = 16
DECISION: Final = 32
#: The unit is a clause that continues a sentence (rendered after "…": its subject came before it).
CONTINUES: Final = 128
#: Internal: the span has a word :func:`compress` may drop (never set on a unit).
_FILLER: Final = 64


class Unit(NamedTuple):
    """One candidate SITREP entry: a span of one message, and what it is made of."""

    kind: UnitKind
    #: The role of the message it comes from (``user`` or ``assistant``).
    role: str
    #: Who said it, as rendered: the role, or the name a transcript line gives.
    speaker: str
    #: The span, lightly compressed (see :func:`compress`).
    text: str
    #: For a tool call: a span of its result (the error line, or the first line); else ``""``.
    outcome: str
    #: Distinct content terms (lower-cased), what coverage and rarity are computed on.
    terms: tuple[str, ...]
    #: Per term: how much more than an ordinary word it says (names, identifiers), or less (opaque ids).
    boosts: tuple[float, ...]
    flags: int
    #: Static multiplier of the unit's value (a routine line of tool output is worth less).
    prior: float
    #: Index in :attr:`TurnExtract.dates` of the session date in effect, or -1: the date the turn
    #: started with (set by an earlier turn, which only the running state knows).
    dated: int
    #: A relative-date expression in the text ("last Friday"), resolved when the session date is known.
    relative: str
    #: Index of the source message within the turn.
    message: int
    #: Position within the turn (the stable tie-breaker, and the rendering order).
    seq: int


class TurnExtract(NamedTuple):
    """Everything the SITREP needs from one turn; a pure function of the turn's content."""

    units: tuple[Unit, ...]
    #: Term → number of the turn's units that contain it (the turn's share of document frequencies).
    df: tuple[tuple[str, int], ...]
    #: Session dates started in this turn, in order (see :attr:`Unit.dated`).
    dates: tuple[SessionDate, ...]
    #: Per role: characters and messages of text the role wrote (how verbose each side is).
    chars: tuple[tuple[str, int, int], ...]


# ------------------------------------------------------------------------------------- terms

_CLITIC: Final = re.compile(r"(?:n't|'(?:s|re|ve|ll|d|m|t))\b")
# The same, by length, so blanking is a plain substitution (a callback per match is slow).
_CLITIC3: Final = re.compile(r"n't\b|'(?:re|ve|ll)\b")
_CLITIC2: Final = re.compile(r"'[sdmt]\b")
_TERM: Final = re.compile(r"[a-z0-9]+(?:[./:_@-][a-z0-9]+)*")
_PARTS: Final = re.compile(r"[a-z0-9]+")
_UNITS: Final = (
    r"%|ms|s|sec|secs|seconds?|mins?|minutes?|h|hrs?|hours?|days?|weeks?|months?|years?|kb|mb|gb|tb|k|m|x|"
    r"px|usd|eur|dollars?|euros?|points?|percent|calls|requests|users|commits|words|pages|items|times"
)
#: Amounts: money (kept whole, ``$27,651``: a figure that is a fact on its own) and numbers with a
#: unit (``12 gb``: the unit says what the number measures).
_AMOUNT: Final = re.compile(
    r"(?=[$€£¥\d])(?:"  # a cheap guard: most positions fail here, before the alternation is tried
    r"(?P<money>[$€£¥]\s?\d[\d,]*(?:\.\d+)?)"
    r"|(?<![\w.])(?P<n>\d[\d,]*(?:\.\d+)?)\s?(?P<u>%|(?:" + _UNITS.replace("%|", "") + r")\b)"
    r")"
)
#: Capitalised words inside a sentence (names, places, titles), and acronyms.
_PROPER: Final = re.compile(r"(?=[A-Z])(?:(?<=[a-z0-9,;:)] )([A-Z][A-Za-z]+)|\b([A-Z]{2,}[a-z]?)\b)")
#: Mostly random characters: hex runs, long digit runs, digit-letter mixes (request ids, pod suffixes).
_OPAQUE: Final = re.compile(r"[0-9a-f]{6,}|\d{4,}|(?=[a-z]*\d)[a-z0-9]{5,}(?![a-z])")
_JOINER: Final = re.compile(r"[./:_@-]")
_CURRENCY: Final = frozenset("$€£¥")
#: Stems a blanked-out contraction leaves behind ("can't" -> "ca", "won't" -> "wo").
_IGNORED: Final = STOPWORDS | PHATIC | {"ca", "wo", "ai"}
_APOSTROPHE_TABLE: Final = str.maketrans("’‘`´", "''''")

#: How much more than an ordinary word a name says; and an identifier (a path, a host, a flag).
PROPER_BOOST: Final = 1.5
IDENT_BOOST: Final = 2.0
#: An opaque identifier says little on its own (every log line has a fresh request id).
OPAQUE_BOOST: Final = 0.3


def content_terms(text: str) -> list[str]:
    """The content terms of ``text``, in order, with repeats: lower-cased words and compound tokens
    (``eu-west-1.internal``) with their parts, quantities (``12 gb``), minus stop words and phatic words.
    """
    lower = _folded(text)
    return _terms_of(_bare(lower), lower, 0, len(lower))


def _amount(m: re.Match[str]) -> str:
    money = m.group("money")
    if money is not None:
        return money.replace(" ", "")
    return f"{m.group('n').replace(',', '')} {m.group('u')}"


def _folded(text: str) -> str:
    """``text`` lower-cased with typographic apostrophes folded, character for character."""
    lower = text.lower()
    if len(lower) != len(text):  # a case mapping that changes lengths: offsets would not line up
        lower = "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)
    return lower if lower.isascii() else lower.translate(_APOSTROPHE_TABLE)


def _bare(lower: str) -> str:
    """``lower`` with contractions and possessives blanked out ("paola's" → "paola  "), length kept."""
    if "'" not in lower:
        return lower
    return _CLITIC2.sub("  ", _CLITIC3.sub("   ", lower))


def _terms_of(bare: str, lower: str, start: int, end: int) -> list[str]:
    """The content terms of ``lower[start:end]`` (``bare`` is ``lower`` with clitics blanked)."""
    out: list[str] = []
    if _DIGIT_RE.search(lower, start, end):
        out.extend(_amount(m) for m in _AMOUNT.finditer(lower, start, end))
    out.extend(_terms_from(_TERM.findall(bare, start, end)))
    return out


def _terms_from(tokens: Sequence[str]) -> list[str]:
    """The content terms among word tokens: compounds with their parts, stop and phatic words dropped."""
    out: list[str] = []
    ignored = _IGNORED
    if all(token.isalnum() for token in tokens):  # no compound token: the common case
        out.extend(t for t in tokens if t not in ignored and (len(t) > 1 or t.isdigit()))
        return out
    for token in tokens:
        if token in ignored:
            continue
        if token.isalnum():
            if len(token) > 1 or token.isdigit():
                out.append(token)
            continue
        out.append(token)
        out.extend(p for p in _PARTS.findall(token) if p not in ignored and (len(p) > 1 or p.isdigit()))
    return out


_DIGIT_RE: Final = re.compile(r"\d")
_HAS_DIGIT: Final = _DIGIT_RE.search


def _boosted(text: str, terms: Sequence[str], *, opaque: bool) -> tuple[float, ...]:
    return _boosts(terms, {(m.group(1) or m.group(2)).lower() for m in _PROPER.finditer(text)}, opaque=opaque)


def _boosts(terms: Sequence[str], names: set[str], *, opaque: bool = False) -> tuple[float, ...]:
    """Per term: a name or an identifier says more than a word. With ``opaque`` (tool output, where
    every line has a fresh request id or timestamp), a mostly random token says less; in what someone
    wrote, a hash or an id is usually a reference they chose to give."""
    if not names and all(term.isalpha() for term in terms):
        return (1.0,) * len(terms)  # plain words (most units): no name, identifier or opaque id
    out: list[float] = []
    for term in terms:
        boost = 1.0
        if term in names:
            boost = PROPER_BOOST
        elif not term.isalnum() and " " not in term and not term.replace(".", "").isdigit():
            boost = IDENT_BOOST
            if term[0] in _CURRENCY:
                out.append(boost)
                continue
        if opaque and not term.isalpha() and not term.isdigit() and " " not in term and _HAS_DIGIT(term):
            noise = sum(len(m) for m in _OPAQUE.findall(term))
            if noise * 2 >= len(term):
                boost = OPAQUE_BOOST
        out.append(boost)
    return tuple(out)


# ------------------------------------------------------------------------- sentences, clauses

_SENT_RE: Final = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[`*_A-Z0-9])")
_ABBREV_RE: Final = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|Mr|Mrs|Ms|Dr|No|Fig|St)\.)$", re.IGNORECASE)
#: Used with ``match(text, pos)``, which anchors at ``pos``: no ``^``, which would only match at line starts
#: in multi-line mode.
_BULLET_RE: Final = re.compile(r"\s*(?:[-*+•>]+|\d{1,3}[.)]|#{1,6})\s+")
_CLAUSE_RE: Final = re.compile(
    r"(?<=[,;:])\s+(?=(?:but|and|so|because|which|while|although|though|whereas|or|yet|since)\b)"
    r"|(?<=;)\s+|\s+[—–]\s+"
)
_WORD: Final = re.compile(r"\S+")
#: Sentences longer than this (in words) are cut at clause boundaries.
CLAUSE_WORDS: Final = 25
#: No unit is longer than this (a run-on line is cut into consecutive spans of this many words).
MAX_UNIT_WORDS: Final = 45


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentences of the line ``text[start:end]`` as ``(start, end)`` offsets (a bullet or heading
    mark excluded), respecting common abbreviations."""
    bullet = _BULLET_RE.match(text, start, end)
    pos = bullet.end() if bullet else start
    spans: list[tuple[int, int]] = []
    for m in _SENT_RE.finditer(text, pos, end):
        if _ABBREV_RE.search(text, max(pos, m.start() - 8), m.start()):  # "e.g." and the like end there
            continue
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, end))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


def split_sentences(text: str) -> list[str]:
    """Lines, then sentences: a dependency-free splitter that respects common abbreviations."""
    out: list[str] = []
    pos = 0
    for line in text.split("\n"):
        out.extend(text[s:e].replace("**", "") for s, e in _sentence_spans(text, pos, pos + len(line)))
        pos += len(line) + 1
    return [s.strip() for s in out if s.strip()]


def _clause_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """A long sentence as its clauses (each at least four words) and no span longer than
    :data:`MAX_UNIT_WORDS`; a short one as itself."""
    if text.count(" ", start, end) < CLAUSE_WORDS:  # fewer words than that: the common case, cheaply
        return [(start, end)]
    words = [m.span() for m in _WORD.finditer(text, start, end)]
    if len(words) <= CLAUSE_WORDS:
        return [(start, end)]
    cuts = [start, *(m.start() for m in _CLAUSE_RE.finditer(text, start, end)), end]
    spans: list[list[int]] = []
    for s, e in itertools.pairwise(cuts):
        n = sum(1 for w in words if s <= w[0] < e)
        if spans and (n < 4 or spans[-1][2] < 4):
            spans[-1][1] = e
            spans[-1][2] += n
        else:
            spans.append([s, e, n])
    out: list[tuple[int, int]] = []
    for s, e, _n in spans:
        inside = [w for w in words if s <= w[0] < e]
        for i in range(0, len(inside), MAX_UNIT_WORDS):
            chunk = inside[i : i + MAX_UNIT_WORDS]
            out.append((chunk[0][0], chunk[-1][1]))
    return out


_FILLER_RE: Final = re.compile(r"\b(?:" + "|".join(sorted(FILLER_WORDS)) + r")\b(?! \d)\s*", re.IGNORECASE)
_LEADING_RE: Final = re.compile(
    r"^(?:(?:" + "|".join(sorted(INTERJECTIONS)) + r")\b[\s,.!…]*"
    r"|(?:" + "|".join(sorted(DISCOURSE_MARKERS)) + r")\b\s*[,.!…]+\s*)+",
    re.IGNORECASE,
)
_SPACES: Final = re.compile(r"\s{2,}")


def compress(span: str) -> str:
    """``span`` without opening interjections and filler words (the only compression applied).

    Dropped words are exactly those of :data:`~._lexicon.LEADING_WORDS` (at the start; a discourse
    marker only when punctuation follows it) and
    :data:`~._lexicon.FILLER_WORDS` (anywhere, except "just" before a number, where it means "only"),
    and markdown emphasis marks; the rest keeps its order. A span that would lose all but one word is
    left as it was.
    """
    out = span.replace("**", "") if "**" in span else span
    if _LEADING_RE.match(out) is None and _FILLER_RE.search(out) is None:
        return out
    out = _FILLER_RE.sub("", _LEADING_RE.sub("", out))
    out = _SPACES.sub(" ", out).strip().lstrip(",;:.!?…- ")
    if len(out.split()) < 2:
        return span.replace("**", "")
    if out[0].islower() and span.lstrip("*")[:1].isupper():
        out = out[0].upper() + out[1:]
    return out


_CODE_PUNCT: Final = re.compile(r"[{}();=<>\[\]]")
_CODE_START: Final = re.compile(
    r"^\s*(?:def|class|import|from|const|let|var|return|function|public|private|#include|//|/\*|<\w|@\w)\b"
)


_LABEL: Final = re.compile(r"[\s*#`'\"]*[^\s`]+[\s`'\"]*[.:!]?|(?:\S+\s+){0,3}\S+:")


def _label_only(span: str) -> bool:
    """A heading or a label rather than a statement: one code span or file name on its own
    (``models.py``), or a few words ending with a colon ("Job Separation:")."""
    return ("`" in span and _LABEL.fullmatch(span.strip()) is not None) or (
        span.rstrip().endswith(":") and len(span.split()) <= 4
    )


def _code_like(line: str) -> bool:
    """A line of code outside a fence (it is not something anyone *said*)."""
    punct = len(_CODE_PUNCT.findall(line))
    return punct >= max(2, 0.04 * len(line)) or (punct >= 1 and bool(_CODE_START.match(line)))


# --------------------------------------------------------------------------------- speakers

_HEAD: Final = re.compile(  # used with match(text, pos), which anchors at pos
    r"\s*(?:\[(?P<date>[^\]\n]{4,40})\]\s*)?(?:(?P<name>[A-Za-z][\w.'-]*(?: [A-Za-z][\w.'-]*){0,2}):\s+(?=\S))?"
)


def _is_transcript(lines: Sequence[str]) -> bool:
    """Whether a message is a chat log pasted or relayed as one message: its first line reads
    ``Name: text``, and either every line does or at least two and half of them do (a line without a
    name continues the one before it: one chat message may span several lines). One labelled line
    followed by prose ("Note: …") is not a transcript."""
    named = total = 0
    for line in lines:
        if not line.strip():
            continue
        m = _HEAD.match(line)
        has_name = m is not None and m.group("name") is not None
        if total == 0 and not has_name:
            return False
        named += has_name
        total += 1
    return total > 0 and (named == total or (named >= 2 and 2 * named >= total))


# ------------------------------------------------------------------------------ extraction


class _Builder:
    """Accumulates the units of one turn."""

    def __init__(self) -> None:
        self.units: list[Unit] = []
        #: Terms of every unit, repeated across units (counted once per turn: cheaper than per unit).
        self.terms: list[str] = []
        self.dates: list[SessionDate] = []
        self.chars: dict[str, list[int]] = {}

    def add_span(
        self,
        *,
        role: str,
        speaker: str,
        text: str,
        message: int,
        found: list[str],
        names: set[str],
        flags: int,
        relative: str,
    ) -> None:
        """A unit of prose, its terms and cues found by :class:`_Index`."""
        if not found:
            return
        terms = tuple(dict.fromkeys(found))
        if flags & DONE:
            flags &= ~OPEN
        # Positional: this runs for every unit of every turn, and keyword construction is slower.
        self.units.append(
            Unit(
                UnitKind.SAID,
                role,
                speaker,
                text,
                "",
                terms,
                _boosts(terms, names),
                flags,
                1.0,
                len(self.dates) - 1,
                relative,
                message,
                len(self.units),
            )
        )
        self.terms.extend(terms)

    def add(
        self,
        kind: UnitKind,
        role: str,
        speaker: str,
        text: str,
        message: int,
        *,
        outcome: str = "",
        flags: int = 0,
        prior: float = 1.0,
    ) -> None:
        """A unit of a tool call or of its output (prose goes through :meth:`add_span`)."""
        found = content_terms(f"{text}\n{outcome}" if outcome else text)
        terms = tuple(dict.fromkeys(found))
        if not terms:
            return
        self.units.append(
            Unit(
                kind=kind,
                role=role,
                speaker=speaker,
                text=text,
                outcome=outcome,
                terms=terms,
                boosts=_boosted(f"{text} {outcome}", terms, opaque=kind != UnitKind.SAID),
                flags=flags,
                prior=prior,
                dated=len(self.dates) - 1,
                relative="",
                message=message,
                seq=len(self.units),
            )
        )
        self.terms.extend(terms)


# One case-sensitive scan of a lower-cased prose block finds every phrase cue (done, open, decision);
# separate case-insensitive searches were several times slower, and this runs on every turn.
_CUES_RE: Final = re.compile(
    r"(?<![\w'])(?=[a-z])(?:"
    f"(?P<done>{DONE_RE.pattern})|(?P<open>{OPEN_RE.pattern})|(?P<decision>{DECISION_RE.pattern}))"
)
_CUE_FLAGS: Final = {"done": DONE, "open": OPEN, "decision": DECISION}
#: Single words found among a span's tokens (cheaper than a pattern): speaking of oneself, and words
#: :func:`compress` may drop.
_ME: Final = frozenset({"i", "my", "me", "we", "our", "us", "mine", "myself", "ours", "ourselves"})
_DROPPABLE: Final = FILLER_WORDS | LEADING_WORDS


def visible_terms(messages: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """Every content term a model reads in ``messages`` (code and tool output included): what a turn
    covers when it is shown verbatim in the Anchor or the Tail."""
    return frozenset(term for message in messages for term in content_terms(message_text(message)))


def extract_turn(messages: Sequence[Mapping[str, Any]]) -> TurnExtract:
    """The units of one turn (see the module docstring)."""
    b = _Builder()
    calls: list[tuple[str, str, Any, str, int]] = []  # (id, name, input, role, message index)
    results: dict[str, tuple[str, bool, int]] = {}
    for index, message in enumerate(messages):
        role = str(message.get("role", ""))
        written = 0
        for block in blocks(message.get("content")):
            kind = block.get("type")
            if kind == "text":
                text = str(block.get("text", ""))
                written += len(text)
                _text(b, text, role, index)
            elif kind == "tool_use":
                calls.append(
                    (str(block.get("id", "")), str(block.get("name", "tool")), block.get("input"), role, index)
                )
            elif kind == "tool_result":
                out = content_text(block.get("content", ""))
                results[str(block.get("tool_use_id", ""))] = (out, bool(block.get("is_error")), index)
        if written:
            totals = b.chars.setdefault(role, [0, 0])
            totals[0] += written
            totals[1] += 1
    for tid, name, tool_input, role, index in calls:
        _tool(b, name, tool_input, role=role, index=index, result=results.pop(tid, None))
    for out, _error, index in results.values():  # results whose call is in another turn (clipped history)
        _output(b, out, index)
    return TurnExtract(
        units=tuple(b.units),
        df=tuple(Counter(b.terms).items()),
        dates=tuple(b.dates),
        chars=tuple((role, c, n) for role, (c, n) in b.chars.items()),
    )


#: Scan at most this much of one block: a pasted 1 MB log must not cost 1 MB of regex per turn.
MAX_SCAN: Final = 24_000


def _scan(text: str) -> str:
    if len(text) <= MAX_SCAN:
        return text
    head = MAX_SCAN * 3 // 4
    return text[:head] + "\n" + text[-(MAX_SCAN - head) :]


def _text(b: _Builder, text: str, role: str, index: int) -> None:
    parts = _scan(text).split("```")  # odd parts are code: never a unit
    prose = "\n".join(part for i, part in enumerate(parts) if i % 2 == 0)
    _prose(b, prose, role, index, transcript=len(parts) == 1 and _is_transcript(prose.split("\n")))


class _Index:
    """Names, cues and relative dates of a prose block, by offset, and its terms per span.

    One regex pass per kind over the whole block instead of several per unit: extraction runs on
    every turn of a conversation that is compacted cold, and per-unit passes were most of its cost.
    Offsets are those of the block itself (lower-casing and apostrophe folding keep lengths).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.lower = lower = _folded(text)
        self.bare = _bare(lower)
        names = [(m.start(), (m.group(1) or m.group(2)).lower()) for m in _PROPER.finditer(text)]
        self.name_at = [at for at, _ in names]
        self.names = [name for _, name in names]
        cues = [(m.start(), _CUE_FLAGS[str(m.lastgroup)]) for m in _CUES_RE.finditer(lower)]
        self.cue_at = [at for at, _ in cues]
        self.cues = [flag for _, flag in cues]
        relative = [m.span() for m in relative_spans(lower)] if _RELATIVE_HINT.search(lower) else []
        self.rel_at = [at for at, _ in relative]
        self.rel_end = [end for _, end in relative]
        quantities = [(m.start(), _amount(m)) for m in _AMOUNT.finditer(lower)] if _HAS_DIGIT(lower) else []
        self.quantity_at = [at for at, _ in quantities]
        self.quantities = [q for _, q in quantities]

    def span(self, s: int, e: int) -> tuple[list[str], set[str], int, str]:
        """Terms, names, cue flags and the first relative-date expression of ``text[s:e]``."""
        tokens = _TERM.findall(self.bare, s, e)
        terms = _terms_from(tokens)
        if self.quantity_at:
            i, j = bisect.bisect_left(self.quantity_at, s), bisect.bisect_left(self.quantity_at, e)
            if i < j:
                terms = self.quantities[i:j] + terms
        i, j = bisect.bisect_left(self.name_at, s), bisect.bisect_left(self.name_at, e)
        names = set(self.names[i:j])
        i, j = bisect.bisect_left(self.cue_at, s), bisect.bisect_left(self.cue_at, e)
        flags = 0
        for flag in self.cues[i:j]:
            flags |= flag
        if not _ME.isdisjoint(tokens):
            flags |= FIRST_PERSON
        if not _DROPPABLE.isdisjoint(tokens):
            flags |= _FILLER
        relative = ""
        if self.rel_at:
            i = bisect.bisect_left(self.rel_at, s)
            if i < len(self.rel_at) and self.rel_end[i] <= e:
                relative = self.text[self.rel_at[i] : self.rel_end[i]]
        return terms, names, flags, relative


#: A cheap test for the words every relative-date expression contains (the full pattern is slow).
_RELATIVE_HINT: Final = re.compile(r"yesterday|tomorrow|last|next|ago|coming|past")


def _prose(b: _Builder, text: str, role: str, index: int, *, transcript: bool) -> None:
    found = _Index(text)
    speaker = role
    pos = 0
    for line in text.split("\n"):
        start, end = pos, pos + len(line)
        pos = end + 1
        head = _HEAD.match(text, start, end)
        body = start
        if head is not None and head.end() > start:
            stamp = head.group("date")
            day = find_session_date(stamp) if stamp else None
            if day is not None:
                b.dates.append(day)
                body = head.end("date") + 1
            if transcript and head.group("name"):
                speaker = head.group("name")
                body = head.end()
        for s, e in _sentence_spans(text, body, end):
            sentence = text[s:e]
            if _code_like(sentence):
                continue
            for k, (cs, ce) in enumerate(_clause_spans(text, s, e)):
                span = text[cs:ce]
                if _label_only(span):
                    continue
                terms, names, flags, relative = found.span(cs, ce)
                if k:
                    flags |= CONTINUES
                if text[ce - 1] == "?":  # the clause that asks (a question's other clauses may state facts)
                    flags |= QUESTION
                if flags & _FILLER or "**" in span:
                    span = compress(span)
                    flags &= ~_FILLER
                b.add_span(
                    role=role,
                    speaker=speaker,
                    text=span,
                    message=index,
                    found=terms,
                    names=names,
                    flags=flags,
                    relative=relative,
                )


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters at a word boundary, with "…" where it was cut: still
    a span of the text (its first words), never a broken word."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return (text[:cut] if cut > limit // 2 else text[:limit]).rstrip() + " …"


def _args(tool_input: Any) -> str:
    """The part of a tool input that says what the call did (a string that occurs in the input)."""
    if not isinstance(tool_input, Mapping):
        return "" if tool_input is None else clip(json_text(tool_input), 160)
    for key in TOOL_ARG_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            return clip(value.strip().splitlines()[0], 160)
    for value in tool_input.values():
        if isinstance(value, str) and value.strip():
            return clip(value.strip().splitlines()[0], 160)
    return ""


def _outcome(text: str, is_error: bool) -> tuple[str, bool]:
    """The line of a tool result that says how the call went (its error, or its first line unless that
    is just the first of many alike), and whether it failed."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("<")]
    err_line = None
    if ERROR_RE.search(text.lower()):  # one scan of the whole output; the line only when there is one
        err_line = next((ln for ln in lines[:200] if ERROR_RE.search(ln.lower())), None)
    error = is_error or (err_line is not None and lines.index(err_line) < 3)
    if error and err_line is not None:
        return clip(err_line, 140), True
    if not lines:
        return "", is_error
    first = _shape(lines[0])
    if len(lines) > 1 and any(_shape(line) == first for line in lines[1:50]):
        return "", error  # the first row of a log or a listing says nothing about how the call went
    return clip(lines[0], 140), error


def _tool(
    b: _Builder, name: str, tool_input: Any, *, role: str, index: int, result: tuple[str, bool, int] | None
) -> None:
    args = _args(tool_input)
    speaker = f"{role} ran {name}"
    if result is None:
        b.add(UnitKind.TOOL, role, speaker, args or name, index)
        return
    text, is_error, _ = result
    scanned = _scan(text)
    outcome, error = _outcome(scanned, is_error)
    b.add(UnitKind.TOOL, role, speaker, args or name, index, outcome=outcome, flags=FAILED if error else DONE)
    _output(b, scanned, result[2])


_NO_DIGITS: Final = str.maketrans("", "", "0123456789")
#: Strings strong enough to pull a line out of a tool's output: URLs, e-mails, paths, hosts, versions,
#: tickets, hashes, IPs.
_STRONG: Final = re.compile(
    r"(?<![\w.@+%-])(?=\w)(?:"
    r"(?:https?|ftp|s3|gs|git|ssh)://\S+|\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)+\b|(?:[\w@+-][\w.@+-]*/)+[\w.@+-]*\.\w{1,8}\b"
    r"|\b(?:[a-z0-9-]+\.)+(?:com|org|net|io|dev|internal|local|cloud)\b|\bv?\d+\.\d+\.\d+\b|\b[A-Z][A-Z0-9]{1,9}-\d{1,6}\b"
    r"|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r")"
)


def _shape(line: str) -> str:
    """A coarse template of a line: one letter per token class (word, number-ish, path-ish, other).

    Lines of a log or a listing share a shape; the line that does not is usually the one that says
    something (a template-mining idea, as in log parsers).
    """
    out = []
    for tok in line.split():
        if tok.isalpha():
            out.append("W")
        elif len(tok.translate(_NO_DIGITS)) != len(tok):
            out.append("N")
        elif "/" in tok:
            out.append("P")
        else:
            out.append("O")
    return "".join(out)


def _output(b: _Builder, text: str, index: int) -> None:
    """At most three lines of a tool's output carrying strong strings, odd-one-out lines first; a line
    shaped like its neighbours (a log line, a listing row) at most once and at a third of the value."""
    strong = [m.start() for m in _STRONG.finditer(text)]
    if not strong:
        return
    raw = text.split("\n")
    offsets = list(itertools.accumulate((len(line) + 1 for line in raw), initial=0))
    hit = {bisect.bisect_right(offsets, at) - 1 for at in strong}
    lines = [ln.strip() for ln in raw if ln.strip()]
    shape_of = {line: _shape(line) for line in lines}
    shapes = Counter(shape_of.values())
    rows = list(dict.fromkeys(raw[i].strip() for i in sorted(hit) if raw[i].strip()))
    rows.sort(key=lambda line: shapes[shape_of[line]] > 1)  # stable: unique shapes first, then in order
    routine = False
    for line in rows[:3]:
        if shapes[shape_of[line]] > 1:
            if routine:
                break
            routine = True
            b.add(UnitKind.OUTPUT, "user", "tool", clip(line, 240), index, prior=0.3)
        else:
            b.add(UnitKind.OUTPUT, "user", "tool", clip(line, 240), index)
