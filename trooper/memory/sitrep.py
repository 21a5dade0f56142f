"""SITREP: the compressed abstraction of the turns between the Anchor and the Tail.

Default: extractive, deterministic, no model call. The SITREP is a choice of *units* of the middle
turns (:mod:`trooper.memory.extract`: sentences, clauses, tool calls with their outcome), made by
salience and rendered in conversation order, grouped under their session's date.

What a unit is worth (its *gain*) is the information it would add: the sum, over its content terms
not yet covered, of how rare the term is in the conversation — ``log(1 + K / df)``, ``df`` counting
the units that contain it — times how much such a term says (a name or an identifier more, an opaque
request id less), times the unit's own factors: a question carries little (×0.5), someone talking
about themselves (what they did, plan or like) or a decision carries more (×1.5), and a speaker who
writes far more per message
than the other (an assistant's long explanations next to a user's short statements of fact) spreads
the same information thinner, so their units count less (verbosity, see :func:`speaker_factor`).
A unit whose only new terms are numbers is a variant of a line already covered ("the tests cover 86 %"
after "the tests cover 91 %") and counts at a third.

Redundancy is removed by *coverage*: the terms of the Anchor and the Tail, and of every unit already
chosen, are covered, so a unit that repeats them adds little. Units are chosen greedily by gain per
token — the rule for budgeted coverage, evaluated lazily (a unit's gain only falls as coverage grows,
so a stale value is an upper bound and only the best candidate is ever re-evaluated) — until the
budget is spent. Session dates are headings, paid once per day; a relative date in a chosen line
("last Friday") is written out against its session date; spans of one message share a line.
:func:`layout` then fits the choice to the budget of each request: its best entries form a core that
stays unchanged while the Tail grows in place, the rest follows under "More:" as room allows.

Status marks: a tool call is ``[done]`` or ``[failed]`` by its outcome, and a line that reports
finished work ``[done]`` or announces work or a plan ``[open]`` — a summary read as a to-do list is
a known failure of compaction, so what was already done says so.

Privacy: a SITREP built from local turns is local content and must never reach the cloud.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple

import attrs

from trooper.memory._dates import SessionDate, long_form, resolve
from trooper.memory.extract import (
    CONTINUES,
    DECISION,
    DONE,
    FAILED,
    FIRST_PERSON,
    OPEN,
    QUESTION,
    Unit,
    UnitKind,
    content_terms,
)
from trooper.memory.tokens import TokenEstimator
from trooper.memory.turns import chain_fingerprint

__all__ = [
    "ACK_TEXT",
    "Candidate",
    "ModelSitrep",
    "Selection",
    "Sitrep",
    "SitrepEntry",
    "frame_tokens",
    "freshest",
    "layout",
    "model_preface",
    "render",
    "select",
    "sitrep_header",
    "sitrep_messages",
    "speaker_factor",
    "term_weight",
]

#: The assistant's reply to the SITREP message, which keeps user/assistant roles alternating.
ACK_TEXT: Final = "Understood."
FOOTER: Final = "[end of SITREP]"
#: The heading of the entries beyond the SITREP's core (see :func:`layout`).
MORE: Final = "More:"
#: Rarity scale: ``log(1 + K / df)``. Fixed rather than the number of units so a term's weight never
#: grows as the conversation does.
RARITY_SCALE: Final = 2000.0
QUESTION_FACTOR: Final = 0.5
FIRST_PERSON_FACTOR: Final = 1.5
NUMBERS_ONLY_FACTOR: Final = 0.3
#: Verbosity: a speaker writing ``r`` times more per message than the other counts ``r ** -0.3``,
#: never less than this.
MIN_SPEAKER_FACTOR: Final = 0.3
VERBOSITY_EXPONENT: Final = 0.3
#: Stop after this many chosen-but-too-large candidates in a row (the rest are worth less).
MAX_MISSES: Final = 200


def term_weight(df: int, boost: float = 1.0) -> float:
    """How much a term with document frequency ``df`` says (see the module docstring)."""
    return math.log(1.0 + RARITY_SCALE / max(1, df)) * boost


def speaker_factor(role: str, chars: Mapping[str, tuple[int, int]]) -> float:
    """The verbosity factor of ``role`` given each role's (characters, messages) written so far."""
    mine = chars.get(role)
    others = [v for r, v in chars.items() if r != role and v[1]]
    if not mine or not mine[1] or not others:
        return 1.0
    other = max(others, key=lambda v: v[1])
    if not other[0]:
        return 1.0
    ratio = (mine[0] / mine[1]) / (other[0] / other[1])
    return 1.0 if ratio <= 1.0 else max(MIN_SPEAKER_FACTOR, ratio**-VERBOSITY_EXPONENT)


