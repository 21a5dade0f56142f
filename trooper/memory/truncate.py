"""Truncation with explicit markers, for the turns that must be present but do not fit.

Only the Anchor turns and the current turn are ever truncated (every other turn is kept whole or left
to the SITREP), and only when they alone overflow the budget. Truncation is always visible: every cut
leaves ``[… truncated by Trooper: N tokens omitted …]`` where the text was, so neither the model nor a
reader mistakes a partial prompt for the whole.

Structure is preserved: inside a turn, a ``tool_use`` and the ``tool_result`` answering it are dropped
or kept together (an *exchange* is an assistant message plus the tool-result messages that follow it),
ids are never altered, and each message keeps at least one block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from trooper.memory.tokens import TokenEstimator
from trooper.memory.turns import blocks, content_text, is_prompt, json_text

__all__ = ["MARKER_PREFIX", "fit_turn", "fit_turns", "marker", "shrink_message", "truncate_text", "waterfill"]

MARKER_PREFIX: Final = "[… truncated by Trooper:"

_DROP_SILENTLY: Final = frozenset({"thinking", "redacted_thinking"})
_PLACEHOLDER: Final = frozenset({"image", "document", "search_result"})


def marker(tokens: int, what: str = "") -> str:
    """The explicit truncation marker."""
    detail = f" ({what})" if what else ""
    return f"{MARKER_PREFIX} {max(1, tokens)} tokens omitted{detail} …]"


def waterfill(sizes: Sequence[int], total: int) -> list[int]:
    """Split ``total`` so small items keep all they need and large ones share the rest equally."""
    alloc = [0] * len(sizes)
    remaining = max(0, total)
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    for k, idx in enumerate(order):
        share = remaining // (len(sizes) - k)
        alloc[idx] = min(sizes[idx], share)
        remaining -= alloc[idx]
    return alloc


def truncate_text(text: str, max_tokens: int, estimator: TokenEstimator) -> str:
    """Keep the head (two thirds) and the tail (one third) of ``text`` around a marker.

    Why head and tail: a prompt states its task first and often asks its question last; a log or a
    tool output shows the command first and the verdict last. The result may still exceed
    ``max_tokens`` only when the marker alone does (the caller checks).
    """
    total = estimator.count(text)
    if total <= max_tokens:
        return text
    mark = marker(total - max(0, max_tokens))

    def build(keep: int) -> str:
        head = keep * 2 // 3
        tail = keep - head
        out = text[:head].rstrip() + "\n" + mark
        return out + "\n" + text[len(text) - tail :].lstrip() if tail else out

    if estimator.count(mark) >= total:
        return text  # cutting would not save anything: the marker costs more than the text
    if estimator.count(mark) > max_tokens:
        return mark
    lo, hi = 0, min(len(text) - 1, max(0, max_tokens) * 8)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimator.count(build(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return build(lo) if lo else mark


def _payload_tokens(block: Mapping[str, Any], estimator: TokenEstimator) -> int:
    kind = block.get("type")
    if kind == "text":
        return estimator.count(str(block.get("text", "")))
    if kind == "tool_result":
        return estimator.count(content_text(block.get("content", "")))
    if kind == "tool_use":
        return estimator.count(json_text(block.get("input", {})))
    return 0


def _shrink_input(value: Any, max_tokens: int, estimator: TokenEstimator) -> Any:
    """Shrink a tool input: long strings are truncated, other bulky values replaced by a marker."""
    size = estimator.count(json_text(value))
    if size <= max_tokens:
        return value
    if isinstance(value, str):
        return truncate_text(value, max_tokens, estimator)
    if not isinstance(value, Mapping) or not value:
        return marker(size)
    keys = list(value)
    sizes = [estimator.count(json_text(value[k])) + 2 for k in keys]
    frame = sum(estimator.count(str(k)) + 2 for k in keys)
    alloc = waterfill(sizes, max_tokens - frame)
    out: dict[str, Any] = {}
    for k, s, a in zip(keys, sizes, alloc, strict=True):
        v = value[k]
        if s <= a:
            out[str(k)] = v
        elif isinstance(v, str):
            out[str(k)] = truncate_text(v, max(1, a), estimator)
        else:
            out[str(k)] = marker(s)
    return out


def _shrink_block(block: Mapping[str, Any], alloc: int, estimator: TokenEstimator) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": truncate_text(str(block.get("text", "")), alloc, estimator)}
    if kind == "tool_result":
        out = {k: v for k, v in block.items() if k not in ("content", "cache_control")}
        text = content_text(block.get("content", ""))
        dropped = [b for b in blocks(block.get("content", "")) if b.get("type") != "text"]
        note = f"[{len(dropped)} non-text part(s) omitted by Trooper]\n" if dropped else ""
        out["content"] = note + truncate_text(text, max(1, alloc), estimator)
        return out
    if kind == "tool_use":
        out = {k: v for k, v in block.items() if k != "cache_control"}
        out["input"] = _shrink_input(block.get("input", {}), max(1, alloc), estimator)
        return out
    return {k: v for k, v in block.items() if k != "cache_control"}


def shrink_message(message: Mapping[str, Any], target: int, estimator: TokenEstimator) -> dict[str, Any]:
    """A copy of ``message`` whose content is cut down towards ``target`` tokens.

    Thinking blocks go first (the model does not need its old reasoning), then images and documents
    become a short placeholder, then text, tool results and tool inputs are truncated in proportion,
    small ones untouched (water-filling). Best effort: the caller verifies the result.
    """
    if estimator.count_message(message) <= target:
        return dict(message)
    src = [b for b in blocks(message.get("content")) if b.get("type") not in _DROP_SILENTLY]
    base: list[dict[str, Any]] = []
    for b in src:
        if b.get("type") in _PLACEHOLDER:
            size = estimator.count_message({"role": "user", "content": [b]})
            base.append({"type": "text", "text": marker(size, str(b.get("type")))})
        else:
            base.append(dict(b))
    if not base:
        base = [{"type": "text", "text": marker(estimator.count_message(message))}]
    out = {**message, "content": base}
    if estimator.count_message(out) <= target:
        return out
    sizes = [_payload_tokens(b, estimator) for b in base]
    frame = estimator.count_message(out) - sum(sizes)
    budget = target - frame
    for _ in range(6):
        alloc = waterfill(sizes, budget)
        shrunk = [b if s <= a else _shrink_block(b, a, estimator) for b, s, a in zip(base, sizes, alloc, strict=True)]
        out = {**message, "content": shrunk}
        over = estimator.count_message(out) - target
        if over <= 0:
            return out
        budget -= max(over, 4)
        if budget <= 0:
            break
    minimal = [_shrink_block(b, 1, estimator) for b in base]
    return {**message, "content": minimal}


def _exchanges(messages: Sequence[Mapping[str, Any]], start: int) -> list[list[int]]:
    """Group message indexes from ``start`` into exchanges: an assistant message and what follows it."""
    groups: list[list[int]] = []
    for i in range(start, len(messages)):
        if messages[i].get("role") == "assistant" or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _with_note(message: dict[str, Any], note: str) -> dict[str, Any]:
    """Add the dropped-messages note as a text block (after any tool results, which must lead)."""
    content = [dict(b) for b in blocks(message.get("content"))]
    block = {"type": "text", "text": note}
    if message.get("role") == "assistant":
        content.insert(0, block)
    else:
        content.append(block)
    return {**message, "content": content}


def fit_turn(
    messages: Sequence[Mapping[str, Any]],
    budget: int,
    estimator: TokenEstimator,
    *,
    keep_newest: bool = True,
) -> tuple[list[dict[str, Any]], int, bool]:
    """Fit one turn into ``budget`` tokens: ``(messages, tokens, truncated)``.

    Policy: the prompt keeps up to half the budget (all of it that the rest does not need); the newest
    exchanges are kept whole, older ones dropped and announced by a marker in the prompt. When even the
    newest exchange does not fit whole, it is truncated if ``keep_newest`` (the current turn: the model
    must see the latest tool results it is answering), else dropped too (an Anchor turn then shrinks to
    its prompt). The result can exceed ``budget`` only when the budget is smaller than the turn's
    minimal skeleton (the caller checks).
    """
    counts = [estimator.count_message(m) for m in messages]
    total = sum(counts)
    if total <= budget:
        return [dict(m) for m in messages], total, False
    if not messages:
        return [], 0, False
    has_head = is_prompt(messages[0])
    head_tokens = counts[0] if has_head else 0
    groups = _exchanges(messages, 1 if has_head else 0)
    sizes = [sum(counts[i] for i in g) for g in groups]
    rest_total = sum(sizes)
    note_cost = estimator.count(marker(10**7, "999 earlier messages of this turn")) + 8
    head_alloc = min(head_tokens, max(min(head_tokens, budget // 2), budget - rest_total))
    unit_budget = budget - head_alloc
    kept: list[int] = []
    used = 0
    if rest_total > unit_budget:
        unit_budget -= note_cost
    for gi in range(len(groups) - 1, -1, -1):
        if used + sizes[gi] <= unit_budget:
            kept.append(gi)
            used += sizes[gi]
        else:
            break
    kept.reverse()
    fitted_units: list[dict[str, Any]] = []
    if groups and not kept and (keep_newest or not has_head):
        # The newest exchange alone overflows: keep it, truncated.
        gi = len(groups) - 1
        kept = [gi]
        idxs = groups[gi]
        alloc = waterfill([counts[i] for i in idxs], max(0, unit_budget))
        fitted_units = [shrink_message(messages[i], a, estimator) for i, a in zip(idxs, alloc, strict=True)]
        used = sum(estimator.count_message(m) for m in fitted_units)
    else:
        fitted_units = [dict(messages[i]) for gi in kept for i in groups[gi]]
    dropped = [i for gi in range(len(groups)) if gi not in kept for i in groups[gi]]
    dropped_tokens = sum(counts[i] for i in dropped)
    note = marker(dropped_tokens, f"{len(dropped)} earlier messages of this turn") if dropped else None

    head_budget = budget - used - (note_cost if note else 0)
    out: list[dict[str, Any]] = []
    for _ in range(4):
        out = []
        if has_head:
            head = shrink_message(messages[0], max(1, head_budget), estimator)
            if note:
                head = _with_note(head, note)
            out.append(head)
            out.extend(fitted_units)
        else:
            out = list(fitted_units)
            if note and out:
                out[0] = _with_note(out[0], note)
        tokens = sum(estimator.count_message(m) for m in out)
        if tokens <= budget or not has_head:
            return out, tokens, True
        head_budget -= tokens - budget
        if head_budget <= 0:
            break
    tokens = sum(estimator.count_message(m) for m in out)
    return out, tokens, True


def fit_turns(
    turns: Sequence[Sequence[Mapping[str, Any]]],
    counts: Sequence[int],
    budget: int,
    estimator: TokenEstimator,
    *,
    keep_newest: bool = False,
) -> tuple[list[list[dict[str, Any]]], int, list[bool]]:
    """Fit several turns into ``budget`` together, water-filling the budget between them.

    Returns the fitted turns, their total tokens and, per turn, whether it was truncated.
    """
    if sum(counts) <= budget:
        return [[dict(m) for m in t] for t in turns], sum(counts), [False] * len(turns)
    alloc = waterfill(counts, budget)
    total = 0
    spare = 0
    order = sorted(range(len(turns)), key=lambda i: (counts[i], i))
    results: dict[int, list[dict[str, Any]]] = {}
    cut: dict[int, bool] = {}
    for i in order:  # small turns first, so what they do not use flows to the larger ones
        msgs, tokens, cut[i] = fit_turn(turns[i], alloc[i] + spare, estimator, keep_newest=keep_newest)
        spare = alloc[i] + spare - tokens
        results[i] = msgs
        total += tokens
    return [results[i] for i in range(len(turns))], total, [cut[i] for i in range(len(turns))]
