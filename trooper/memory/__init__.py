"""Three-layer memory for local turns: Anchor, SITREP, Tail.

A local model does not get the raw history: it gets the first two turns verbatim (Anchor), a compressed
abstraction of the middle turns (SITREP) and the newest turns that fit (Tail), sized to its context
window. :func:`compact` builds that request — purely, synchronously, deterministically — and reports
every layer's tokens; a :class:`CompactionCache` shared across requests makes it incremental.

The SITREP is chosen by salience: sentences and clauses of the conversation, in their speakers' words,
worth what they add that is rare in the conversation and not yet shown, grouped by session date, work
marked done or open. Optionally the local model writes it (:func:`plan_summary`, :func:`accept_summary`,
:class:`ModelSitrep`), off the request path.

One module per concept: :mod:`.tokens` (estimation), :mod:`.turns` (segmentation, fingerprints, block
text), :mod:`.extract` (a turn's units), :mod:`.sitrep` (selection and rendering), :mod:`.layers`
(Anchor and Tail), :mod:`.truncate` (markers), :mod:`.incremental` (memoisation and running
conversation states), :mod:`.preamble` (the system prompt and tools giving way on a small window),
:mod:`.compaction` (the budget policy and :func:`compact`), :mod:`.summariser` (the model-written
SITREP).

Everything returned here is derived from every turn, local ones included: it is local content and must
never be sent to a cloud provider.
"""

from trooper.memory.compaction import Budget, BudgetTooSmall, Compaction, SitrepMode, compact
from trooper.memory.extract import Unit, UnitKind, extract_turn
from trooper.memory.incremental import CacheStats, CompactionCache, turn_tokens
from trooper.memory.layers import ANCHOR_TURNS
from trooper.memory.sitrep import ModelSitrep, Sitrep, SitrepEntry
from trooper.memory.summariser import SummaryRequest, accept_summary, plan_summary
from trooper.memory.tokens import (
    CalibratedEstimator,
    CallableEstimator,
    ContentKind,
    TextEstimator,
    TokenEstimator,
    classify,
)
from trooper.memory.truncate import MARKER_PREFIX, marker, truncate_text
from trooper.memory.turns import HistoryTurn, is_prompt, message_text, segment, turn_fingerprint

__all__ = [
    "ANCHOR_TURNS",
    "MARKER_PREFIX",
    "Budget",
    "BudgetTooSmall",
    "CacheStats",
    "CalibratedEstimator",
    "CallableEstimator",
    "Compaction",
    "CompactionCache",
    "ContentKind",
    "HistoryTurn",
    "ModelSitrep",
    "Sitrep",
    "SitrepEntry",
    "SitrepMode",
    "SummaryRequest",
    "TextEstimator",
    "TokenEstimator",
    "Unit",
    "UnitKind",
    "accept_summary",
    "classify",
    "compact",
    "extract_turn",
    "is_prompt",
    "marker",
    "message_text",
    "plan_summary",
    "segment",
    "truncate_text",
    "turn_fingerprint",
    "turn_tokens",
]
