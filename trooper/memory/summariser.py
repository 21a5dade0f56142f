"""Optional model-written SITREP: old SITREP + newly evicted turns → new SITREP, off the hot path.

The default SITREP is extractive and needs no model. This module adds the recursive-summary option
(as MemGPT/Letta and LangChain's summary buffer do) without putting a model call inside compaction:

1. after a local turn is answered, the engine calls :meth:`SitrepWriter.plan` (cheap: it runs the same
   compaction, with the shared cache, to learn which turns the SITREP covers now);
2. it runs the returned :class:`SummaryRequest` through the injected summariser — sync
   (:meth:`SitrepWriter.run`) or async (:meth:`SitrepWriter.arun`), in the background;
3. the result is kept in the writer's :class:`SummaryStore` under the fingerprints of the turns it
   covers, and the next :func:`~trooper.memory.compaction.compact` given that store uses it when it
   still matches the history, adding extractive entries for turns evicted since. Until then, and
   whenever it does not fit, compaction stays extractive, so the request path never waits for a model.

Privacy: the summariser must be a *local* model — its input is the conversation, local turns included,
and its output is local content that must never reach a cloud provider.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from trooper.memory._lru import LRU
from trooper.memory.compaction import Budget, compact
from trooper.memory.incremental import CompactionCache
from trooper.memory.tokens import CalibratedEstimator, TokenEstimator
from trooper.memory.truncate import truncate_text
from trooper.memory.turns import HistoryTurn, TurnIndex, block_text, blocks, segment

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "AsyncSummariser",
    "ModelSummary",
    "SitrepWriter",
    "Summariser",
    "SummaryRequest",
    "SummaryStore",
    "render_turns",
]

DEFAULT_INSTRUCTIONS: Final = (
    "You maintain the SITREP of a long conversation between a user and an assistant: a compact record "
    "that replaces turns no longer shown. Update the previous SITREP (if any) with the new turns below. "
    "Use exactly these sections: Goals and constraints (the user's instructions, near-verbatim), "
    "Decisions, Facts (identifiers, paths, URLs, numbers with units, names, dates, versions — copy them "
    "exactly), Tool actions (tool, key argument → outcome; flag errors), Open items. Tag every entry with "
    "its source turns like [t12]. Drop what later turns superseded. Write at most {max_tokens} tokens. "
    "Output only the SITREP."
)
#: Longest text kept from one block when rendering turns for the summariser.
_BLOCK_CHARS: Final = 4000


@attrs.frozen
class SummaryRequest:
    """What the summariser is asked: fold ``turns`` into ``previous``, covering ``first``–``last``."""

    previous: str | None
    first: int
    last: int
    turns: tuple[HistoryTurn, ...]
    #: ``turns`` rendered as text, each turn headed ``[tN]``.
    transcript: str
    #: Target length of the new SITREP.
    max_tokens: int
    #: Fingerprints of turns ``1..last``: the storage key of the result.
    key: tuple[bytes, ...]

    def prompt(self, instructions: str = DEFAULT_INSTRUCTIONS) -> str:
        """A ready-to-send prompt for a chat model."""
        parts = [instructions.format(max_tokens=self.max_tokens)]
        if self.previous:
            parts.append(f"Previous SITREP (turns {self.first}–{self.turns[0].number - 1}):\n{self.previous}")
        parts.append(f"New turns:\n{self.transcript}")
        return "\n\n".join(parts)


@attrs.frozen
class ModelSummary:
    """A stored model-written SITREP of turns ``first``–``last``."""

    text: str
    first: int
    last: int


class SummaryStore:
    """Model-written SITREPs by the fingerprints of the turns they cover (``1..last``), bounded (LRU).

    Keyed by the whole fingerprint chain, so a summary is only ever used for the history it was
    written from: an edited or regenerated turn changes the chain and the summary no longer matches.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self._data: LRU[tuple[bytes, ...], ModelSummary] = LRU(maxsize)

    def put(self, key: tuple[bytes, ...], summary: ModelSummary) -> None:
        self._data.put(key, summary)

    def get(self, key: tuple[bytes, ...]) -> ModelSummary | None:
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def starting(self, first: bytes) -> list[tuple[tuple[bytes, ...], ModelSummary]]:
        """The stored summaries whose turn chain starts with ``first`` (few per conversation)."""
        return [(k, v) for k, v in self._data.items() if k and k[0] == first]

    def covering(self, turns: TurnIndex, lo: int, complete: int) -> tuple[str, int] | None:
        """The newest summary that starts at turn index ``lo`` and matches this history: ``(text, last)``.

        It may reach past ``lo`` into what is now the Tail (written when the Tail was shorter): the
        overlap is redundant, not wrong, and it avoids discarding a summary every time the Tail moves.
        It never reaches the current turn (index ``complete``), which no summary can have seen.
        """
        stored = self.starting(turns.fingerprint(0))
        fps: tuple[bytes, ...] | None = None
        best: tuple[str, int] | None = None
        for key, value in stored:
            end = len(key)
            if end <= lo or end > complete or value.first != lo + 1:
                continue
            if best is not None and end <= best[1]:
                continue
            if fps is None:
                fps = tuple(turns.fingerprints(complete))
            if key == fps[:end]:
                best = (value.text, end)
        return best


