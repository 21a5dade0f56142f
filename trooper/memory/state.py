"""The running state of one conversation's memory, advanced turn by turn.

Why: a local streak re-sends the whole history on every request. Everything per turn is memoised by
fingerprint in the :class:`~trooper.memory.cache.ExtractCache`, but even segmenting, hashing and looking
up 1,000 turns one by one costs more than the budget of an incremental compaction (a few
milliseconds). So the state keeps, for a verified prefix of the conversation, what compaction needs in
bulk: turn boundaries, fingerprints, token counts (for one estimator key) and the SITREP ranking (causal
document frequencies and ranked candidates, see :mod:`trooper.memory.sitrep`).

Verification fast path: the state also keeps the raw serialised messages of its *stable* prefix —
every covered turn but the last two, because clients move ``cache_control`` markers around the newest
messages. A request whose first messages serialise to exactly those bytes (one ``memcmp``, cheaper than
hashing them again) has exactly those turns (same boundaries, same fingerprints), so only the newer
turns are segmented and fingerprinted. Any difference (an edited, reformatted or regenerated history)
falls back to fingerprinting every turn and rewinding the state to the common prefix: slower, never
wrong. The price is memory: one serialised copy of each cached conversation's history.

A state is owned by one caller at a time: :func:`open_state` removes it from the cache and the caller
puts it back with :meth:`ExtractCache.checkin`, so in-place updates never race. Results never depend on
the state being warm: everything it holds is a pure function of the turns it covers.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final

from trooper.memory.cache import ExtractCache
from trooper.memory.extract import Candidate, extract_of
from trooper.memory.sitrep import salience
from trooper.memory.tokens import TextStats, TokenEstimator
from trooper.memory.turns import HistoryTurn, TurnIndex, is_prompt, json_bytes, prompt_starts

__all__ = ["ConversationState", "open_state", "turn_tokens"]

Row = tuple[float, int, int, Candidate]
#: Newest covered turns left out of the stable digest (their ``cache_control`` markers move).
UNSTABLE_TURNS: Final = 2


def turn_tokens(turn: HistoryTurn, estimator: TokenEstimator, cache: ExtractCache | None = None) -> int:
    """Tokens of a whole turn, memoised per (fingerprint, estimator key)."""
    if cache is None:
        return sum(estimator.count_message(m) for m in turn.messages)
    info = cache.turn(turn.fingerprint)
    key = estimator.key
    value = info.counts.get(key)
    if value is None:
        value = sum(estimator.count_message(m) for m in turn.messages)
        if len(info.counts) >= 4:  # old calibration steps
            info.counts.pop(next(iter(info.counts)))
        info.counts[key] = value
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

    def sync(self, turns: TurnIndex, upto: int, estimator: TokenEstimator, cache: ExtractCache | None) -> None:
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

    def rank(self, turns: Sequence[HistoryTurn], upto: int, cache: ExtractCache | None) -> None:
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
    messages: Sequence[Mapping[str, Any]], cache: ExtractCache | None
) -> tuple[ConversationState, TurnIndex]:
    """The turns of ``messages`` and the running state for them, rewound to what they share.

    The caller owns the state until it checks it back in (``cache.checkin(state)``).
    """
    if cache is not None and messages:
        first = _first_fingerprint(messages)
        for candidate in cache.candidates(first):
            if (
                isinstance(candidate, ConversationState)
                and _verify(messages, candidate)
                and cache.take(first, candidate)
            ):
                return candidate, _resume(messages, candidate)
    turns = TurnIndex(messages, prompt_starts(messages))
    complete = max(0, len(turns) - 1)
    fps = turns.fingerprints(complete)
    state = cache.checkout(fps) if cache is not None else None
    if not isinstance(state, ConversationState):
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
