"""Incremental compaction: what is memoised per turn, and the running state of each conversation.

Why: a local streak re-sends the whole history every request, and compaction must cost O(new
content), not O(history). Two things make that so, and :class:`CompactionCache` holds both:

* **Per-turn memos**, keyed by the turn's fingerprint: everything derived from one turn's content
  alone (its extract, its token count under a given estimator). :func:`extract_of` and
  :func:`turn_tokens` are the only ways in.
* **Running conversation states** (:class:`ConversationState`): even segmenting, hashing and looking
  up 1,000 turns one by one costs more than an incremental compaction may, so a state keeps, for a
  verified prefix of one conversation, what compaction needs in bulk — turn boundaries, fingerprints,
  token counts (for one estimator key) and the SITREP ranking (causal document frequencies and ranked
  candidates, see :mod:`trooper.memory.sitrep`) — and is moved forward turn by turn.

Verification fast path: a state also keeps the raw serialised messages of its *stable* prefix —
every covered turn but the last two, because clients move ``cache_control`` markers around the newest
messages. A request whose first messages serialise to exactly those bytes (one ``memcmp``, cheaper than
hashing them again) has exactly those turns (same boundaries, same fingerprints), so only the newer
turns are segmented and fingerprinted. Any difference (an edited, reformatted or regenerated history)
falls back to fingerprinting every turn and rewinding the state to the common prefix: slower, never
wrong. The price is memory: one serialised copy of each cached conversation's history.

The cache is a pure memo: results never depend on whether it was warm (the tests compare cold and
warm outputs). It may be shared by many conversations; it is bounded (LRU) so it never grows without
limit. It is safe under the GIL for concurrent readers because a running state is owned by one caller
at a time: :func:`open_state` removes it from the cache and the caller puts it back with
:meth:`CompactionCache.checkin`, so in-place updates never race.

Privacy: the cached data is derived from conversation content and must be treated like the content
itself (it never leaves the process).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final

import attrs

from trooper.memory._lru import LRU
from trooper.memory.extract import Candidate, TurnExtract, extract_turn
from trooper.memory.sitrep import salience
from trooper.memory.tokens import TextStats, TokenEstimator
from trooper.memory.turns import HistoryTurn, TurnIndex, is_prompt, json_bytes, prompt_starts

__all__ = [
    "CacheStats",
    "CompactionCache",
    "ConversationState",
    "TurnMemo",
    "extract_of",
    "open_state",
    "turn_tokens",
]

Row = tuple[float, int, int, Candidate]
#: Newest covered turns left out of the stable digest (their ``cache_control`` markers move).
UNSTABLE_TURNS: Final = 2
#: Running states kept per first-turn fingerprint (conversations forking from the same first turn).
_STATES_PER_FIRST_TURN: Final = 4


class TurnMemo:
    """What is memoised for one turn fingerprint: its extract and its token count per estimator."""

    __slots__ = ("counts", "extract")

    def __init__(self) -> None:
        self.extract: TurnExtract | None = None
        #: estimator key → tokens of the whole turn. Few keys ever (one per calibration step).
        self.counts: dict[Hashable, int] = {}


@attrs.frozen
class CacheStats:
    """Counters for tests, ``trooper doctor`` and the benchmark."""

    turn_hits: int
    turn_misses: int
    turns: int
    prefix_hits: int
    prefix_misses: int
    prefixes: int


class CompactionCache:
    """Bounded memo for compaction (see the module docstring).

    ``maxsize`` bounds the number of turns remembered (each holds the turn's extract: a few hundred
    bytes to a few KB, so the default stays within tens of MB); ``max_prefixes`` bounds the running
    states (one per active conversation, each about the size of its serialised history plus its
    ranking).
    """

    def __init__(self, maxsize: int = 20_000, max_prefixes: int = 64) -> None:
        self._turns: LRU[bytes, TurnMemo] = LRU(maxsize)
        self._states: LRU[bytes, list[ConversationState]] = LRU(max_prefixes)
        self.turn_hits = 0
        self.turn_misses = 0
        self.prefix_hits = 0
        self.prefix_misses = 0

    # ----------------------------------------------------------------------------------- turns

    def turn(self, fingerprint: bytes) -> TurnMemo:
        """The memo entry of a turn, created empty on a miss."""
        memo = self._turns.get(fingerprint)
        if memo is None:
            self.turn_misses += 1
            memo = TurnMemo()
            self._turns.put(fingerprint, memo)
        else:
            self.turn_hits += 1
        return memo

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._turns

    def __len__(self) -> int:
        return len(self._turns)

    # -------------------------------------------------------------------------- running states

    def checkout(self, fps: list[bytes]) -> ConversationState | None:
        """Take (remove) the running state that shares the longest prefix with ``fps``.

        States are grouped by their first turn's fingerprint; the caller owns the returned state until
        it calls :meth:`checkin`, which is what makes in-place updates safe.
        """
        if not fps:
            return None
        group = self._states.get(fps[0])
        best: ConversationState | None = None
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

    def candidates(self, first: bytes) -> list[ConversationState]:
        """A snapshot of the running states whose first turn has fingerprint ``first``."""
        group = self._states.get(first)
        return list(group) if group else []

    def take(self, first: bytes, state: ConversationState) -> bool:
        """Remove ``state`` (found by :meth:`candidates`) so the caller owns it; False if already taken."""
        group = self._states.get(first)
        try:
            if group is None:
                raise ValueError
            group.remove(state)
        except ValueError:
            self.prefix_misses += 1
            return False
        self.prefix_hits += 1
        return True

    def checkin(self, state: ConversationState) -> None:
        """Return a running state (keyed by the fingerprints it now covers)."""
        if not state.fps:
            return
        group = self._states.get(state.fps[0])
        if group is None:
            group = []
            self._states.put(state.fps[0], group)
        group.append(state)
        while len(group) > _STATES_PER_FIRST_TURN:  # keep the newest few
            group.pop(0)

    # ----------------------------------------------------------------------------------- misc

    def stats(self) -> CacheStats:
        return CacheStats(
            turn_hits=self.turn_hits,
            turn_misses=self.turn_misses,
            turns=len(self._turns),
            prefix_hits=self.prefix_hits,
            prefix_misses=self.prefix_misses,
            prefixes=sum(len(g) for g in self._states.values()),
        )

    def clear(self) -> None:
        self._turns.clear()
        self._states.clear()
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


def extract_of(turn: HistoryTurn, cache: CompactionCache | None) -> TurnExtract:
    """The turn's extract, memoised by fingerprint."""
    if cache is None:
        return extract_turn(turn.messages)
    memo = cache.turn(turn.fingerprint)
    if memo.extract is None:
        memo.extract = extract_turn(turn.messages)
    return memo.extract


