"""The context handed to a local model: the engine's bridge to :mod:`trooper.memory`.

Compaction itself is pure and runs inside the state machine's transition callback; what needs I/O
— asking the local provider for its context window (Ollama's ``/api/show``) — happens here, before
the turn is decided, and is cached, so the callback never waits on the network.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from trooper.config import Config
from trooper.controls import TROOPER_FIELDS
from trooper.memory import (
    Budget,
    CalibratedEstimator,
    CompactionCache,
    ModelSitrep,
    SitrepMode,
    compact,
    plan_summary,
)
from trooper.providers.base import LocalProvider, ProviderError
from trooper.turn import LocalContext

#: Used when neither the configuration nor the provider says how large the local context is.
SAFE_DEFAULT_CONTEXT: Final = 8192
_RETRY_CONTEXT_LOOKUP: Final = 30.0


_MAX_CALIBRATIONS: Final = 10_000


@attrs.define
class _Calibration:
    estimator: CalibratedEstimator
    messages: int | None = None
    tokens: int = 0


class Memory:
    """Budgets and builds local contexts; caches the local model's window and per-turn extracts."""

    def __init__(self, config: Config, local: LocalProvider | None) -> None:
        self.config = config
        self.local = local
        self.context_tokens: int | None = config.ollama.context_length
        self._looked_up_at: float | None = None
        self.estimator = CalibratedEstimator()
        # Bounded well below the memory package's default: entries hold per-turn extracts, and a
        # long-running proxy sees many conversations.
        self.cache = CompactionCache(maxsize=2_000)
        self._calibrations: OrderedDict[str, _Calibration] = OrderedDict()
        #: Calibrated from what the local model itself counts (Ollama's ``prompt_eval_count``): the
        #: local budget is in the local model's tokens, which the cloud's counts do not measure.
        self.local_estimator = CalibratedEstimator()
        self.local_observations = 0

    def estimator_for(self, session: str) -> CalibratedEstimator:
        """The conversation's own estimator: its scale learns from the cloud's exact counts."""
        found = self._calibrations.get(session)
        return found.estimator if found is not None else self.estimator

    def observe(self, session: str, messages: Sequence[Mapping[str, Any]], input_tokens: int) -> None:
        """Learn from the cloud's exact ``usage`` input count for the messages it was sent.

        Consecutive requests of a conversation differ by their newest messages, so the difference of
        two exact counts calibrates the estimate of just those messages: O(new content), not O(history).
        """
        state = self._calibrations.pop(session, None) or _Calibration(CalibratedEstimator())
        self._calibrations[session] = state
        while len(self._calibrations) > _MAX_CALIBRATIONS:
            self._calibrations.popitem(last=False)
        grew = state.messages is not None and len(messages) > state.messages and input_tokens > state.tokens
        if grew and state.messages is not None:
            fresh = messages[state.messages :]
            estimated = sum(state.estimator.count_message(message) for message in fresh)
            state.estimator.calibrate(estimated, input_tokens - state.tokens)
        state.messages, state.tokens = len(messages), input_tokens

    def observe_local(self, estimated: int, actual: int) -> None:
        """Learn from the local model's own count of a prompt this memory estimated at ``estimated``."""
        if estimated > 0 and actual > 0:
            self.local_estimator.calibrate(estimated, actual)
            self.local_observations += 1

    def _estimator_for_local(self, session: str) -> CalibratedEstimator:
        """The local model's calibration once it has counted a prompt, else the conversation's (the cloud's
        counts are in another tokenizer, but closer than none)."""
        return self.local_estimator if self.local_observations else self.estimator_for(session)

    async def prepare(self) -> None:
        """Learn the local model's context window once (retried after a while if the lookup failed)."""
        if self.context_tokens is not None or self.local is None:
            return
        now = time.monotonic()
        if self._looked_up_at is not None and now - self._looked_up_at < _RETRY_CONTEXT_LOOKUP:
            return
        self._looked_up_at = now
        try:
            self.context_tokens = await self.local.context_length(self.config.ollama.model)
        except ProviderError:
            self.context_tokens = None

    def compact(
        self,
        body: Mapping[str, Any],
        session: str,
        *,
        sitrep: SitrepMode = "extractive",
        summaries: Sequence[ModelSitrep] = (),
    ) -> LocalContext:
        """Anchor + SITREP + Tail for a request's body (controls already stripped), sized to the local
        model (pure, synchronous).

        ``sitrep`` and ``summaries`` choose the SITREP (see :func:`trooper.memory.compact`): the
        conversation's model-written summaries, when the engine keeps them, are local content.
        """
        context = self.context_tokens or SAFE_DEFAULT_CONTEXT
        requested = body.get("max_tokens")
        reserved = min(int(requested), context // 4) if isinstance(requested, int) and requested > 0 else context // 4
        estimator = self._estimator_for_local(session)
        result = compact(
            body["messages"],
            budget=Budget(context_tokens=context, reserved_output=reserved),
            system=body.get("system"),
            tools=body.get("tools"),
            estimator=estimator,
            cache=self.cache,
            sitrep=sitrep,
            summaries=summaries,
            tool_choice=body.get("tool_choice"),
        )
        due = None
        if sitrep != "extractive":
            due = plan_summary(body["messages"], result, summaries, estimator=estimator)
        kind = result.sitrep.kind if result.sitrep is not None else "none"
        return LocalContext(
            list(result.messages),
            dict(result.layers),
            result.num_ctx,
            reserved,
            due,
            kind,
            reductions=result.reductions,
            system=result.system,
            tools=result.tools,
        )

    def estimate_request(self, body: Mapping[str, Any]) -> int:
        """A local estimate of a request's input tokens (for ``count_tokens`` when the cloud can't)."""
        visible = {k: v for k, v in body.items() if k not in TROOPER_FIELDS}
        total = 0
        for message in visible.get("messages") or []:
            if isinstance(message, Mapping):
                total += self.estimator.count_message(message)
        system = visible.get("system")
        if isinstance(system, (str, list)):
            total += self.estimator.count_system(system)
        tools = visible.get("tools")
        if isinstance(tools, list):
            total += self.estimator.count_tools(tools)
        return total