Summariser = Callable[[SummaryRequest], str]
AsyncSummariser = Callable[[SummaryRequest], Awaitable[str]]


def render_turns(turns: Sequence[HistoryTurn]) -> str:
    """Turns as plain text for a summariser, long blocks clipped."""
    out: list[str] = []
    for turn in turns:
        out.append(f"[t{turn.number}]")
        for message in turn.messages:
            role = str(message.get("role", "?"))
            for block in blocks(message.get("content")):
                out.append(f"{role}: {_block_text(block)}")
    return "\n".join(out)


def _block_text(block: Mapping[str, Any]) -> str:
    """A block labelled by kind (the summariser must tell a tool call from what the user said)."""
    kind = block.get("type")
    body = block_text(block)
    if kind == "tool_use":
        text = f"(tool call) {body}"
    elif kind == "tool_result":
        text = f"(tool result{' ERROR' if block.get('is_error') else ''}) {body}"
    elif kind in ("text", "thinking"):
        text = body
    else:
        text = f"({kind})"
    return text if len(text) <= _BLOCK_CHARS else text[:_BLOCK_CHARS] + " …"


class SitrepWriter:
    """Keeps a model-written SITREP current for a conversation, outside the request path.

    ``summariser`` is any callable taking a :class:`SummaryRequest` and returning the new SITREP text
    (or an awaitable of it). ``max_chunk_tokens`` bounds one call's transcript: a long backlog is folded
    in over several calls, each extending the previous summary.
    """

    def __init__(
        self,
        summariser: Summariser | AsyncSummariser,
        *,
        cache: CompactionCache | None = None,
        store: SummaryStore | None = None,
        estimator: TokenEstimator | None = None,
        max_chunk_tokens: int = 6000,
    ) -> None:
        self._summariser = summariser
        self._cache = cache
        #: Where the summaries are kept; pass it to :func:`~trooper.memory.compaction.compact`.
        self.store = store if store is not None else SummaryStore()
        self._estimator: TokenEstimator = estimator if estimator is not None else CalibratedEstimator()
        self._max_chunk = max_chunk_tokens

    def plan(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        budget: Budget,
        system: str | list[Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> SummaryRequest | None:
        """The next summarisation step for this history, or ``None`` when the stored one is current."""
        result = compact(
            messages,
            budget=budget,
            system=system,
            tools=tools,
            estimator=self._estimator,
            cache=self._cache,
            summaries=self.store,
        )
        span = result.sources["sitrep"] or result.sources["dropped"]
        if not span:
            return None
        first, last = span[0], span[-1]
        turns = segment(messages)
        fps = tuple(t.fingerprint for t in turns)
        previous: ModelSummary | None = None
        for key, value in self.store.starting(fps[0]):
            if value.first == first and key == fps[: len(key)] and (previous is None or value.last > previous.last):
                previous = value
        if previous is not None and previous.last >= last:
            return None  # current (it may reach into the Tail: compaction accepts that)
        start = previous.last + 1 if previous is not None else first
        chunk: list[HistoryTurn] = []
        used = 0
        for turn in turns[start - 1 : last]:
            cost = self._estimator.count(render_turns([turn]))
            if chunk and used + cost > self._max_chunk:
                break
            chunk.append(turn)
            used += cost
        end = chunk[-1].number
        target = max(64, int(budget.sitrep_share * result.usable))
        return SummaryRequest(
            previous=previous.text if previous is not None else None,
            first=first,
            last=end,
            turns=tuple(chunk),
            transcript=render_turns(chunk),
            max_tokens=target,
            key=fps[:end],
        )

    def _store(self, request: SummaryRequest, text: Any) -> ModelSummary:
        if not isinstance(text, str):
            raise TypeError(f"a summariser must return str, got {type(text).__name__}")
        text = truncate_text(text.strip(), request.max_tokens, self._estimator)
        summary = ModelSummary(text, request.first, request.last)
        self.store.put(request.key, summary)
        return summary

    def run(self, request: SummaryRequest) -> ModelSummary:
        """Run a synchronous summariser and store its result."""
        out = self._summariser(request)
        if inspect.isawaitable(out):
            close = getattr(out, "close", None)
            if callable(close):
                close()  # do not leave a never-awaited coroutine behind
            raise TypeError("the summariser is asynchronous: use arun()/arefresh()")
        return self._store(request, out)

    async def arun(self, request: SummaryRequest) -> ModelSummary:
        """Run a summariser (sync or async) and store its result."""
        out = self._summariser(request)
        if inspect.isawaitable(out):
            out = await out
        return self._store(request, out)

    def refresh(self, messages: Sequence[Mapping[str, Any]], *, budget: Budget, **kw: Any) -> ModelSummary | None:
        """:meth:`plan` then :meth:`run`; ``None`` when nothing was due."""
        request = self.plan(messages, budget=budget, **kw)
        return self.run(request) if request is not None else None

    async def arefresh(
        self, messages: Sequence[Mapping[str, Any]], *, budget: Budget, **kw: Any
    ) -> ModelSummary | None:
        """:meth:`plan` then :meth:`arun`; ``None`` when nothing was due."""
        request = self.plan(messages, budget=budget, **kw)
        return await self.arun(request) if request is not None else None