def turn_tokens(turn: HistoryTurn, estimator: TokenEstimator, cache: CompactionCache | None = None) -> int:
    """Tokens of a whole turn, memoised per (fingerprint, estimator key)."""
    if cache is None:
        return sum(estimator.count_message(m) for m in turn.messages)
    memo = cache.turn(turn.fingerprint)
    key = estimator.key
    value = memo.counts.get(key)
    if value is None:
        value = sum(estimator.count_message(m) for m in turn.messages)
        if len(memo.counts) >= 4:  # old calibration steps
            memo.counts.pop(next(iter(memo.counts)))
        memo.counts[key] = value
    return value


def _dump(messages: Sequence[Mapping[str, Any]]) -> bytes:
    return json_bytes(list(messages))


class ConversationState:
    """Boundaries, fingerprints and token counts of turns ``1..len(fps)``, and the SITREP ranking."""

    __slots__ = (
        "costs",
        "costs_key",
        "counts",
        "counts_key",
        "df",
        "fps",
        "line_stats",
        "prefix",
        "ranked",
        "stable",
        "stable_msgs",
        "starts",
        "turn_terms",
    )

    def __init__(self) -> None:
        self.fps: list[bytes] = []
        self.starts: list[int] = []
        self.counts: list[int] = []
        self.counts_key: Hashable = None
        self.df: dict[str, int] = {}
        #: Sorted ascending by (-salience, turn, seq): best first. Keys are unique, so insertion order
        #: never matters and a warm state equals a cold one.
        self.ranked: list[Row] = []
        #: Terms of each ranked turn (turns ``1..len(turn_terms)``), to undo them on rewind.
        self.turn_terms: list[frozenset[str]] = []
        #: SITREP line costs by (turn, seq) under ``costs_key`` (see ``build_sitrep``).
        self.costs: dict[tuple[int, int], int] = {}
        self.costs_key: Hashable = None
        #: Character statistics of SITREP lines by (turn, seq) (estimator-independent).
        self.line_stats: dict[tuple[int, int], TextStats] = {}
        #: Turns (and their messages) covered by ``prefix``: the open serialisation ``[m1,…,mk`` of
        #: those messages, compared byte for byte (exact, and faster than hashing them again).
        self.stable = 0
        self.stable_msgs = 0
        self.prefix = bytearray()

    def line_costs(self, estimator: TokenEstimator) -> dict[tuple[int, int], int]:
        """The line-cost memo for this estimator (reset when its key changes)."""
        if estimator.key != self.costs_key:
            self.costs = {}
            self.costs_key = estimator.key
        return self.costs

    def rewind(self, n: int) -> None:
        """Forget turns after the first ``n`` (an edited or regenerated history)."""
        if len(self.turn_terms) > n:
            df = self.df
            for terms in self.turn_terms[n:]:
                for term in terms:
                    left = df[term] - 1
                    if left:
                        df[term] = left
                    else:
                        del df[term]
            del self.turn_terms[n:]
            self.ranked = [row for row in self.ranked if row[1] <= n]
            self.costs = {k: v for k, v in self.costs.items() if k[0] <= n}
            self.line_stats = {k: v for k, v in self.line_stats.items() if k[0] <= n}
        del self.fps[n:]
        del self.starts[n:]
        del self.counts[n:]
        if self.stable > n:
            self.stable = self.stable_msgs = 0
            self.prefix = bytearray()

    def sync(self, turns: TurnIndex, upto: int, estimator: TokenEstimator, cache: CompactionCache | None) -> None:
        """Cover turns ``1..upto`` with boundaries, fingerprints and token counts; extend the digest."""
        key = estimator.key
        if key != self.counts_key:
            self.counts = [turn_tokens(t, estimator, cache) for t in turns[: len(self.fps)]]
            self.counts_key = key
        for turn in turns[len(self.fps) : upto]:
            self.fps.append(turn.fingerprint)
            self.starts.append(turn.start)
            self.counts.append(turn_tokens(turn, estimator, cache))
        self._extend_digest(turns.messages, max(0, len(self.fps) - UNSTABLE_TURNS))

    def _extend_digest(self, messages: Sequence[Mapping[str, Any]], stable: int) -> None:
        if stable <= self.stable:
            return
        stop = self.starts[stable] if stable < len(self.starts) else len(messages)
        if self.stable_msgs == 0:
            self.prefix = bytearray(memoryview(_dump(messages[:stop]))[:-1])
        else:
            self.prefix += b","
            self.prefix += memoryview(_dump(messages[self.stable_msgs : stop]))[1:-1]
        self.stable, self.stable_msgs = stable, stop

    def rank(self, turns: Sequence[HistoryTurn], upto: int, cache: CompactionCache | None) -> None:
        """Extend the SITREP ranking to turns ``1..upto`` (``upto`` ≤ ``len(fps)``)."""
        start = len(self.turn_terms)
        bulk = upto - start > 16
        df = self.df
        for turn in turns[start:upto]:
            extract = extract_of(turn, cache)
            for term in extract.terms:
                df[term] = df.get(term, 0) + 1
            rows = [(-salience(c, df), turn.number, c.seq, c) for c in extract.candidates]
            if bulk:
                self.ranked.extend(rows)
            else:
                for row in rows:
                    bisect.insort(self.ranked, row)
            self.turn_terms.append(extract.terms)
        if bulk:
            self.ranked.sort()


