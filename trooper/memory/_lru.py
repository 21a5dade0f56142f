"""A small bounded mapping that evicts the least recently used entry (the caches' building block).

Why not ``functools.lru_cache``: the memory caches are keyed by data the caller computes (turn
fingerprints), hold mutable entries that are taken out and put back, and must tolerate concurrent
readers under the GIL without a lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A bounded mapping that evicts the least recently used entry."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs more, and this runs several times per turn
                self._data.move_to_end(key)
            except KeyError:  # pragma: no cover - evicted concurrently; the value is still valid
                pass
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            try:
                self._data.popitem(last=False)
            except KeyError:  # pragma: no cover - emptied concurrently
                break

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the entries, least recently used first (safe to iterate while others write)."""
        return list(self._data.items())

    def values(self) -> Iterator[V]:
        """The values of a snapshot (see :meth:`items`)."""
        return (value for _key, value in self.items())

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