@attrs.frozen
class SitrepEntry:
    """One rendered line and where it comes from (provenance for the tests and the ledger)."""

    #: The source turn (1-based).
    turn: int
    #: Index of the source message in the request's ``messages``.
    message: int
    kind: UnitKind
    role: str
    speaker: str
    #: The span of the source message, lightly compressed.
    text: str
    #: For a tool call, a span of its result.
    outcome: str = ""
    #: ``done``, ``open``, ``failed`` or ``""``.
    status: str = ""
    #: The session the line was said in, when the conversation dates its sessions.
    date: SessionDate | None = None
    #: A relative date written out: ``last Friday = Friday 5 January 2024``.
    note: str = ""
    seq: int = 0
    #: A clause that continues a sentence: rendered after "…" (its subject came before it).
    continues: bool = False

    @property
    def line(self) -> str:
        """The entry as rendered: ``- [open] Kevin (tomorrow = …): text``."""
        return _line(self.status, self.speaker, self.note, self.text, self.outcome, continues=self.continues)


def _line(status: str, speaker: str, note: str, text: str, outcome: str, *, continues: bool = False) -> str:
    mark = f"[{status}] " if status else ""
    gloss = f" ({note})" if note else ""
    result = f" → {outcome}" if outcome else ""
    return f"- {mark}{speaker}{gloss}: {'… ' if continues else ''}{text}{result}"


def unit_line(unit: Unit) -> str:
    """A unit's SITREP line without a date note (what its cost is memoised for)."""
    return _line(_status(unit), unit.speaker, "", unit.text, unit.outcome, continues=bool(unit.flags & CONTINUES))


@attrs.frozen
class Sitrep:
    """A rendered SITREP over turns ``first``–``last`` (1-based, inclusive)."""

    first: int
    last: int
    entries: tuple[SitrepEntry, ...]
    #: The full text of the SITREP's user message.
    text: str
    #: Tokens of the SITREP's messages (the user message and the acknowledgement), per the estimator.
    tokens: int
    kind: Literal["extractive", "model", "mixed"] = "extractive"
    #: Turns covered by a model-written summary, when one was used.
    model_turns: tuple[int, int] | None = None
    #: The model-written part, when one was used.
    preface: str | None = None
    #: How many of ``entries`` (the first ones) form the core, which stays while the Tail grows in
    #: place; the rest follow under "More:" (see :func:`layout`).
    core: int = 0

    def messages(self) -> list[dict[str, Any]]:
        return sitrep_messages(self.text)


def sitrep_header(first: int, last: int) -> str:
    """The first line of a SITREP: what it covers and how to read it (kept short: it is paid every turn)."""
    span = f"turn {first}" if first == last else f"turns {first}–{last}"
    return f"[SITREP: key lines of {span}, quoted; [done]/[open] = work finished/pending; later turns follow]"


def sitrep_messages(text: str) -> list[dict[str, Any]]:
    """The SITREP as a user message plus an assistant acknowledgement (keeps roles alternating)."""
    return [
        {"role": "user", "content": [{"type": "text", "text": text}]},
        {"role": "assistant", "content": [{"type": "text", "text": ACK_TEXT}]},
    ]


def messages_tokens(text: str, estimator: TokenEstimator) -> int:
    """Tokens of the SITREP's two messages for ``text``."""
    return sum(estimator.count_message(m) for m in sitrep_messages(text))


# ------------------------------------------------------------------------------------ selection


class Candidate(NamedTuple):
    """A unit of a middle turn, placed in the conversation (the input of :func:`select`)."""

    unit: Unit
    #: The source turn (1-based) and its first message's index in the request.
    turn: int
    start: int
    #: The session in effect, when the conversation dates its sessions.
    date: SessionDate | None
    #: The unit's static factor: prior × speaker factor × question / first-person factors.
    factor: float


