"""Compaction: assemble Anchor + SITREP + Tail for a local request within the local model's window.

:func:`compact` is pure, synchronous and deterministic (no I/O, no clock), so it can run as the
conversation machine's transition callback. Its output is a valid Messages ``messages`` list plus an
account of every layer's tokens and the turns each layer covers.

Budget policy, with ``usable = context − reserved output − system − tools``:

0. When the Anchor and the current turn would not fit whole beside the system prompt and the tools,
   those are reduced first, step by step (:mod:`trooper.memory.preamble`): the user's words matter
   more than a tool's usage advice.

1. If the whole history fits, it is returned unchanged (no SITREP): compaction never loses anything it
   does not have to.
2. The Anchor (first two turns) and the current turn (the last) come first, verbatim. Only if those two
   alone overflow are they truncated: the Anchor keeps at least ``anchor_share`` of ``usable`` — all of
   it that the current turn leaves — and the current turn gets the rest. Nothing else fits then.
3. Otherwise the Tail's floor: the current turn and the two exchanges (turns) before it, whole — if
   they exceed ``tail_cap`` of ``usable``, the two earlier ones give way message by message, only a
   message larger than its share being cut — then more whole turns, newest first, until the Tail
   holds ``tail_share`` of ``usable`` (when that much recent content exists and fits beside the
   Anchor: a share of the budget is no licence to overflow it).
4. The split of what is left *adapts to the middle*: with ``R`` = middle tokens / free tokens, the
   SITREP gets ``1 − 1/R²`` of the free space and whole turns move into the Tail for the rest. A middle
   barely larger than the space is mostly shown verbatim; a middle twenty times larger is summarised.
5. The Tail then *grows in place*: while the newest turns fit an allotment (the Tail at that point
   plus ``slack_share`` of ``usable``), later requests keep the same Tail start and the very same
   SITREP, adding new turns to the end. Only when the Tail outgrows its allotment does it move
   forward and the SITREP get rebuilt. Why: a local server reuses its prompt cache for an unchanged
   prefix, so a SITREP that changes every turn would make the local model re-read the whole context
   on every request; it also keeps compaction O(new turns) between rebuilds. Where the Tail stands is
   a pure function of the turns' token counts (:class:`~trooper.memory.incremental.Epoch`), so a cold
   compaction lands on the same Tail and the same SITREP as a warm one.

The SITREP is built (:mod:`trooper.memory.sitrep`) as of the turn that was current when the Tail last
moved: document frequencies over the turns before it, coverage by the Anchor and the Tail's turns
then, so nothing about the growing Tail changes it.

The assembled request never exceeds ``usable`` according to the estimator; when even the minimal forms
of the Anchor and the current turn cannot fit, :class:`BudgetTooSmall` is raised — a forced-local turn
must fail loudly rather than send a request the local model would silently truncate.

Privacy: the result is built from every turn, local ones included; it is local content and must never
reach a cloud provider.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import attrs

from trooper.memory.extract import content_terms
from trooper.memory.incremental import (
    CompactionCache,
    ConversationState,
    Epoch,
    extract_of,
    line_costs,
    open_state,
    turn_tokens,
    visible_of,
)
from trooper.memory.layers import Layer, anchor_count, build_anchor, build_current, build_recent
from trooper.memory.preamble import Preamble, Reduction, fit_preamble
from trooper.memory.sitrep import (
    Candidate,
    ModelSitrep,
    Selection,
    Sitrep,
    frame_tokens,
    freshest,
    layout,
    model_preface,
    select,
    speaker_factor,
    unit_factor,
)
from trooper.memory.tokens import CalibratedEstimator, TokenEstimator
from trooper.memory.turns import TurnIndex

__all__ = ["Budget", "BudgetTooSmall", "Compaction", "SitrepMode", "compact"]

#: Where the SITREP comes from: always extractive; the freshest model-written one that covers the
#: middle (extractive entries for the turns it does not cover yet); or model-written when one exists
#: and extractive otherwise. See :mod:`trooper.memory.summariser`.
SitrepMode = Literal["extractive", "model", "auto"]


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value}")


def _share(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name} must be within [0, 1], got {value}")


@attrs.frozen
class Budget:
    """The local model's window and how it is shared (see the module docstring for the policy)."""

    #: The local model's context window (what Ollama gets as ``num_ctx``).
    context_tokens: int = attrs.field(validator=_non_negative)
    #: Room kept for the reply (the request's ``max_tokens``, capped to what the window allows).
    reserved_output: int = attrs.field(default=0, validator=_non_negative)
    #: Share of ``usable`` the Anchor keeps when it and the current turn alone overflow.
    anchor_share: float = attrs.field(default=0.25, validator=_share)
    #: The Tail never holds less than this share of ``usable`` when that much recent content exists.
    tail_share: float = attrs.field(default=0.25, validator=_share)
    #: The current turn and the two before it give way (message by message) above this share.
    tail_cap: float = attrs.field(default=0.5, validator=_share)
    #: How far the Tail may grow in place before it moves and the SITREP is rebuilt.
    slack_share: float = attrs.field(default=1 / 16, validator=_share)

    def usable(self, system_tokens: int = 0, tools_tokens: int = 0) -> int:
        return self.context_tokens - self.reserved_output - system_tokens - tools_tokens


