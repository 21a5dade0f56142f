"""The model-written SITREP, memory side: plan a summary request, accept the model's answer.

The default SITREP is extractive and needs no model. Optionally the local model writes one — the
recursive summary of MemGPT/Letta and LangChain's summary buffer: the previous summary plus the middle
turns it does not cover yet, folded into a new one. Nothing here calls a model or waits for one; the
engine drives it off the request path:

1. after a local turn, :func:`plan_summary` (pure) looks at the compaction that turn used and the
   conversation's stored :class:`~trooper.memory.sitrep.ModelSitrep` values, and returns the next
   :class:`SummaryRequest` — only the middle turns not covered yet, a bounded chunk at a time — or
   ``None`` when the freshest summary already covers the middle;
2. the engine sends :meth:`SummaryRequest.prompt` to the *local* model (in the background, queued);
3. :func:`accept_summary` (pure) turns the model's text into a new ``ModelSitrep`` — plain data keyed
   by the fingerprint of the turns it covers — which the engine stores with the conversation;
4. the next :func:`~trooper.memory.compaction.compact` with ``sitrep="model"`` or ``"auto"`` and the
   stored summaries uses the freshest one that matches the history, and extractive entries for the
   middle turns it does not cover yet; it falls back to the extractive SITREP whenever none matches or
   it does not fit. So the request path never waits for a model.

Privacy: the summariser must be the *local* model — its input is the conversation, local turns
included — and its output, and everything derived from it, is local content that must never reach a
cloud provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from trooper.memory.compaction import Compaction
from trooper.memory.sitrep import ModelSitrep, freshest
from trooper.memory.tokens import CalibratedEstimator, TokenEstimator
from trooper.memory.truncate import truncate_text
from trooper.memory.turns import HistoryTurn, TurnIndex, block_text, blocks, chain_fingerprint, prompt_starts

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "SummaryRequest",
    "accept_summary",
    "plan_summary",
    "render_turns",
]

DEFAULT_INSTRUCTIONS: Final = (
    "You maintain the SITREP of a long conversation: a compact record that replaces turns no longer "
    "shown. Update the previous SITREP (if any) with the new turns below. Keep what each speaker said "
    "about themselves, their plans, preferences and decisions, with names, dates, numbers, identifiers, "
    "paths and URLs copied exactly; say which work is done and which is still open; drop what later turns "
    "superseded. Tag entries with their source turns like [t12]. Write at most {max_tokens} tokens. "
    "Output only the SITREP."
)
#: Longest text kept from one block when rendering turns for the summariser.
_BLOCK_CHARS: Final = 4000


@attrs.frozen
class SummaryRequest:
    """What the local model is asked: fold turns ``covered+1``–``last`` into ``previous``.

    Plain data, like the summary it produces (:meth:`to_dict` / :meth:`from_dict`), so the engine can
    queue it. Privacy: it holds the conversation's text — local content.
    """

    #: The first middle turn: the summary covers ``first``–``last``.
    first: int
    last: int
    #: The summary being extended (of turns ``first``–``covered``), or ``None``.
    previous: str | None
    covered: int
    #: Turns ``covered+1``–``last`` as text, each turn headed ``[tN]``.
    transcript: str
    #: Target length of the new summary.
    max_tokens: int
    #: Fingerprint of turns ``1..last`` (what the result is keyed by).
    chain: str

    def prompt(self, instructions: str = DEFAULT_INSTRUCTIONS) -> str:
        """A ready-to-send prompt for a chat model."""
        parts = [instructions.format(max_tokens=self.max_tokens)]
        if self.previous:
            parts.append(f"Previous SITREP (turns {self.first}–{self.covered}):\n{self.previous}")
        parts.append(f"New turns:\n{self.transcript}")
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SummaryRequest:
        fields = {f.name for f in attrs.fields(cls)}
        if set(data) != fields:
            raise ValueError(f"a summary request has exactly the fields {sorted(fields)}")
        return cls(**dict(data))


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


def plan_summary(
    messages: Sequence[Mapping[str, Any]],
    compaction: Compaction,
    summaries: Sequence[ModelSitrep] = (),
    *,
    estimator: TokenEstimator | None = None,
    max_chunk_tokens: int = 6000,
    max_tokens: int | None = None,
) -> SummaryRequest | None:
    """The next summary request for this history, or ``None`` when the middle is covered.

    ``compaction`` is what :func:`~trooper.memory.compaction.compact` returned for ``messages``: its
    middle (the turns it summarised or dropped) is what a summary must cover. ``summaries`` are the
    conversation's stored ones; the freshest that matches this history is extended. One request folds
    in at most ``max_chunk_tokens`` of new turns (at least one turn), so a long backlog takes several.
    ``max_tokens`` bounds the summary (default: the SITREP's share of the window, at least 64).
    """
    middle = compaction.sources["sitrep"] or compaction.sources["dropped"]
    if not middle:
        return None
    est: TokenEstimator = estimator if estimator is not None else CalibratedEstimator()
    first, last = middle[0], middle[-1]
    turns = TurnIndex(messages, prompt_starts(messages))
    complete = max(0, len(turns) - 1)
    fps = turns.fingerprints(complete)
    previous = freshest(summaries, fps, first, complete)
    covered = previous.last if previous is not None else first - 1
    if covered >= last:
        return None  # current (it may reach into the Tail: compaction accepts that)
    chunk: list[HistoryTurn] = []
    used = 0
    for turn in turns[covered:last]:
        cost = est.count(render_turns([turn]))
        if chunk and used + cost > max_chunk_tokens:
            break
        chunk.append(turn)
        used += cost
    end = chunk[-1].number
    target = max_tokens if max_tokens is not None else max(64, compaction.layers["sitrep"] or compaction.usable // 4)
    return SummaryRequest(
        first=first,
        last=end,
        previous=previous.text if previous is not None else None,
        covered=covered,
        transcript=render_turns(chunk),
        max_tokens=target,
        chain=chain_fingerprint(fps[:end]),
    )


def accept_summary(request: SummaryRequest, text: str, *, estimator: TokenEstimator | None = None) -> ModelSitrep:
    """The model's answer to ``request`` as the summary to store (clipped, visibly, to its length)."""
    if not isinstance(text, str):
        raise TypeError(f"a summary is text, got {type(text).__name__}")
    est: TokenEstimator = estimator if estimator is not None else CalibratedEstimator()
    clipped = truncate_text(text.strip(), request.max_tokens, est)
    return ModelSitrep(request.first, request.last, clipped, request.chain)