def unit_factor(unit: Unit, speaker: float) -> float:
    """A unit's static factor (see the module docstring)."""
    factor = unit.prior * speaker
    if unit.flags & QUESTION:
        factor *= QUESTION_FACTOR
    elif unit.flags & (FIRST_PERSON | DECISION):
        factor *= FIRST_PERSON_FACTOR
    return factor


def _status(unit: Unit) -> str:
    if unit.flags & FAILED:
        return "failed"
    if unit.flags & DONE:
        return "done"
    if unit.flags & OPEN and not unit.flags & QUESTION:
        return "open"
    return ""


def _numeric(term: str) -> bool:
    return term[0].isdigit() and (term.isdigit() or " " in term)


def _note(c: Candidate) -> str:
    u = c.unit
    if u.relative and c.date is not None:
        day = resolve(u.relative, c.date.day)
        if day is not None:
            return f"{u.relative} = {long_form(day)}"
    return ""


def select(
    candidates: Sequence[Candidate],
    line_costs: Sequence[int],
    *,
    df: Mapping[str, int],
    covered: Iterable[str],
    budget: int,
    estimator: TokenEstimator,
) -> tuple[list[SitrepEntry], list[int]]:
    """Choose entries greedily by gain per token within ``budget`` (see the module docstring).

    ``line_costs`` are the candidates' line costs without a date note (:func:`unit_line`), ``df`` each
    term's document frequency, ``covered`` the terms already visible verbatim (Anchor, Tail). Returns
    the entries in the order they were chosen (best first) and the tokens each added (its line, and
    its date heading when it was the day's first). Deterministic: ties go to the earlier unit.
    """
    cov = set(covered)
    weights: dict[str, float] = {}
    for c in candidates:
        for term in c.unit.terms:
            if term not in weights:
                weights[term] = term_weight(df.get(term, 1))
    notes = {i: _note(c) for i, c in enumerate(candidates) if c.unit.relative}
    extra = {i: tuple(content_terms(note)) for i, note in notes.items() if note}
    costs = list(line_costs)
    for i, note in notes.items():
        if note:
            costs[i] += estimator.count(f" ({note})")
    headers: dict[SessionDate, tuple[tuple[str, ...], int]] = {}
    for c in candidates:
        if c.date is not None and c.date not in headers:
            line = header_line(c.date)
            headers[c.date] = (tuple(content_terms(line)), estimator.count(line) + 1)
    shown: set[SessionDate] = set()
    lines: dict[tuple[int, int, str, str], None] = {}  # (turn, message, speaker, status) with a line
    prefixes: dict[tuple[str, str], int] = {}

    def saving(c: Candidate) -> int:
        """Tokens saved when the unit joins a line already chosen (see :func:`_joins`)."""
        u = c.unit
        if u.kind != UnitKind.SAID or u.relative:
            return 0
        status = _status(u)
        if (c.turn, u.message, u.speaker, status) not in lines:
            return 0
        value = prefixes.get((u.speaker, status))
        if value is None:
            value = prefixes[(u.speaker, status)] = max(0, estimator.count(_line(status, u.speaker, "", "", "")) - 1)
        return value

    def gain(i: int) -> float:
        c = candidates[i]
        u = c.unit
        total = 0.0
        numbers_only = True
        for term, boost in zip(u.terms, u.boosts, strict=True):
            if term not in cov:
                total += weights[term] * boost
                numbers_only = numbers_only and _numeric(term)
        for term in extra.get(i, ()):
            if term not in cov:
                total += weights.get(term) or term_weight(df.get(term, 1))
                numbers_only = numbers_only and _numeric(term)
        if total and numbers_only:
            total *= NUMBERS_ONLY_FACTOR
        return total * c.factor

    heap = [(-gain(i) / max(1, costs[i]), c.turn, c.unit.seq, i) for i, c in enumerate(candidates)]
    heapq.heapify(heap)
    chosen: list[int] = []
    needs: list[int] = []
    remaining = budget
    misses = 0
    while heap and remaining > 0:
        neg, turn, seq, i = heapq.heappop(heap)
        if neg >= 0:
            break
        ratio = gain(i) / max(1, costs[i])
        if heap and ratio < -heap[0][0]:  # stale: its gain fell since it was computed
            heapq.heappush(heap, (-ratio, turn, seq, i))
            continue
        if ratio <= 0:
            break
        c = candidates[i]
        date = c.date
        new_day = date is not None and date not in shown
        need = costs[i] + (headers[date][1] if new_day and date is not None else 0) - saving(c)
        if need > remaining:
            misses += 1
            if misses > MAX_MISSES:
                break
            continue
        misses = 0
        chosen.append(i)
        needs.append(need)
        remaining -= need
        cov.update(c.unit.terms)
        cov.update(extra.get(i, ()))
        if c.unit.kind == UnitKind.SAID and not c.unit.relative:
            lines[(c.turn, c.unit.message, c.unit.speaker, _status(c.unit))] = None
        if new_day and date is not None:
            shown.add(date)
            cov.update(headers[date][0])
    return [_entry(candidates[i], notes.get(i, "")) for i in chosen], needs


