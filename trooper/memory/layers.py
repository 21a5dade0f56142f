"""The two verbatim layers: the Anchor (the first two turns) and the Tail (the newest turns).

Anchor — why: the opening turns usually state the task, the constraints and the setting, and models
use the start of their context best ("lost in the middle"), so they are kept word for word at the
start of every local request. They are truncated — visibly, with a marker — only when the Anchor and
the current turn alone overflow the budget; the current turn is the current turn, the Anchor is not, so
under that pressure the Anchor's guarantee is a share (``Budget.anchor_share``), not all of it.

Tail — why whole turns: a turn holds its own tool round-trips, so keeping or dropping whole turns can
never separate a ``tool_use`` from its ``tool_result``. Why newest-first and contiguous: the model
continues from the end of the conversation; a gap inside the Tail would read as a non sequitur (the
SITREP covers everything before the Tail instead). The current (last) turn is the one being answered:
it is always present, and only truncated (with a marker, keeping its prompt and its newest exchange)
when it alone overflows what the Anchor leaves. The two exchanges before it are always present too;
when they are too large for the Tail's share, only their messages larger than their own share are
cut (:func:`build_recent`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from trooper.memory.tokens import TokenEstimator
from trooper.memory.truncate import fit_turn, fit_turns, shrink_message, waterfill
from trooper.memory.turns import HistoryTurn

__all__ = ["ANCHOR_TURNS", "Layer", "anchor_count", "build_anchor", "build_current", "build_recent"]

#: How many opening turns form the Anchor.
ANCHOR_TURNS: Final = 2


@attrs.frozen
class Layer:
    """Messages of one memory layer with their token count and the turns they come from."""

    messages: tuple[dict[str, Any], ...]
    tokens: int
    turns: tuple[int, ...]
    #: The turns of this layer that were truncated.
    truncated: tuple[int, ...] = ()


def anchor_count(turns: Sequence[HistoryTurn]) -> int:
    """Number of Anchor turns: the first two, never the current (last) turn, which belongs to the Tail."""
    return max(0, min(ANCHOR_TURNS, len(turns) - 1))


def build_anchor(turns: Sequence[HistoryTurn], counts: Sequence[int], alloc: int, estimator: TokenEstimator) -> Layer:
    """The Anchor layer within ``alloc`` tokens (verbatim when it fits, else truncated with markers)."""
    fitted, tokens, cut = fit_turns([t.messages for t in turns], counts, alloc, estimator)
    messages = tuple(m for msgs in fitted for m in msgs)
    truncated = tuple(t.number for t, c in zip(turns, cut, strict=True) if c)
    return Layer(messages, tokens, tuple(t.number for t in turns), truncated)


def build_recent(turns: Sequence[HistoryTurn], alloc: int, estimator: TokenEstimator) -> Layer:
    """The exchanges just before the current turn within ``alloc`` tokens, kept whole message by message.

    Every message keeps all it needs unless it is larger than its share — the budget water-filled over
    the messages, so small ones stay whole and only a message above the common level is truncated
    (with a marker, blocks and tool ids intact). Best effort when even that overflows: the caller
    verifies the total.
    """
    msgs = [m for t in turns for m in t.messages]
    numbers = tuple(t.number for t in turns)
    sizes = [estimator.count_message(m) for m in msgs]
    if sum(sizes) <= alloc:
        return Layer(tuple(dict(m) for m in msgs), sum(sizes), numbers)
    target = alloc
    out: list[dict[str, Any]] = []
    tokens = 0
    for _ in range(4):
        shares = waterfill(sizes, target)
        out = [
            dict(m) if s <= a else shrink_message(m, a, estimator) for m, s, a in zip(msgs, sizes, shares, strict=True)
        ]
        tokens = sum(estimator.count_message(m) for m in out)
        if tokens <= alloc:
            break
        target -= tokens - alloc
    cut = {i for i, (s, a) in enumerate(zip(sizes, waterfill(sizes, target), strict=True)) if s > a}
    firsts = [0]
    for t in turns:
        firsts.append(firsts[-1] + len(t.messages))
    truncated = tuple(t.number for k, t in enumerate(turns) if any(firsts[k] <= i < firsts[k + 1] for i in cut))
    return Layer(tuple(out), tokens, numbers, truncated)


def build_current(turn: HistoryTurn, count: int, alloc: int, estimator: TokenEstimator) -> Layer:
    """The current turn within ``alloc`` tokens (verbatim when it fits)."""
    if count <= alloc:
        return Layer(tuple(dict(m) for m in turn.messages), count, (turn.number,))
    fitted, tokens, truncated = fit_turn(turn.messages, alloc, estimator, keep_newest=True)
    return Layer(tuple(fitted), tokens, (turn.number,), (turn.number,) if truncated else ())
