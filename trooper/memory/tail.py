"""Tail: the newest whole turns that fit, always including the current turn.

Why whole turns: a turn holds its own tool round-trips, so keeping or dropping whole turns can never
separate a ``tool_use`` from its ``tool_result``. Why newest-first and contiguous: the model continues
from the end of the conversation; a gap inside the Tail would read as a non sequitur (the SITREP covers
everything before the Tail instead).

The current (last) turn is the one being answered: it is always present, and only truncated (with a
marker, keeping its prompt and its newest exchange) when it alone overflows what the Anchor leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

from trooper.memory.anchor import Layer
from trooper.memory.tokens import TokenEstimator
from trooper.memory.truncate import fit_turn
from trooper.memory.turns import HistoryTurn

__all__ = ["build_current", "pack_tail"]


def pack_tail(counts: Sequence[int], start: int, stop: int, budget: int) -> int:
    """Index ``i`` (``start ≤ i ≤ stop``) such that turns ``i..stop-1`` are the newest that fit ``budget``.

    Packing stops at the first turn that does not fit, even if an older, smaller one would: the Tail is
    contiguous.
    """
    used = 0
    i = stop
    while i > start and used + counts[i - 1] <= budget:
        used += counts[i - 1]
        i -= 1
    return i


def build_current(turn: HistoryTurn, count: int, alloc: int, estimator: TokenEstimator) -> Layer:
    """The current turn within ``alloc`` tokens (verbatim when it fits)."""
    if count <= alloc:
        return Layer(tuple(dict(m) for m in turn.messages), count, (turn.number,))
    fitted, tokens, truncated = fit_turn(turn.messages, alloc, estimator, keep_newest=True)
    return Layer(tuple(fitted), tokens, (turn.number,), (turn.number,) if truncated else ())