def _entry(c: Candidate, note: str) -> SitrepEntry:
    u = c.unit
    return SitrepEntry(
        turn=c.turn,
        message=c.start + u.message,
        kind=u.kind,
        role=u.role,
        speaker=u.speaker,
        text=u.text,
        outcome=u.outcome,
        status=_status(u),
        date=c.date,
        note=note,
        seq=u.seq,
        continues=bool(u.flags & CONTINUES),
    )


# ------------------------------------------------------------------------------------ rendering


def header_line(day: SessionDate) -> str:
    return f"{day.heading()}:"


def _joins(prev: SitrepEntry | None, entry: SitrepEntry) -> bool:
    """Whether ``entry`` continues the line of ``prev``: another span of the same message, said the
    same way (same speaker, same mark, no date note or tool outcome on either)."""
    return (
        prev is not None
        and prev.message == entry.message
        and prev.speaker == entry.speaker
        and prev.status == entry.status
        and prev.date == entry.date
        and not (prev.note or prev.outcome or entry.note or entry.outcome)
    )


def _dated_lines(entries: Iterable[SitrepEntry]) -> list[str]:
    """Entries under their date headings; spans of one message share a line, joined by a space when
    they were adjacent there and by " … " when something was left out between them."""
    lines: list[str] = []
    day: SessionDate | None = None
    prev: SitrepEntry | None = None
    for entry in entries:
        if entry.date is not None and entry.date != day:
            day = entry.date
            lines.append(header_line(day))
            prev = None
        if _joins(prev, entry) and prev is not None:
            lines[-1] += (" " if entry.seq == prev.seq + 1 else " … ") + entry.text
        else:
            lines.append(entry.line)
        prev = entry
    return lines


def render(
    first: int,
    last: int,
    entries: Sequence[SitrepEntry],
    preface: str | None = None,
    more: Sequence[SitrepEntry] = (),
) -> str:
    """Header, optional model-written preface, the entries grouped under their dates in conversation
    order, then the ``more`` entries the same way under their own heading."""
    lines = [sitrep_header(first, last)]
    if preface:
        lines.append(preface)
    lines.extend(_dated_lines(_in_order(entries)))
    if more:
        lines.append(MORE)
        lines.extend(_dated_lines(_in_order(more)))
    lines.append(FOOTER)
    return "\n".join(lines)


def _in_order(entries: Iterable[SitrepEntry]) -> list[SitrepEntry]:
    return sorted(entries, key=lambda e: (e.turn, e.seq))


@attrs.frozen
class Selection:
    """The entries chosen for a SITREP, in the order they were chosen (best first), and the tokens each
    was estimated to add: what :func:`layout` lays out for a budget."""

    first: int
    last: int
    chosen: tuple[SitrepEntry, ...]
    needs: tuple[int, ...]
    preface: str | None = None
    preface_turns: tuple[int, int] | None = None


def frame_tokens(first: int, last: int, estimator: TokenEstimator, preface: str | None = None) -> int:
    """Tokens of a SITREP with no entries (its heading, preface and footer, and the acknowledgement)."""
    return messages_tokens(render(first, last, (), preface), estimator)


