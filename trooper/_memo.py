"""A memo bounded by the total size of what it holds, not by its entry count.

Clients re-send the whole history on every request, so the work done on each text (folding,
fingerprinting) is worth keeping for the next request; but texts range from "yes" to a long tool
result, so a cache bounded by entries would be either useless or unbounded in bytes.

It keeps two generations rather than an exact least-recently-used order: a hit is one dict
lookup (a conversation's history is looked up text by text on every request, so hits dominate),
and what the last generation used survives the next one. When the young generation fills half the
budget it becomes the old one and the previous old one is dropped; an old entry used again moves
back to the young generation. Whatever was used since the last turnover is kept, and the whole
never holds more than the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Final[Any] = object()


class Memo(Generic[K, V]):
    """``compute(key)`` remembered while the summed ``weigh(key)`` of the entries stays under ``budget``."""

    #: What one entry costs beyond what ``weigh`` says (the dict slot, the key and value objects).
    OVERHEAD: Final = 64

    def __init__(self, compute: Callable[[K], V], *, budget: int, weigh: Callable[[K], int]) -> None:
        self._compute = compute
        self._weigh = weigh
        self._half = budget // 2
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self._young_weight = 0

    def __call__(self, key: K) -> V:
        value = self._young.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        value = self._old.pop(key, _MISSING)
        if value is _MISSING:
            value = self._compute(key)
        weight = self._weigh(key) + self.OVERHEAD
        if weight > self._half:
            return value  # type: ignore[no-any-return]
        if self._young_weight + weight > self._half:
            self._old, self._young, self._young_weight = self._young, {}, 0
        self._young[key] = value
        self._young_weight += weight
        return value  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def clear(self) -> None:
        self._young.clear()
        self._old.clear()
        self._young_weight = 0
