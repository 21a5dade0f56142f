"""Compaction: assemble Anchor + SITREP + Tail for a local request within the local model's window.

:func:`compact` is pure, synchronous and deterministic (no I/O, no clock), so it can run as the
conversation machine's transition callback. Its output is a valid Messages ``messages``
list plus an account of every layer's tokens and the turns each layer covers.

Budget policy (the order in which tokens are handed out), with ``usable = context − reserved output −
system − tools``:

1. If the whole history fits, it is returned unchanged (no SITREP): compaction never loses anything it
   does not have to.
2. The Anchor (first two turns) and the current turn (the last) come first, verbatim. Only if those two
   alone overflow are they truncated: the Anchor keeps at least ``anchor_share`` (25 %) of ``usable`` —
   all of it that the current turn leaves — and the current turn gets the rest. Nothing else fits then.
3. Otherwise the SITREP reserves ``sitrep_share`` (20 %) of ``usable`` — only when there are middle
   turns to summarise — and the Tail takes the newest whole middle turns that fit in the remainder.
   The SITREP then gets everything the Tail left, and if it does not need all of it, more whole turns
   move from the SITREP into the Tail while they fit (verbatim beats summary when there is room).

The assembled request never exceeds ``usable`` according to the estimator; when even the minimal forms
of the Anchor and the current turn cannot fit, :class:`BudgetTooSmall` is raised — a forced-local turn
must fail loudly rather than send a request the local model would silently truncate.

Privacy: the result is built from every turn, local ones included; it is local content and must never
reach a cloud provider.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from trooper.memory.extract import TurnExtract
from trooper.memory.incremental import CompactionCache, ConversationState, extract_of, open_state, turn_tokens
from trooper.memory.layers import anchor_count, build_anchor, build_current, pack_tail
from trooper.memory.sitrep import Sitrep, build_sitrep, restrict
from trooper.memory.tokens import CalibratedEstimator, TokenEstimator
from trooper.memory.turns import TurnIndex


class SummarySource(Protocol):
    """Where compaction finds a model-written SITREP (:class:`~trooper.memory.summariser.SummaryStore`)."""

    def covering(self, turns: TurnIndex, lo: int, complete: int) -> tuple[str, int] | None:
        """The newest summary starting at turn index ``lo`` that matches ``turns``: ``(text, last)``."""
        ...


__all__ = ["Budget", "BudgetTooSmall", "Compaction", "SummarySource", "compact"]


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
    #: Share of ``usable`` reserved for the SITREP when there are middle turns to summarise.
    sitrep_share: float = attrs.field(default=0.20, validator=_share)

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
    #: Turn numbers (1-based, like the SITREP's ``[tN]`` tags) per layer: ``anchor``, ``sitrep``,
    #: ``tail``; ``dropped`` for turns neither shown nor summarised; ``truncated`` for turns cut down.
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
    summaries: SummarySource | None = None,
) -> Compaction:
    """Build the local request's messages: Anchor + SITREP + Tail within ``budget``.

    Pure and deterministic: the same arguments give the same result, with or without a warm ``cache``
    (the cache only saves work). ``summaries`` offers model-written SITREPs (used when one matches
    this history and fits). Raises :class:`BudgetTooSmall` when the Anchor and the current turn
    cannot fit even truncated.
    """
    est: TokenEstimator = estimator if estimator is not None else CalibratedEstimator()
    system_tokens = est.count_system(system)
    tools_tokens = est.count_tools(tools)
    state, turns = open_state(messages, cache)
    try:
        # Every turn but the current one is complete: those go into the running state.
        state.sync(turns, len(turns) - 1, est, cache)
        counts = [*state.counts, turn_tokens(turns[-1], est, cache)] if len(turns) else []
        return _Assembly(
            messages,
            turns=turns,
            counts=counts,
            state=state,
            budget=budget,
            estimator=est,
            cache=cache,
            summaries=summaries,
            system_tokens=system_tokens,
            tools_tokens=tools_tokens,
        ).run()
    finally:
        if cache is not None and state.fps:
            cache.checkin(state)


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
        summaries: SummarySource | None,
        system_tokens: int,
        tools_tokens: int,
    ) -> None:
        self.messages = messages
        self.turns = turns
        self.counts = counts
        self.state = state
        self.budget = budget
        self.est = estimator
        self.cache = cache
        self.summaries = summaries
        self.system_tokens = system_tokens
        self.tools_tokens = tools_tokens
        self.usable = budget.usable(system_tokens, tools_tokens)

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
        return self.layered(n_anchor, a_tokens)

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

    def layered(self, n_anchor: int, a_tokens: int) -> Compaction:
        """Anchor and current turn verbatim; the rest shared between the SITREP and the Tail."""
        turns, counts, usable, cache = self.turns, self.counts, self.usable, self.cache
        n = len(turns)
        remaining = usable - a_tokens - counts[-1]
        lo, hi = n_anchor, n - 1  # middle turns are turns[lo:hi]
        reserve = min(remaining, math.ceil(self.budget.sitrep_share * usable))
        tail_start = pack_tail(counts, lo, hi, remaining - reserve)
        tail_tokens = sum(counts[tail_start:hi])
        sitrep: Sitrep | None = None
        if tail_start > lo:
            self.state.rank(turns, hi, cache)
            seen = _Visible()
            for t in (*turns[:n_anchor], *turns[tail_start:]):
                seen.add(extract_of(t, cache))
            sitrep = self.sitrep(lo, tail_start, remaining - tail_tokens, seen)
            moved = False
            while tail_start > lo:
                free = remaining - tail_tokens - (sitrep.tokens if sitrep else 0)
                if counts[tail_start - 1] > free:
                    break
                tail_start -= 1
                tail_tokens += counts[tail_start]
                seen.add(extract_of(turns[tail_start], cache))
                moved = True
            if moved:
                cut = restrict(sitrep, turns[tail_start - 1].number, self.est) if sitrep and tail_start > lo else None
                if cut is None and tail_start > lo:
                    cut = self.sitrep(lo, tail_start, remaining - tail_tokens, seen)
                sitrep = cut
        summarised = _span(lo, tail_start) if sitrep else ()
        dropped = () if sitrep else _span(lo, tail_start)
        out: list[dict[str, Any]] = [dict(m) for t in turns[:n_anchor] for m in t.messages]
        if sitrep is not None:
            out.extend(sitrep.messages())
        out.extend(dict(m) for t in turns[tail_start:] for m in t.messages)
        return self.result(
            out,
            anchor=a_tokens,
            sitrep=sitrep,
            tail=tail_tokens + counts[-1],
            sources={
                "anchor": _span(0, n_anchor),
                "sitrep": summarised,
                "tail": _span(tail_start, len(turns)),
                "dropped": dropped,
                "truncated": (),
            },
            truncated=False,
            compacted=True,
        )

    def sitrep(self, lo: int, stop: int, budget: int, seen: _Visible) -> Sitrep | None:
        """The SITREP over ``turns[lo:stop]``: a stored model-written one if it fits, else extractive."""
        turns, ranked = self.turns, self.state.ranked
        first, last = turns[lo].number, turns[stop - 1].number
        if self.summaries is not None:
            stored = self.summaries.covering(turns, lo, len(turns) - 1)
            if stored is not None:
                text, upto = stored
                mixed = build_sitrep(
                    ranked,
                    first,
                    last,
                    budget,
                    self.est,
                    covered=seen.ekeys(),
                    visible=seen.keys(),
                    preface=f"Summary of turns {first}–{upto} (written by the local model):\n{text}",
                    preface_turns=(first, upto),
                    costs=self.state.line_costs(self.est),
                    stats=self.state.line_stats,
                )
                if mixed is not None:
                    return mixed
        return build_sitrep(
            ranked,
            first,
            last,
            budget,
            self.est,
            covered=seen.ekeys(),
            visible=seen.keys(),
            costs=self.state.line_costs(self.est),
            stats=self.state.line_stats,
        )


class _Visible:
    """Entity keys and entry keys of the turns shown verbatim (Anchor and Tail)."""

    def __init__(self) -> None:
        self._ekeys: list[frozenset[str]] = []
        self._keys: list[frozenset[str]] = []

    def add(self, extract: TurnExtract) -> None:
        self._ekeys.append(extract.ekeys)
        self._keys.append(extract.keys)

    def ekeys(self) -> frozenset[str]:
        return frozenset().union(*self._ekeys)

    def keys(self) -> frozenset[str]:
        return frozenset().union(*self._keys)