def layout(selection: Selection, core: int, budget: int, estimator: TokenEstimator) -> Sitrep | None:
    """The SITREP of ``selection`` within ``budget`` tokens, its best entries up to ``core`` tokens first.

    The core is the same for every budget at least ``core``, so while the Tail grows into its slack the
    SITREP's start does not change (the local server keeps reusing its prompt cache for it); entries
    beyond the core follow under their own heading, as many as ``budget`` allows, best first.
    Rendering is verified against the budget (per-line estimates of a whole are not exactly additive):
    while it overflows, the last-chosen entries go. ``None`` when nothing fits (not even the frame, or
    not a single entry).
    """
    chosen, needs = selection.chosen, selection.needs
    frame = frame_tokens(selection.first, selection.last, estimator, selection.preface)
    room = min(core, budget) - frame
    split = 0
    while split < len(chosen) and needs[split] <= room:
        room -= needs[split]
        split += 1
    room = budget - frame - sum(needs[:split]) - estimator.count(MORE) - 1
    keep = split
    while keep < len(chosen) and needs[keep] <= room:
        room -= needs[keep]
        keep += 1
    while True:
        main, more = chosen[:split], chosen[split:keep]
        text = render(selection.first, selection.last, main, selection.preface, more)
        tokens = messages_tokens(text, estimator)
        if tokens <= budget or keep == 0:
            break
        # The estimate missed what "More:" and its own date headings cost, or the whole counts
        # differently from its lines: give back about the excess, last-chosen first.
        excess = tokens - budget
        while keep > 0 and excess > 0:
            keep -= 1
            excess -= needs[keep]
        split = min(split, keep)
    if tokens > budget or not (main or more or selection.preface):
        return None  # a frame with nothing in it says nothing
    entries = (*_in_order(main), *_in_order(more))
    kind: Literal["extractive", "model", "mixed"] = "extractive"
    if selection.preface is not None:
        kind = "mixed" if entries else "model"
    return Sitrep(
        selection.first,
        selection.last,
        entries,
        text,
        tokens,
        kind,
        selection.preface_turns,
        selection.preface,
        core=len(main),
    )


# --------------------------------------------------------------------------- model-written SITREP


@attrs.frozen
class ModelSitrep:
    """A SITREP the local model wrote for turns ``first``–``last`` of one conversation.

    Plain data: the engine keeps it per conversation (:meth:`to_dict` / :meth:`from_dict`) and hands
    it back to :func:`~trooper.memory.compaction.compact`. ``chain`` fingerprints turns ``1..last`` as
    they were when it was written (:func:`~trooper.memory.turns.chain_fingerprint`), so it is only used
    for that exact history: an edited or regenerated turn makes it stale, never wrong.

    Privacy: the text is derived from the conversation, local turns included. It is local content, and
    so is everything derived from it: neither it nor a SITREP containing it may reach a cloud provider.
    """

    first: int
    last: int
    text: str
    chain: str

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "text": self.text, "chain": self.chain}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSitrep:
        """The value :meth:`to_dict` wrote; ``ValueError`` for anything else."""
        first, last, text, chain = data.get("first"), data.get("last"), data.get("text"), data.get("chain")
        if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last):
            raise ValueError("a model SITREP needs integer turns with 1 <= first <= last")
        if not isinstance(text, str) or not isinstance(chain, str) or not chain:
            raise ValueError("a model SITREP needs its text and the fingerprint of the turns it covers")
        return cls(first, last, text, chain)


def model_preface(sitrep: ModelSitrep) -> str:
    """How a model-written SITREP opens the SITREP it is part of."""
    return f"Summary of turns {sitrep.first}–{sitrep.last} (written by the local model):\n{sitrep.text}"


def freshest(
    summaries: Sequence[ModelSitrep], fingerprints: Sequence[bytes], first: int, complete: int
) -> ModelSitrep | None:
    """The stored summary to use: it starts at turn ``first``, covers complete turns only (numbers up
    to ``complete``), matches these turn fingerprints, and covers the most turns of those that do."""
    for summary in sorted(summaries, key=lambda s: -s.last):
        if summary.first != first or not first <= summary.last <= complete:
            continue
        if chain_fingerprint(fingerprints[: summary.last]) == summary.chain:
            return summary
    return None