def _first_fingerprint(messages: Sequence[Mapping[str, Any]]) -> bytes:
    stop = 1
    while stop < len(messages) and not is_prompt(messages[stop]):
        stop += 1
    return TurnIndex(messages[:stop], [0]).fingerprint(0)


def _verify(messages: Sequence[Mapping[str, Any]], state: ConversationState) -> bool:
    """Whether ``messages`` starts with exactly the state's stable prefix (read-only)."""
    m = state.stable_msgs
    # At least one message must follow the stable prefix, and it must open a turn: otherwise the
    # boundaries recorded for the prefix would not hold for this request.
    if state.stable == 0 or m >= len(messages) or not is_prompt(messages[m]):
        return False
    data = _dump(messages[:m])
    return len(data) == len(state.prefix) + 1 and data.startswith(state.prefix)


def _resume(messages: Sequence[Mapping[str, Any]], state: ConversationState) -> TurnIndex:
    """Turns of ``messages`` from a verified state; rewinds it past the first differing newer turn."""
    m = state.stable_msgs
    starts = state.starts[: state.stable] + prompt_starts(messages, m)
    fps: list[bytes | None] = list(state.fps[: state.stable])
    turns = TurnIndex(messages, starts, fps)
    common = state.stable
    while common < len(state.fps) and common < len(turns) - 1:
        if turns.starts[common] != state.starts[common] or turns.fingerprint(common) != state.fps[common]:
            break
        common += 1
    state.rewind(common)
    return turns


def open_state(
    messages: Sequence[Mapping[str, Any]], cache: CompactionCache | None
) -> tuple[ConversationState, TurnIndex]:
    """The turns of ``messages`` and the running state for them, rewound to what they share.

    The caller owns the state until it checks it back in (``cache.checkin(state)``).
    """
    if cache is not None and messages:
        first = _first_fingerprint(messages)
        for candidate in cache.candidates(first):
            if _verify(messages, candidate) and cache.take(first, candidate):
                return candidate, _resume(messages, candidate)
    turns = TurnIndex(messages, prompt_starts(messages))
    complete = max(0, len(turns) - 1)
    fps = turns.fingerprints(complete)
    state = cache.checkout(fps) if cache is not None else None
    if state is None:
        return ConversationState(), turns
    limit = min(len(state.fps), len(fps))
    common = limit
    if state.fps[:limit] != fps[:limit] or state.starts[:limit] != turns.starts[:limit]:
        common = 0
        while common < limit and state.fps[common] == fps[common] and state.starts[common] == turns.starts[common]:
            common += 1
    state.rewind(common)
    # Equal fingerprints do not mean equal bytes (moved cache_control markers): re-take the prefix.
    state.stable = state.stable_msgs = 0
    state.prefix = bytearray()
    return state, turns
