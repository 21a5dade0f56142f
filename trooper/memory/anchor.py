"""Anchor: the first two turns, verbatim.

Why: the opening turns usually state the task, the constraints and the setting, and models use the
start of their context best ("lost in the middle"), so they are kept word for word at the start of
every local request. They are truncated — visibly, with a marker — only when the Anchor and the current
turn alone overflow the budget; the current turn is the current turn, the Anchor is not, so under
that pressure the Anchor's guarantee is a share (``Budget.anchor_share``, 25 % by default), not all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from trooper.memory.tokens import TokenEstimator
from trooper.memory.truncate import fit_turns
from trooper.memory.turns import HistoryTurn

__all__ = ["ANCHOR_TURNS", "Layer", "anchor_count", "build_anchor"]

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
