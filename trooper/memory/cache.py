"""The compactor's cache: per-turn data by fingerprint, running conversation states, model SITREPs.

Why a cache: a local streak re-sends the whole history every request, and compaction must cost
O(new content), not O(history). Everything derived from one turn's content alone (its extract, its
token count under a given estimator) is memoised under the turn's fingerprint, and the running SITREP
ranking (see :mod:`trooper.memory.sitrep`) is kept per conversation prefix and moved forward turn by
turn.

The cache is a pure memo: results never depend on whether it was warm (the tests compare cold and
warm outputs). It may be shared by many conversations; it is bounded (LRU) so it never grows without
limit. One instance per process (or per engine) is the intended use; it is safe under the GIL for
concurrent readers because every multi-step update works on an entry that was first removed
atomically (``OrderedDict.pop``), so no two callers ever mutate the same running state.

Privacy: the cached data is derived from conversation content and must be treated like the content
itself (it never leaves the process).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs

if TYPE_CHECKING:
    from trooper.memory.extract import TurnExtract

__all__ = ["LRU", "CacheStats", "ExtractCache", "TurnInfo"]

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
            with contextlib.suppress(KeyError):  # evicted concurrently; the value is still valid
                self._data.move_to_end(key)
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

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class TurnInfo:
    """What is memoised for one turn fingerprint: its extract and its token count per estimator."""

    __slots__ = ("counts", "extract")

    def __init__(self) -> None:
        self.extract: TurnExtract | None = None
        #: estimator key → tokens of the whole turn. Few keys ever (one per calibration step).
        self.counts: dict[Hashable, int] = {}


class _HasFps(Protocol):
    @property
    def fps(self) -> list[bytes]: ...


@attrs.frozen
class CacheStats:
    """Counters for tests, ``trooper doctor`` and the benchmark."""

    turn_hits: int
    turn_misses: int
    turns: int
    prefix_hits: int
    prefix_misses: int
    prefixes: int
    summaries: int


class ExtractCache:
    """Bounded memo for compaction (see the module docstring).

    ``maxsize`` bounds the number of turns remembered (each holds the turn's extract: a few hundred
    bytes to a few KB, so the default stays within tens of MB); ``max_prefixes`` bounds the running
    states (:mod:`trooper.memory.state`: one per active conversation, each about the size of its
    serialised history plus its ranking); ``max_summaries`` bounds model-written SITREPs.
    """

    def __init__(self, maxsize: int = 20_000, max_prefixes: int = 64, max_summaries: int = 256) -> None:
        self._turns: LRU[bytes, TurnInfo] = LRU(maxsize)
        self._prefixes: LRU[bytes, list[Any]] = LRU(max_prefixes)
        self._summaries: LRU[tuple[bytes, ...], Any] = LRU(max_summaries)
        self.turn_hits = 0
        self.turn_misses = 0
        self.prefix_hits = 0
        self.prefix_misses = 0

    # ----------------------------------------------------------------------------------- turns

    def turn(self, fingerprint: bytes) -> TurnInfo:
        """The memo entry of a turn, created empty on a miss."""
        info = self._turns.get(fingerprint)
        if info is None:
            self.turn_misses += 1
            info = TurnInfo()
            self._turns.put(fingerprint, info)
        else:
            self.turn_hits += 1
        return info

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._turns

    def __len__(self) -> int:
        return len(self._turns)

    # -------------------------------------------------------------------------- running states

    def checkout(self, fps: list[bytes]) -> Any | None:
        """Take (remove) the running state that shares the longest prefix with ``fps``.

        States are grouped by their first turn's fingerprint; the caller owns the returned state until
        it calls :meth:`checkin`, which is what makes in-place updates safe.
        """
        if not fps:
            return None
        group = self._prefixes.get(fps[0])
        best: Any | None = None
        best_len = 0
        if group:
            for state in list(group):
                n = _common_prefix(state.fps, fps)
                if n > best_len:
                    best, best_len = state, n
        if best is None or group is None:
            self.prefix_misses += 1
            return None
        try:
            group.remove(best)
        except ValueError:  # taken concurrently
            self.prefix_misses += 1
            return None
        self.prefix_hits += 1
        return best

    def candidates(self, first: bytes) -> list[Any]:
        """A snapshot of the running states whose first turn has fingerprint ``first``."""
        group = self._prefixes.get(first)
        return list(group) if group else []

    def take(self, first: bytes, state: Any) -> bool:
        """Remove ``state`` (found by :meth:`candidates`) so the caller owns it; False if already taken."""
        group = self._prefixes.get(first)
        try:
            if group is None:
                raise ValueError
            group.remove(state)
        except ValueError:
            self.prefix_misses += 1
            return False
        self.prefix_hits += 1
        return True

    def checkin(self, state: _HasFps) -> None:
        """Return a running state (keyed by the fingerprints it now covers)."""
        if not state.fps:
            return
        group = self._prefixes.get(state.fps[0])
        if group is None:
            group = []
            self._prefixes.put(state.fps[0], group)
        group.append(state)
        while len(group) > 4:  # conversations forking from the same first turn: keep the newest few
            group.pop(0)

    # ------------------------------------------------------------------ model-written SITREPs

    def summary(self, key: tuple[bytes, ...]) -> Any | None:
        return self._summaries.get(key)

    def put_summary(self, key: tuple[bytes, ...], value: Any) -> None:
        self._summaries.put(key, value)

    def summaries(self, first: bytes) -> list[tuple[tuple[bytes, ...], Any]]:
        """All stored summaries whose turn chain starts with ``first`` (few per conversation)."""
        return [(k, v) for k, v in list(self._summaries._data.items()) if k and k[0] == first]

    # ----------------------------------------------------------------------------------- misc

    def stats(self) -> CacheStats:
        return CacheStats(
            turn_hits=self.turn_hits,
            turn_misses=self.turn_misses,
            turns=len(self._turns),
            prefix_hits=self.prefix_hits,
            prefix_misses=self.prefix_misses,
            prefixes=sum(len(g) for g in list(self._prefixes._data.values())),
            summaries=len(self._summaries),
        )

    def clear(self) -> None:
        self._turns.clear()
        self._prefixes.clear()
        self._summaries.clear()
        self.turn_hits = self.turn_misses = self.prefix_hits = self.prefix_misses = 0


def _common_prefix(a: list[bytes], b: list[bytes]) -> int:
    """Length of the common prefix of two fingerprint chains (fast path: one is a prefix)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] holds; a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
