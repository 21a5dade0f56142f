"""A set of 64-bit keys that stays small as it grows: what the provenance ledger's index is made of.

The ledger is never pruned — it is what keeps local content out of the cloud — so its index grows
with every local turn and every cloud sighting for as long as Trooper runs. A Python ``set`` of
ints costs several times the eight bytes a key needs (an int object and a hash-table slot each), so
the keys live in a sorted ``uint64`` array instead, with two small helpers:

* **recent additions** wait in a Python set and are merged into the array in batches, so adding
  a few keys is cheap and the array is rebuilt only once per batch (a batch grows with the array,
  so the rebuilds cost a constant per key); many keys at once go straight into the array;
* a **filter** of four to eight bits per key (a power of two of them) answers most questions
  about absent keys without searching the array — the walk of a conversation asks about
  every message, and most of the answers are no. Keys are hashes already, so their top bits are
  the filter's index.

Batch questions (``contains``) are two binary searches in numpy. Single questions (``in``) search
the array through a ``memoryview``, which hands out Python ints without numpy's per-item cost; keys
found are remembered in a small bounded memo, because the same history is asked about on every
request and keys are never removed (a remembered yes never goes stale; a no is never remembered).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]

_EMPTY: Final[U64] = np.empty(0, dtype=np.uint64)


def member(sorted_values: U64, values: U64) -> npt.NDArray[np.bool_]:
    """A mask over ``values``: which of them are in ``sorted_values`` (sorted, unique)."""
    if not len(sorted_values) or not len(values):
        return np.zeros(len(values), dtype=np.bool_)
    where = np.searchsorted(sorted_values, values)
    where[where == len(sorted_values)] = 0
    return np.asarray(sorted_values[where] == values)


def as_array(values: Sequence[int]) -> U64:
    return np.fromiter(values, dtype=np.uint64, count=len(values))


def sorted_unique(values: U64) -> U64:
    """``values`` sorted, each once: ``np.unique`` by sorting, which for 64-bit keys is several times
    faster than the hash table ``np.unique`` builds."""
    if len(values) < 2:
        return np.array(values, dtype=np.uint64)
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=np.bool_)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def union(first: U64, second: U64) -> U64:
    """The sorted union of two arrays."""
    return sorted_unique(np.concatenate([first, second]))


def difference(values: U64, sorted_other: U64) -> U64:
    """``values`` (sorted, each once) that are not in ``sorted_other`` (sorted, unique)."""
    unique = sorted_unique(values)
    return unique[~member(sorted_other, unique)]


class KeySet:
    """A growing set of 64-bit keys in about nine bytes each; see the module docstring."""

    #: Filter bits per key, at least (rounded up to a power of two).
    FILTER_BITS: ClassVar[int] = 4

    #: Recent additions merged into the array once there are this many, or a share of the array.
    MERGE_AT: ClassVar[int] = 1024
    MERGE_SHARE: ClassVar[int] = 256
    #: Keys found by a single question, remembered (two generations of this many).
    HOT: ClassVar[int] = 4096

    def __init__(self) -> None:
        self._main: U64 = _EMPTY
        self._items = self._main.data
        self._recent: set[int] = set()
        self._bits: npt.NDArray[np.uint8] = np.zeros(1, dtype=np.uint8)
        self._bit_items = self._bits.data
        self._shift = 61  # the top three bits index the eight bits of an empty filter
        self._hot: set[int] = set()
        self._warm: set[int] = set()
        #: Changes whenever keys are added, so cached lookups know when to look again.
        self.version = 0

    def __len__(self) -> int:
        return len(self._main) + len(self._recent)

    def __bool__(self) -> bool:
        return bool(len(self._main) or self._recent)

    # ------------------------------------------------------------------------------------ adding

    def add(self, values: U64) -> None:
        if not len(values):
            return
        fresh = sorted_unique(values)
        fresh = fresh[~self.contains(fresh)]
        if not len(fresh):
            return
        if len(fresh) >= self.MERGE_AT:  # a batch (the ledger read at start-up): straight into the array
            self._merge(fresh)
        else:
            self._recent.update(fresh.tolist())
            if len(self._recent) >= max(self.MERGE_AT, len(self._main) // self.MERGE_SHARE):
                self._merge(_EMPTY)
        self.version += 1

    def add_one(self, value: int) -> None:
        if value not in self:
            self._recent.add(value)
            if len(self._recent) >= max(self.MERGE_AT, len(self._main) // self.MERGE_SHARE):
                self._merge(_EMPTY)
            self.version += 1

    def _merge(self, fresh: U64) -> None:
        # Recent and fresh keys are apart from the array and from each other: insert, no dedupe.
        additions = np.sort(np.concatenate([self._recent_array(), fresh]))
        merged = np.insert(self._main, np.searchsorted(self._main, additions), additions)
        self._items.release()
        self._main, self._items, self._recent = merged, merged.data, set()
        self._rebuild_filter()

    def _rebuild_filter(self) -> None:
        bits = 8
        while bits < self.FILTER_BITS * len(self._main):
            bits *= 2
        shift = 64 - bits.bit_length() + 1
        present = np.zeros(bits, dtype=np.bool_)
        present[self._main >> np.uint64(shift)] = True
        filter_bits = np.packbits(present, bitorder="little")
        self._bit_items.release()
        self._bits, self._bit_items, self._shift = filter_bits, filter_bits.data, shift

    # --------------------------------------------------------------------------------- questions

    def __contains__(self, value: int) -> bool:
        if value in self._recent or value in self._hot:
            return True
        items = self._items
        if not len(items):
            return False
        index = value >> self._shift
        if not (self._bit_items[index >> 3] >> (index & 7)) & 1:
            return False
        if value in self._warm:
            found = True
        else:
            at = bisect.bisect_left(items, value)
            found = at < len(items) and items[at] == value
            if not found:
                return False
        self._hot.add(value)
        if len(self._hot) >= self.HOT:
            self._warm, self._hot = self._hot, set()
        return True

    def contains(self, values: U64) -> npt.NDArray[np.bool_]:
        """A mask over ``values``: which of them are in the set."""
        found = member(self._main, values)
        if self._recent and len(values):
            found |= member(np.sort(self._recent_array()), values)
        return found

    def _recent_array(self) -> U64:
        return np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))

    def values(self) -> U64:
        if not self._recent:
            return self._main
        return union(self._main, self._recent_array())

    def nbytes(self) -> int:
        """What the set holds in memory, roughly (the array, the filter, the Python sets)."""
        python_sets = len(self._recent) + len(self._hot) + len(self._warm)
        return self._main.nbytes + self._bits.nbytes + 72 * python_sets


__all__ = ["U64", "KeySet", "as_array", "difference", "member", "sorted_unique", "union"]