class BudgetTooSmall(ValueError):
    """The Anchor and the current turn cannot fit even in their minimal, truncated forms."""

    def __init__(self, usable: int, needed: int) -> None:
        super().__init__(
            f"the local context leaves {usable} tokens for messages; the current turn and the Anchor "
            f"need at least {needed} even truncated"
        )
        self.usable = usable
        self.needed = needed


@attrs.frozen
class Compaction:
    """The memory handed to a local model for one request."""

    #: A valid Messages list: Anchor, SITREP (user message + acknowledgement), Tail.
    messages: list[dict[str, Any]]
    #: Estimated tokens per layer: ``anchor``, ``sitrep``, ``tail`` (current turn included), ``system``,
    #: ``tools`` and ``total`` (their sum, the request's input).
    layers: dict[str, int]
    #: Turn numbers (1-based) per layer: ``anchor``, ``sitrep``, ``tail``; ``dropped`` for turns neither
    #: shown nor summarised; ``truncated`` for turns cut down.
    sources: dict[str, tuple[int, ...]]
    #: The context to give the local server (Ollama's ``num_ctx``): what the memory was budgeted for.
    num_ctx: int
    #: Whether any turn was truncated.
    truncated: bool
    budget: Budget
    #: ``context − reserved output − system − tools``.
    usable: int
    #: Whether anything was dropped or summarised (``False``: the messages are the input, unchanged).
    compacted: bool = False
    sitrep: Sitrep | None = None
    #: The system prompt and tools to send with ``messages``: the request's own, or reduced.
    system: str | list[Any] | None = None
    tools: list[Any] | None = None
    #: The preamble's reduction steps taken, in order (:data:`~trooper.memory.preamble.REDUCTIONS`).
    reductions: tuple[Reduction, ...] = ()


def _span(start: int, stop: int) -> tuple[int, ...]:
    """Turn numbers (1-based) of the turns at indexes ``start..stop-1``."""
    return tuple(range(start + 1, stop + 1))


