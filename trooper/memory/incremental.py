"""Incremental compaction: what is memoised per turn, and the running state of each conversation.

Why: a local streak re-sends the whole history every request, and compaction must cost O(new
content), not O(history). Two things make that so, and :class:`CompactionCache` holds both:

* **Per-turn memos**, keyed by the turn's fingerprint: everything derived from one turn's content
  alone (its extract, its token count and its units' line costs under a given estimator, the terms
  it shows verbatim). :func:`extract_of`, :func:`turn_tokens`, :func:`line_costs` and
  :func:`visible_of` are the only ways in.
* **Running conversation states** (:class:`ConversationState`): even segmenting, hashing and looking
  up 1,000 turns one by one costs more than an incremental compaction may, so a state keeps, for a
  verified prefix of one conversation, what compaction needs in bulk — turn boundaries, fingerprints,
  token counts (for one estimator key), the SITREP's statistics (document frequencies, how much each
  role writes, session dates), where the Tail stands and the last SITREP built — and is moved forward
  turn by turn.

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

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final

import attrs

from trooper.memory._dates import SessionDate
from trooper.memory._lru import LRU
from trooper.memory.extract import TurnExtract, extract_turn, visible_terms
from trooper.memory.sitrep import Selection, unit_line
from trooper.memory.tokens import TokenEstimator
from trooper.memory.turns import HistoryTurn, TurnIndex, is_prompt, json_bytes, prompt_starts

__all__ = [
    "CacheStats",
    "CompactionCache",
    "ConversationState",
    "Epoch",
    "TurnMemo",
    "extract_of",
    "line_costs",
    "open_state",
    "turn_tokens",
    "visible_of",
]

#: Newest covered turns left out of the stable digest (their ``cache_control`` markers move).
UNSTABLE_TURNS: Final = 2
#: Running states kept per first-turn fingerprint (conversations forking from the same first turn).
_STATES_PER_FIRST_TURN: Final = 4


class TurnMemo:
    """What is memoised for one turn fingerprint: its extract and its token count per estimator."""

    __slots__ = ("counts", "extract", "lines", "visible")

    def __init__(self) -> None:
        self.extract: TurnExtract | None = None
        #: The terms the turn shows when it is kept verbatim (computed only for turns that are).
        self.visible: frozenset[str] | None = None
        #: estimator key → tokens of the whole turn. Few keys ever (one per calibration step).
        self.counts: dict[Hashable, int] = {}
        #: estimator key → tokens of each unit's SITREP line.
        self.lines: dict[Hashable, tuple[int, ...]] = {}


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


def visible_of(turn: HistoryTurn, cache: CompactionCache | None) -> frozenset[str]:
    """The terms a turn shows verbatim, memoised by fingerprint."""
    if cache is None:
        return visible_terms(turn.messages)
    memo = cache.turn(turn.fingerprint)
    if memo.visible is None:
        memo.visible = visible_terms(turn.messages)
    return memo.visible


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


def line_costs(turn: HistoryTurn, estimator: TokenEstimator, cache: CompactionCache | None) -> tuple[int, ...]:
    """Tokens of each unit's SITREP line (without a date note), memoised per (fingerprint, estimator)."""
    extract = extract_of(turn, cache)
    if cache is None:
        return tuple(estimator.count(unit_line(u)) + 1 for u in extract.units)
    memo = cache.turn(turn.fingerprint)
    key = estimator.key
    value = memo.lines.get(key)
    if value is None:
        value = tuple(estimator.count(unit_line(u)) + 1 for u in extract.units)
        if len(memo.lines) >= 4:
            memo.lines.pop(next(iter(memo.lines)))
        memo.lines[key] = value
    return value


def _dump(messages: Sequence[Mapping[str, Any]]) -> bytes:
    return json_bytes(list(messages))


@attrs.define
class Epoch:
    """The Tail's start and its allotment, carried from request to request.

    Compaction (:mod:`trooper.memory.compaction`) keeps the SITREP unchanged while the Tail grows into
    its allotment; this is where that stands after stepping through the conversation's complete
    turns, so the next request only steps through the turns added since. A pure function of those
    turns' token counts and the budget (``key``): a cold state steps through them all and lands on the
    same values.
    """

    key: Hashable
    #: Turn indexes below this have been stepped through as the current turn.
    done: int = 0
    #: Where the Tail starts (a turn index), or ``None`` when the last step needed no SITREP.
    cut: int | None = None
    #: The turn that was current when the Tail last moved (the SITREP is built as of then).
    start: int = 0
    #: The Tail's tokens when it last moved.
    base: int = 0
    #: Tokens the Tail may grow to before it moves again.
    allot: int = 0


