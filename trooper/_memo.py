"""A least-recently-used memo bounded by the total size of what it holds, not by its entry count.

Clients re-send the whole history on every request, so the work done on each text (folding,
fingerprinting) is worth keeping for the next request; but texts range from "yes" to a 200 KB tool
result, so a cache bounded by entries would be either useless or unbounded in bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """``compute(key)`` remembered while the summed ``weigh(key)`` of the entries stays under ``budget``."""

    def __init__(self, compute: Callable[[K], V], *, budget: int, weigh: Callable[[K], int]) -> None:
        self._compute = compute
        self._weigh = weigh
        self._budget = budget
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0

    def __call__(self, key: K) -> V:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found[0]
        value = self._compute(key)
        weight = self._weigh(key) + 64
        if weight <= self._budget:
            self._entries[key] = (value, weight)
            self._total += weight
            while self._total > self._budget:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._total -= dropped
        return value

    def clear(self) -> None:
        self._entries.clear()
        self._total = 0