def compact(
    messages: Sequence[Mapping[str, Any]],
    *,
    budget: Budget,
    system: str | list[Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    estimator: TokenEstimator | None = None,
    cache: CompactionCache | None = None,
    sitrep: SitrepMode = "extractive",
    summaries: Sequence[ModelSitrep] = (),
    tool_choice: Any = None,
) -> Compaction:
    """Build the local request's messages: Anchor + SITREP + Tail within ``budget``.

    Pure and deterministic: the same arguments give the same result, with or without a warm ``cache``
    (the cache only saves work). Raises :class:`BudgetTooSmall` when the Anchor and the current turn
    cannot fit even truncated.

    ``sitrep`` chooses the SITREP (see :data:`SitrepMode`); ``summaries`` are the conversation's
    model-written ones (:mod:`trooper.memory.summariser`), used when one matches this history.

    ``system`` and ``tools`` give way first when the Anchor and the current turn would not fit whole
    beside them (:mod:`trooper.memory.preamble`); the result carries what was sent and which steps cut
    it. ``tool_choice`` names a tool that is kept whatever is cut.
    """
    est: TokenEstimator = estimator if estimator is not None else CalibratedEstimator()
    state, turns = open_state(messages, cache)
    try:
        # Every turn but the current one is complete: those go into the running state.
        state.sync(turns, len(turns) - 1, est, cache)
        counts = [*state.counts, turn_tokens(turns[-1], est, cache)] if len(turns) else []
        n_anchor = anchor_count(turns)
        need = min(sum(counts), sum(counts[:n_anchor]) + (counts[-1] if counts else 0))
        preamble = fit_preamble(
            system,
            tools,
            messages,
            room=budget.context_tokens - budget.reserved_output,
            need=need,
            estimator=est,
            tool_choice=tool_choice,
        )
        return _Assembly(
            messages,
            turns=turns,
            counts=counts,
            state=state,
            budget=budget,
            estimator=est,
            cache=cache,
            mode=sitrep,
            summaries=summaries,
            preamble=preamble,
        ).run()
    finally:
        if cache is not None and state.fps:
            cache.checkin(state)


@attrs.frozen
class _Plan:
    """Where the Tail starts for this request and what the SITREP may spend."""

    #: Tail start (turn index); the middle is ``anchor..cut-1``.
    cut: int
    #: The turn that was current when the Tail last moved (the SITREP is built as of then).
    start: int
    #: The Tail's tokens when it last moved: the SITREP was chosen for what that left.
    base: int
    #: Tokens the Tail may grow to in place; the SITREP's core is what that leaves.
    allot: int
    #: Whether the two exchanges before the current turn must give way (message by message).
    squeezed: bool


class _Policy:
    """The Tail's floor, the adaptive split and the Tail's growth in place (steps 3–5), per turn index."""

    def __init__(self, counts: Sequence[int], n_anchor: int, usable: int, budget: Budget) -> None:
        self.counts = counts
        self.prefix = [0, *itertools.accumulate(counts)]
        self.a = n_anchor
        self.usable = usable
        self.anchor = self.prefix[n_anchor]
        self.floor = int(budget.tail_share * usable)
        self.cap = int(budget.tail_cap * usable)
        self.slack = int(budget.slack_share * usable)

    def step(self, prev: _Plan | None, m: int, current: int) -> _Plan | None:
        """The plan when turn ``m`` is current with ``current`` tokens; ``None``: no SITREP is needed
        (everything fits) or possible (the Anchor and the current turn alone overflow)."""
        p, c, a, usable = self.prefix, self.counts, self.a, self.usable
        if p[m] + current <= usable or self.anchor + current > usable or m <= a:
            return None
        s = max(a, m - 2)
        tail = p[m] - p[s] + current
        if tail > self.cap or self.anchor + tail > usable:
            return _Plan(s, m, tail, tail, squeezed=True)
        # The floor is a share of ``usable``, but the Anchor comes first: the Tail grows to its floor
        # only with turns the Anchor leaves room for (a large turn, an image, may not fit beside it).
        reach = min(self.cap, usable - self.anchor)
        while s > a and tail < self.floor and tail + c[s - 1] <= reach:
            s -= 1
            tail += c[s]
        if prev is not None and not prev.squeezed and a <= prev.cut <= s and p[m] - p[prev.cut] + current <= prev.allot:
            return prev  # the Tail grows in place: same start, same SITREP
        free = usable - self.anchor - tail
        if free > 0:
            ratio = (p[s] - p[a]) / free
            extension = free / ratio**2 if ratio > 1 else free
            while s > a and c[s - 1] <= extension:
                extension -= c[s - 1]
                s -= 1
                tail += c[s]
        slack = max(0, min(self.slack, usable - self.anchor - tail))
        return _Plan(s, m, tail, tail + slack, squeezed=False)


class _Assembly:
    """One compaction: the budget policy of the module docstring, step by step."""

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        turns: TurnIndex,
        counts: Sequence[int],
        state: ConversationState,
        budget: Budget,
        estimator: TokenEstimator,
        cache: CompactionCache | None,
        mode: SitrepMode,
        summaries: Sequence[ModelSitrep],
        preamble: Preamble,
    ) -> None:
        self.messages = messages
        self.turns = turns
        self.counts = counts
        self.state = state
        self.budget = budget
        self.est = estimator
        self.cache = cache
        self.mode = mode
        self.summaries = summaries
        self.preamble = preamble
        self.system_tokens = preamble.system_tokens
        self.tools_tokens = preamble.tools_tokens
        self.usable = budget.usable(self.system_tokens, self.tools_tokens)

    def result(
        self,
        msgs: list[dict[str, Any]],
        *,
        anchor: int,
        sitrep: Sitrep | None,
        tail: int,
        sources: dict[str, tuple[int, ...]],
        truncated: bool,
        compacted: bool,
    ) -> Compaction:
        sitrep_tokens = sitrep.tokens if sitrep else 0
        used = anchor + sitrep_tokens + tail
        if used > self.usable:
            raise BudgetTooSmall(self.usable, used)
        layers = {
            "anchor": anchor,
            "sitrep": sitrep_tokens,
            "tail": tail,
            "system": self.system_tokens,
            "tools": self.tools_tokens,
            "total": used + self.system_tokens + self.tools_tokens,
        }
        return Compaction(
            messages=msgs,
            layers=layers,
            sources=sources,
            num_ctx=self.budget.context_tokens,
            truncated=truncated,
            budget=self.budget,
            usable=self.usable,
            compacted=compacted,
            sitrep=sitrep,
            system=self.preamble.system,
            tools=self.preamble.tools,
            reductions=self.preamble.reductions,
        )

    def run(self) -> Compaction:
        turns, counts, usable = self.turns, self.counts, self.usable
        n_anchor = anchor_count(turns)
        total = sum(counts)
        empty: tuple[int, ...] = ()
        if total <= usable:
            anchor_tokens = sum(counts[:n_anchor])
            return self.result(
                [dict(m) for m in self.messages],
                anchor=anchor_tokens,
                sitrep=None,
                tail=total - anchor_tokens,
                sources={
                    "anchor": _span(0, n_anchor),
                    "sitrep": empty,
                    "tail": _span(n_anchor, len(turns)),
                    "dropped": empty,
                    "truncated": empty,
                },
                truncated=False,
                compacted=False,
            )
        if usable <= 0:
            raise BudgetTooSmall(usable, 1)
        a_tokens = sum(counts[:n_anchor])
        if a_tokens + counts[-1] > usable:
            return self.overflow(n_anchor, a_tokens)
        plan = self.plan(n_anchor)
        if plan is None:  # pragma: no cover - the checks above leave a plan to make
            return self.overflow(n_anchor, a_tokens)
        return self.layered(n_anchor, a_tokens, plan)

    def plan(self, n_anchor: int) -> _Plan | None:
        """The plan for this request, stepping the running :class:`Epoch` through the new complete turns."""
        state, counts = self.state, self.counts
        policy = _Policy(counts, n_anchor, self.usable, self.budget)
        key: Hashable = (self.usable, n_anchor, self.budget, self.est.key)
        epoch = state.epoch if state.epoch is not None and state.epoch.key == key else Epoch(key)
        prev = None if epoch.cut is None else _Plan(epoch.cut, epoch.start, epoch.base, epoch.allot, squeezed=False)
        complete = len(counts) - 1
        for m in range(epoch.done, complete):
            prev = policy.step(prev, m, counts[m])
            if prev is not None and prev.squeezed:
                prev = None  # a squeezed Tail never grows in place
        state.epoch = Epoch(
            key,
            complete,
            prev.cut if prev else None,
            prev.start if prev else 0,
            prev.base if prev else 0,
            prev.allot if prev else 0,
        )
        return policy.step(prev, complete, counts[-1])

    def overflow(self, n_anchor: int, a_tokens: int) -> Compaction:
        """The Anchor and the current turn alone overflow: truncate them, nothing else fits."""
        turns, counts, usable = self.turns, self.counts, self.usable
        c_tokens = counts[-1]
        cap = int(self.budget.anchor_share * usable)
        anchor_alloc = min(a_tokens, max(min(a_tokens, cap), usable - c_tokens))
        anchor = build_anchor(turns[:n_anchor], counts[:n_anchor], anchor_alloc, self.est)
        cur = build_current(turns[-1], c_tokens, usable - anchor.tokens, self.est)
        if anchor.tokens + cur.tokens > usable:
            raise BudgetTooSmall(usable, anchor.tokens + cur.tokens)
        truncated_turns = anchor.truncated + cur.truncated
        return self.result(
            [*anchor.messages, *cur.messages],
            anchor=anchor.tokens,
            sitrep=None,
            tail=cur.tokens,
            sources={
                "anchor": anchor.turns,
                "sitrep": (),
                "tail": cur.turns,
                "dropped": _span(n_anchor, len(turns) - 1),
                "truncated": truncated_turns,
            },
            truncated=bool(truncated_turns),
            compacted=True,
        )

    def layered(self, n_anchor: int, a_tokens: int, plan: _Plan) -> Compaction:
        """Anchor verbatim, the SITREP of the middle, the Tail from ``plan.cut``."""
        turns, counts, usable = self.turns, self.counts, self.usable
        n = len(turns)
        cut = plan.cut
        dropped: tuple[int, ...] = ()
        if plan.squeezed:
            room = usable - a_tokens - counts[-1]
            share = max(int(self.budget.tail_cap * usable) - counts[-1], int(self.budget.slack_share * usable))
            alloc = max(0, min(share, room))
            recent = build_recent(turns[cut : n - 1], alloc, self.est)
            if recent.tokens > alloc:  # not even their truncated forms fit: they give way entirely
                recent = Layer((), 0, (), ())
                dropped = _span(cut, n - 1)
            tail = Layer(
                (*recent.messages, *(dict(m) for m in turns[-1].messages)),
                recent.tokens + counts[-1],
                (),
                recent.truncated,
            )
            full = core = usable - a_tokens - tail.tokens
        else:
            tail = Layer(tuple(dict(m) for t in turns[cut:] for m in t.messages), sum(counts[cut:]), ())
            full, core = usable - a_tokens - plan.base, usable - a_tokens - plan.allot
        sitrep = None
        if cut > n_anchor:
            selection = self.selection(n_anchor, plan, full)
            sitrep = layout(selection, core, usable - a_tokens - tail.tokens, self.est)
        out: list[dict[str, Any]] = [dict(m) for t in turns[:n_anchor] for m in t.messages]
        if sitrep is not None:
            out.extend(sitrep.messages())
        out.extend(tail.messages)
        middle = _span(n_anchor, cut)
        return self.result(
            out,
            anchor=a_tokens,
            sitrep=sitrep,
            tail=tail.tokens,
            sources={
                "anchor": _span(0, n_anchor),
                "sitrep": middle if sitrep else (),
                "tail": _span(cut + len(dropped), n),
                "dropped": (() if sitrep else middle) + dropped,
                "truncated": tail.truncated,
            },
            truncated=bool(tail.truncated),
            compacted=True,
        )

    def selection(self, n_anchor: int, plan: _Plan, budget: int) -> Selection:
        """The SITREP's entries for turns ``n_anchor..plan.cut-1``, as of turn ``plan.start`` (memoised)."""
        state = self.state
        model = self.model_sitrep(n_anchor, plan)
        key = (n_anchor, plan.cut, plan.start, budget, self.est.key, model)
        memo = state.memo
        if memo is not None and memo[1] == key:
            return memo[2]
        selection = self._select(n_anchor, plan, budget, model)
        if model is not None and selection.preface is None:  # the model's summary did not fit
            key = (n_anchor, plan.cut, plan.start, budget, self.est.key, None)
        state.memo = (plan.start, key, selection)
        return selection

    def model_sitrep(self, n_anchor: int, plan: _Plan) -> ModelSitrep | None:
        """The model-written SITREP to open this SITREP with, per the mode (see :data:`SitrepMode`)."""
        if self.mode == "extractive" or not self.summaries:
            return None
        complete = len(self.turns) - 1
        found = freshest(self.summaries, self.turns.fingerprints(complete), n_anchor + 1, complete)
        if found is None:
            return None
        middle = plan.cut - n_anchor
        if self.mode == "auto" and 2 * (min(found.last, plan.cut) - n_anchor) < middle:
            return None  # a summary of less than half the middle: the extractive one covers more
        return found

    def _select(self, n_anchor: int, plan: _Plan, budget: int, model: ModelSitrep | None) -> Selection:
        turns, state, cache, est = self.turns, self.state, self.cache, self.est
        first, last = turns[n_anchor].number, turns[plan.cut - 1].number
        preface = model_preface(model) if model is not None else None
        room = budget - frame_tokens(first, last, est, preface)
        if model is not None and room < 0:
            model, preface = None, None
            room = budget - frame_tokens(first, last, est)
        after = min(max(model.last, n_anchor), plan.cut) if model is not None else n_anchor
        chars = state.chars_before(plan.start)
        speakers: dict[str, float] = {}
        candidates: list[Candidate] = []
        costs: list[int] = []
        for index in range(after, plan.cut):
            turn = turns[index]
            extract = extract_of(turn, cache)
            costs.extend(line_costs(turn, est, cache))
            entered = state.date_at(index)
            for unit in extract.units:
                factor = speakers.get(unit.role)
                if factor is None:
                    factor = speakers[unit.role] = speaker_factor(unit.role, chars)
                date = extract.dates[unit.dated] if unit.dated >= 0 else entered
                candidates.append(Candidate(unit, turn.number, turn.start, date, unit_factor(unit, factor)))
        covered: set[str] = set(content_terms(preface)) if preface else set()
        for index in (*range(n_anchor), *range(plan.cut, plan.start)):
            covered.update(visible_of(turns[index], cache))
        chosen, needs = select(
            candidates, costs, df=state.df_before(plan.start), covered=covered, budget=room, estimator=est
        )
        model_turns = (first, model.last) if model is not None else None
        return Selection(first, last, tuple(chosen), tuple(needs), preface, model_turns)