class ConversationState:
    """What compaction knows about turns ``1..len(fps)`` of one conversation (all complete turns).

    Boundaries, fingerprints and token counts; the SITREP's statistics (document frequencies of the
    units' terms, how much each role writes, the session date in effect at each turn); the Tail's
    :class:`Epoch`; and the last SITREP built, keyed by everything it depends on.
    """

    __slots__ = (
        "chars",
        "counts",
        "counts_key",
        "date",
        "df",
        "epoch",
        "fps",
        "memo",
        "prefix",
        "stable",
        "stable_msgs",
        "starts",
        "turn_chars",
        "turn_date",
        "turn_df",
    )

    def __init__(self) -> None:
        self.fps: list[bytes] = []
        self.starts: list[int] = []
        self.counts: list[int] = []
        self.counts_key: Hashable = None
        #: Term → units containing it, over the indexed turns.
        self.df: dict[str, int] = {}
        #: Role → [characters, messages] of text it wrote, over the indexed turns.
        self.chars: dict[str, list[int]] = {}
        #: Per indexed turn: its share of ``df`` and ``chars`` (to undo on rewind or to look back).
        self.turn_df: list[tuple[tuple[str, int], ...]] = []
        self.turn_chars: list[tuple[tuple[str, int, int], ...]] = []
        #: Per indexed turn: the session date in effect when it started.
        self.turn_date: list[SessionDate | None] = []
        #: The session date in effect after the last indexed turn.
        self.date: SessionDate | None = None
        self.epoch: Epoch | None = None
        #: ``(first turn the SITREP depends on not changing, key, selection)`` of the last SITREP chosen.
        self.memo: tuple[int, Hashable, Selection] | None = None
        #: Turns (and their messages) covered by ``prefix``: the open serialisation ``[m1,…,mk`` of
        #: those messages, compared byte for byte (exact, and faster than hashing them again).
        self.stable = 0
        self.stable_msgs = 0
        self.prefix = bytearray()

    def rewind(self, n: int) -> None:
        """Forget turns after the first ``n`` (an edited or regenerated history)."""
        if len(self.turn_df) > n:
            df, chars = self.df, self.chars
            for turn_df in self.turn_df[n:]:
                for term, k in turn_df:
                    left = df[term] - k
                    if left:
                        df[term] = left
                    else:
                        del df[term]
            for turn_chars in self.turn_chars[n:]:
                for role, c, k in turn_chars:
                    chars[role][0] -= c
                    chars[role][1] -= k
            self.date = self.turn_date[n]
            del self.turn_df[n:]
            del self.turn_chars[n:]
            del self.turn_date[n:]
        if self.epoch is not None and self.epoch.done > n:
            self.epoch = None
        if self.memo is not None and self.memo[0] > n:
            self.memo = None
        del self.fps[n:]
        del self.starts[n:]
        del self.counts[n:]
        if self.stable > n:
            self.stable = self.stable_msgs = 0
            self.prefix = bytearray()

    def sync(self, turns: TurnIndex, upto: int, estimator: TokenEstimator, cache: CompactionCache | None) -> None:
        """Cover turns ``1..upto``: boundaries, fingerprints, token counts, the SITREP's statistics;
        extend the digest."""
        key = estimator.key
        if key != self.counts_key:
            self.counts = [turn_tokens(t, estimator, cache) for t in turns[: len(self.fps)]]
            self.counts_key = key
            self.epoch = None
        for turn in turns[len(self.fps) : upto]:
            self.fps.append(turn.fingerprint)
            self.starts.append(turn.start)
            self.counts.append(turn_tokens(turn, estimator, cache))
        df, chars = self.df, self.chars
        for turn in turns[len(self.turn_df) : upto]:
            extract = extract_of(turn, cache)
            for term, k in extract.df:
                df[term] = df.get(term, 0) + k
            for role, c, k in extract.chars:
                totals = chars.setdefault(role, [0, 0])
                totals[0] += c
                totals[1] += k
            self.turn_df.append(extract.df)
            self.turn_chars.append(extract.chars)
            self.turn_date.append(self.date)
            if extract.dates:
                self.date = extract.dates[-1]
        self._extend_digest(turns.messages, max(0, len(self.fps) - UNSTABLE_TURNS))

    def df_before(self, turn: int) -> dict[str, int]:
        """Document frequencies over turns ``0..turn-1`` (indexes); ``turn`` at most ``len(fps)``."""
        df = dict(self.df)
        for turn_df in self.turn_df[turn:]:
            for term, k in turn_df:
                df[term] -= k
        return df

    def chars_before(self, turn: int) -> dict[str, tuple[int, int]]:
        """Characters and messages written per role over turns ``0..turn-1``."""
        chars = {role: [c, k] for role, (c, k) in self.chars.items()}
        for turn_chars in self.turn_chars[turn:]:
            for role, c, k in turn_chars:
                chars[role][0] -= c
                chars[role][1] -= k
        return {role: (c, k) for role, (c, k) in chars.items()}

    def date_at(self, turn: int) -> SessionDate | None:
        """The session date in effect when turn index ``turn`` started (it may be the current turn)."""
        return self.turn_date[turn] if turn < len(self.turn_date) else self.date

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
