"""SITREP: the compressed abstraction of the turns between the Anchor and the Tail.

Default: extractive, deterministic, no model call. Candidates come from per-turn extracts
(:mod:`trooper.memory.extract`); they are ranked by salience and packed greedily into the SITREP's share
of the budget, then rendered in fixed sections (goals and constraints, decisions, facts, tool actions,
open items), every entry tagged with the turns it came from (``[t12]``).

Salience = section prior + Σ entity-kind weight × rarity + a damped sum of content-word rarities,
divided by the square root of the entry's length (value per token, which is what a budgeted greedy
fill should maximise). Rarity is in-conversation inverse document frequency computed *causally*:
``1 / df`` where ``df`` counts the turns up to and including the entry's own turn that contain the term.
Why causal: an entry's score is final once its turn is seen, so the ranking is a running structure that
advances by one turn in O(that turn's candidates) — the incremental cost the memory must have — and a
SITREP stays stable from one request to the next (good for the local server's prompt cache). The first
mention of a term is what carries the information; later repetitions score low and are de-duplicated.

Greedy packing keeps a set of covered entities: entities already shown verbatim (Anchor, Tail) or by a
chosen entry do not buy a bare fact a second place. De-duplication merges identical entries from several
turns into one entry with several tags.

Privacy: a SITREP built from local turns is local content and must never reach the cloud.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

import attrs

from trooper.memory.extract import SECTION_TITLES, Candidate, Section
from trooper.memory.tokens import CalibratedEstimator, TextStats, TokenEstimator

__all__ = [
    "ACK_TEXT",
    "Sitrep",
    "SitrepEntry",
    "build_sitrep",
    "restrict",
    "salience",
    "sitrep_header",
    "sitrep_messages",
]

#: The assistant's reply to the SITREP message, which keeps user/assistant roles alternating.
ACK_TEXT: Final = "Understood; continuing from the summary and the recent turns."
FOOTER: Final = "[end of SITREP]"
#: Weight of the content-word rarity sum relative to entity weights.
WORD_WEIGHT: Final = 0.6
#: Stop scanning after this many candidates did not fit (the rest are lower-ranked).
MAX_MISSES: Final = 200
#: Most source-turn tags on one merged entry.
MAX_TAGS: Final = 4


@attrs.frozen
class SitrepEntry:
    """One rendered entry and the turns it came from (provenance for the ledger and the tests)."""

    section: Section
    text: str
    turns: tuple[int, ...]
    entities: tuple[str, ...]
    #: Position of the entry in its first turn (keeps rendering order stable).
    seq: int = 0

    @property
    def line(self) -> str:
        """The entry as rendered: ``- text [t3,t9]``."""
        return _line(self.text, self.turns)


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

    def messages(self) -> list[dict[str, Any]]:
        return sitrep_messages(self.text)


def sitrep_header(first: int, last: int) -> str:
    """The first line of a SITREP: what it covers and how to read it (kept short: it is paid every turn)."""
    span = f"turn {first}" if first == last else f"turns {first}–{last}"
    return f"[SITREP — summary of {span} by Trooper; entries tagged [tN] by source turn; newer turns follow verbatim]"


def sitrep_messages(text: str) -> list[dict[str, Any]]:
    """The SITREP as a user message plus an assistant acknowledgement (keeps roles alternating)."""
    return [
        {"role": "user", "content": [{"type": "text", "text": text}]},
        {"role": "assistant", "content": [{"type": "text", "text": ACK_TEXT}]},
    ]


def _messages_tokens(text: str, estimator: TokenEstimator) -> int:
    return sum(estimator.count_message(m) for m in sitrep_messages(text))


# ------------------------------------------------------------------------------------ ranking


def salience(c: Candidate, df: Mapping[str, int]) -> float:
    """Value per token of a candidate, given document frequencies as of its turn."""
    score = c.prior
    for key, weight in zip(c.ekeys, c.weights, strict=True):
        score += weight / df.get(key, 1)
    if c.terms:
        rare = sum(1.0 / df.get(t, 1) for t in c.terms)
        score += WORD_WEIGHT * rare / math.sqrt(len(c.terms))
    return score / math.sqrt(1.0 + len(c.text) / 80.0)


# ------------------------------------------------------------------------------------ packing


class _Item(Protocol):
    """What rendering needs of an entry (a chosen candidate or a finished :class:`SitrepEntry`)."""

    @property
    def section(self) -> Section: ...

    @property
    def text(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def turns(self) -> Sequence[int]: ...

    @property
    def line(self) -> str: ...


class _Chosen:
    """A candidate picked for the SITREP, with the turns of its merged duplicates."""

    __slots__ = ("_line", "cand", "cost", "turns")

    def __init__(self, cand: Candidate, turn: int, cost: int) -> None:
        self.cand = cand
        self.turns = [turn]
        self.cost = cost
        self._line: str | None = None

    def add_turn(self, turn: int) -> None:
        self.turns.append(turn)
        self.turns.sort()
        self._line = None

    @property
    def line(self) -> str:
        if self._line is None:
            self._line = _line(self.cand.text, self.turns)
        return self._line

    @property
    def section(self) -> Section:
        return self.cand.section

    @property
    def text(self) -> str:
        return self.cand.text

    @property
    def seq(self) -> int:
        return self.cand.seq

    def entry(self) -> SitrepEntry:
        return SitrepEntry(self.cand.section, self.cand.text, tuple(self.turns), self.cand.entities, self.cand.seq)


def _line(text: str, turns: Sequence[int]) -> str:
    return "- " + text + " [" + ",".join(f"t{t}" for t in turns) + "]"


def _render(header: str, entries: Sequence[_Item], preface: str | None) -> str:
    """Header, optional model-written preface, then the sections in fixed order."""
    lines = [header]
    if preface:
        lines.append(preface)
    section: Section | None = None
    for e in sorted(entries, key=lambda e: (e.section, e.turns[0], e.seq)):
        if e.section != section:
            section = e.section
            lines.append(f"{SECTION_TITLES[section]}:")
        lines.append(e.line)
    lines.append(FOOTER)
    return "\n".join(lines)


def _finish(
    header: str,
    chosen: list[_Chosen],
    preface: str | None,
    budget: int,
    estimator: TokenEstimator,
) -> tuple[str, int, list[_Chosen]] | None:
    """Render and verify against the budget, dropping the lowest-ranked entries while it overflows.

    Per-line costs are not exactly additive (the whole text may classify differently), so the whole is
    measured; ``chosen`` is in rank order.
    """
    text = _render(header, chosen, preface)
    tokens = _messages_tokens(text, estimator)
    while tokens > budget and chosen:
        excess = tokens - budget
        freed = 0
        while chosen and freed < excess:
            freed += chosen.pop().cost
        text = _render(header, chosen, preface)
        tokens = _messages_tokens(text, estimator)
    if tokens > budget:
        return None
    return text, tokens, chosen


_TITLE_COSTS: dict[Hashable, tuple[tuple[Section, int], ...]] = {}


def _title_costs(estimator: TokenEstimator) -> tuple[tuple[Section, int], ...]:
    """Cost of each section title line, memoised per estimator key (paid once per SITREP)."""
    key = estimator.key
    costs = _TITLE_COSTS.get(key)
    if costs is None:
        costs = tuple((s, estimator.count(f"{SECTION_TITLES[s]}:") + 1) for s in Section)
        if len(_TITLE_COSTS) > 64:
            _TITLE_COSTS.clear()
        _TITLE_COSTS[key] = costs
    return costs


def build_sitrep(
    ranked: Sequence[tuple[float, int, int, Candidate]],
    first: int,
    last: int,
    budget: int,
    estimator: TokenEstimator,
    *,
    covered: frozenset[str] = frozenset(),
    visible: frozenset[str] = frozenset(),
    preface: str | None = None,
    preface_turns: tuple[int, int] | None = None,
    costs: dict[tuple[int, int], int] | None = None,
    stats: dict[tuple[int, int], TextStats] | None = None,
) -> Sitrep | None:
    """Pack the best candidates of turns ``first..last`` into ``budget`` tokens.

    ``ranked`` is the running ranking (best first) of a prefix of the conversation that includes
    ``first..last`` (see :class:`~trooper.memory.incremental.ConversationState`).

    ``covered`` holds entity keys already visible verbatim elsewhere in the request and ``visible`` the
    de-duplication keys of entries whose sentence is visible there (neither earns a place). ``preface``
    is a model-written summary of turns ``preface_turns`` placed before the extractive sections; the
    extractive part then covers only the turns after it. ``costs`` memoises line costs by
    ``(turn, seq)`` for this estimator and ``stats`` the lines' character statistics (the caller owns
    both). Returns ``None`` when not even the frame fits.

    With the default :class:`~trooper.memory.tokens.CalibratedEstimator` the packing is exact: its
    count of a text is a function of character statistics that add up line by line, so each candidate
    is checked against the true count of the whole and the SITREP is rendered once. Any other estimator
    gets per-line estimates, then a measurement of the whole and a second pass for the slack.
    """
    if last < first or budget <= 0:
        return None
    header = sitrep_header(first, last)
    frame = _messages_tokens(_render(header, (), preface), estimator)
    if frame > budget:
        return None
    if isinstance(estimator, CalibratedEstimator) and "```" not in header + (preface or ""):
        return _pack_exact(
            ranked,
            first,
            last,
            budget,
            estimator,
            covered=covered,
            visible=visible,
            preface=preface,
            preface_turns=preface_turns,
            memo=stats if stats is not None else {},
        )
    lo = preface_turns[1] + 1 if preface_turns else first
    chosen: list[_Chosen] = []
    by_key: dict[str, _Chosen] = {}
    titles = dict(_title_costs(estimator))
    cov: set[str] = set()  # entity keys of the chosen entries (``covered`` holds the visible ones)
    count = estimator.count
    memo = costs if costs is not None else {}
    rows = iter(ranked)
    remaining = budget - frame
    text, tokens = "", 0
    # Line costs are estimated one by one and overestimate the whole a little (rounding), so after a
    # pass the whole is measured and the real slack is offered to the next candidates (a few passes).
    for _pass in range(2):
        misses = 0
        for _neg, turn, seq, cand in rows:
            if turn < lo or turn > last or cand.key in visible:
                continue
            twin = by_key.get(cand.key)
            if twin is not None:
                if turn not in twin.turns and len(twin.turns) < MAX_TAGS and remaining >= 3:
                    twin.add_turn(turn)
                    remaining -= 3
                continue
            if cand.section == Section.FACTS and cand.ekeys and all(k in cov or k in covered for k in cand.ekeys):
                continue
            cost = memo.get((turn, seq))
            if cost is None:
                cost = memo[(turn, seq)] = count(_line(cand.text, (turn,))) + 1
            if cand.section in titles:
                cost += titles[cand.section]
            if cost > remaining:
                misses += 1
                if misses > MAX_MISSES or remaining < 8:
                    break
                continue
            ch = _Chosen(cand, turn, cost)
            chosen.append(ch)
            by_key[cand.key] = ch
            titles.pop(cand.section, None)
            cov.update(cand.ekeys)
            remaining -= cost
        else:
            rows = iter(())  # exhausted
        done = _finish(header, chosen, preface, budget, estimator)
        if done is None:
            return None
        text, tokens, chosen = done
        remaining = budget - tokens
        if remaining < 16:
            break
    entries = tuple(sorted((c.entry() for c in chosen), key=lambda e: (e.section, e.turns[0], e.seq)))
    kind: Literal["extractive", "model", "mixed"] = "extractive"
    if preface is not None:
        kind = "mixed" if entries else "model"
    return Sitrep(first, last, entries, text, tokens, kind, preface_turns, preface)


_TITLE_STATS: Final = {s: TextStats(f"\n{SECTION_TITLES[s]}:") for s in Section}


def _pack_exact(
    ranked: Sequence[tuple[float, int, int, Candidate]],
    first: int,
    last: int,
    budget: int,
    estimator: CalibratedEstimator,
    *,
    covered: frozenset[str],
    visible: frozenset[str],
    preface: str | None,
    preface_turns: tuple[int, int] | None,
    memo: dict[tuple[int, int], TextStats],
) -> Sitrep | None:
    """Greedy packing against the exact count of the whole (see :func:`build_sitrep`)."""
    header = sitrep_header(first, last)
    bare = _render(header, (), preface)
    limit = budget - (_messages_tokens(bare, estimator) - estimator.count(bare))  # text tokens allowed
    total = TextStats(bare)
    count = estimator.count_stats
    lo = preface_turns[1] + 1 if preface_turns else first
    chosen: list[_Chosen] = []
    by_key: dict[str, _Chosen] = {}
    sections: set[Section] = set()
    cov: set[str] = set()
    misses = 0
    used = count(total)
    for _neg, turn, seq, cand in ranked:
        if turn < lo or turn > last or cand.key in visible:
            continue
        twin = by_key.get(cand.key)
        if twin is not None:
            if turn not in twin.turns and len(twin.turns) < MAX_TAGS:
                grown = total + TextStats(f",t{turn}")
                if count(grown) <= limit:
                    twin.add_turn(turn)
                    total = grown
                    used = count(total)
            continue
        if cand.section == Section.FACTS and cand.ekeys and all(k in cov or k in covered for k in cand.ekeys):
            continue
        line = memo.get((turn, seq))
        if line is None:
            line = memo[(turn, seq)] = TextStats("\n" + _line(cand.text, (turn,)))
        grown = total + line
        if cand.section not in sections:
            grown = grown + _TITLE_STATS[cand.section]
        grown_tokens = count(grown)
        if "```" in cand.text or grown_tokens > limit:
            misses += 1
            if misses > MAX_MISSES or limit - used < 8:  # nothing useful fits any more
                break
            continue
        ch = _Chosen(cand, turn, grown_tokens - used)
        chosen.append(ch)
        by_key[cand.key] = ch
        sections.add(cand.section)
        cov.update(cand.ekeys)
        total, used = grown, grown_tokens
    done = _finish(header, chosen, preface, budget, estimator)  # verifies; trims only if estimates lied
    if done is None:
        return None
    text, tokens, chosen = done
    entries = tuple(sorted((c.entry() for c in chosen), key=lambda e: (e.section, e.turns[0], e.seq)))
    kind: Literal["extractive", "model", "mixed"] = "extractive"
    if preface is not None:
        kind = "mixed" if entries else "model"
    return Sitrep(first, last, entries, text, tokens, kind, preface_turns, preface)


def restrict(sitrep: Sitrep, last: int, estimator: TokenEstimator) -> Sitrep | None:
    """The same SITREP without what came from turns after ``last`` (they moved into the Tail).

    Cheaper than packing again, and never larger than the original; ``None`` when nothing is left or
    a model-written preface covered those turns (the caller then builds a new one).
    """
    if last < sitrep.first or (sitrep.model_turns is not None and sitrep.model_turns[1] > last):
        return None
    entries = []
    for e in sitrep.entries:
        turns = tuple(t for t in e.turns if t <= last)
        if turns:
            entries.append(attrs.evolve(e, turns=turns))
    text = _render(sitrep_header(sitrep.first, last), entries, sitrep.preface)
    return attrs.evolve(sitrep, last=last, entries=tuple(entries), text=text, tokens=_messages_tokens(text, estimator))
