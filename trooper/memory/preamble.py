"""The preamble of a local request — system prompt and tool definitions — reduced when it crowds out the turn.

A coding agent sends a long system prompt and a dozen tools with page-long descriptions on every
request. A cloud model has room to spare; an ordinary local model (a 16K window) may have none left
for the conversation itself. The messages matter most: the user's words of the current turn and the
Anchor are what the turn is about. So when the Anchor and the current turn would not fit whole
beside the preamble, the preamble gives way first, one documented step at a time, each step taken
only if the previous ones were not enough:

1. ``tool-descriptions`` — every tool's description, and every description inside its input schema,
   is cut to its first sentence. A tool's name, parameters and types are what a model needs to call
   it; the rest of a description is usage advice.
2. ``unused-tools`` — only the tools the conversation has used (a ``tool_use`` of that name anywhere
   in it) and the one ``tool_choice`` names are kept. A local turn rarely needs a tool the session has
   never touched; the ones it works with stay callable.
3. ``system`` — the system prompt keeps its leading part (blocks in order, the last one cut), with a
   visible truncation marker, so that the Anchor and the current turn fit; it never falls below an
   eighth of the window, since the instructions at its head are what makes the agent behave.

What is left over after all three is compaction's to handle (truncating the Anchor and the current
turn, or refusing the turn). Everything here is pure: the same request and window give the same
preamble. The reduced preamble is the client's own text, cut; it goes to the local model only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from trooper.memory.tokens import TokenEstimator
from trooper.memory.truncate import marker

__all__ = ["REDUCTIONS", "Preamble", "Reduction", "first_sentence", "fit_preamble", "used_tools"]

Reduction = Literal["tool-descriptions", "unused-tools", "system"]
#: The steps, in the order they are taken.
REDUCTIONS: Final[tuple[Reduction, ...]] = ("tool-descriptions", "unused-tools", "system")

#: A sentence ends at ``.``, ``!`` or ``?`` followed by white space, or at a line break.
_SENTENCE_END: Final = re.compile(r"[.!?](?=\s)|\n")

System = str | list[Any] | None


@attrs.frozen
class Preamble:
    """The system prompt and tools a local request gets, what they cost and which steps cut them."""

    system: System
    tools: list[Any] | None
    system_tokens: int
    tools_tokens: int
    reductions: tuple[Reduction, ...] = ()


def first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence (all of it when it has only one)."""
    stripped = text.strip()
    found = _SENTENCE_END.search(stripped)
    return stripped if found is None else stripped[: found.start() + (found.group() != "\n")]


def _short_schema(value: Any) -> Any:
    """A JSON schema with every ``description`` string cut to its first sentence."""
    if isinstance(value, Mapping):
        return {
            key: first_sentence(item) if key == "description" and isinstance(item, str) else _short_schema(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_short_schema(item) for item in value]
    return value


def _short_tool(tool: Any) -> Any:
    if not isinstance(tool, Mapping):
        return tool
    out = dict(tool)
    if isinstance(out.get("description"), str):
        out["description"] = first_sentence(out["description"])
    if "input_schema" in out:
        out["input_schema"] = _short_schema(out["input_schema"])
    return out


def used_tools(messages: Sequence[Mapping[str, Any]], tool_choice: Any = None) -> frozenset[str]:
    """Names of the tools the conversation called, and the one ``tool_choice`` insists on."""
    names: set[str] = set()
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for block in content:
                if (
                    isinstance(block, Mapping)
                    and block.get("type") == "tool_use"
                    and isinstance(block.get("name"), str)
                ):
                    names.add(block["name"])
    if (
        isinstance(tool_choice, Mapping)
        and tool_choice.get("type") == "tool"
        and isinstance(tool_choice.get("name"), str)
    ):
        names.add(tool_choice["name"])
    return frozenset(names)


def _head(text: str, max_tokens: int, omitted: int, estimator: TokenEstimator) -> str:
    """The longest leading part of ``text`` that fits ``max_tokens`` with the truncation marker after it."""
    mark = marker(omitted, "of the system prompt")
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimator.count(text[:mid].rstrip() + "\n" + mark) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "\n" + mark if lo else mark


def _leading_system(system: System, max_tokens: int, estimator: TokenEstimator) -> System:
    """The system prompt's leading part within ``max_tokens`` (its blocks in order, the last one cut)."""
    total = estimator.count_system(system)
    if system is None or total <= max_tokens:
        return system
    if isinstance(system, str):
        return _head(system, max_tokens - (total - estimator.count(system)), total - max_tokens, estimator)
    kept: list[Any] = []
    for block in system:
        trial = [*kept, block]
        if estimator.count_system(trial) <= max_tokens:
            kept.append(block)
            continue
        if isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
            room = max_tokens - estimator.count_system([*kept, {**block, "text": ""}])
            if room > 0:
                cut = _head(block["text"], room, total - max_tokens, estimator)
                kept.append({**block, "text": cut})
        break
    return kept or None


def fit_preamble(
    system: System,
    tools: Sequence[Any] | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    room: int,
    need: int,
    estimator: TokenEstimator,
    tool_choice: Any = None,
) -> Preamble:
    """The preamble to send, reduced (see the module docstring) until ``need`` tokens of messages fit.

    ``room`` is the window less the reply's reserve; ``need`` what the messages take without cutting
    the Anchor or the current turn. The preamble is returned unchanged when it already leaves that.
    """
    tool_list = list(tools) if tools else None
    preamble = Preamble(system, tool_list, estimator.count_system(system), estimator.count_tools(tool_list))

    def fits(candidate: Preamble) -> bool:
        return room - candidate.system_tokens - candidate.tools_tokens >= need

    if fits(preamble):
        return preamble
    steps: list[Reduction] = []
    if tool_list:
        short = [_short_tool(tool) for tool in tool_list]
        if short != tool_list:
            tool_list = short
            steps.append("tool-descriptions")
            preamble = attrs.evolve(preamble, tools=tool_list, tools_tokens=estimator.count_tools(tool_list))
            if fits(preamble):
                return attrs.evolve(preamble, reductions=tuple(steps))
        used = used_tools(messages, tool_choice)
        kept = [tool for tool in tool_list if isinstance(tool, Mapping) and tool.get("name") in used]
        if len(kept) < len(tool_list):
            tool_list = kept or None
            steps.append("unused-tools")
            preamble = attrs.evolve(preamble, tools=tool_list, tools_tokens=estimator.count_tools(tool_list))
            if fits(preamble):
                return attrs.evolve(preamble, reductions=tuple(steps))
    floor = room // 8
    allowed = max(room - preamble.tools_tokens - need, floor)
    if preamble.system_tokens > allowed:
        cut = _leading_system(system, allowed, estimator)
        tokens = estimator.count_system(cut)
        if tokens < preamble.system_tokens:  # a prompt shorter than the marker is left whole
            steps.append("system")
            preamble = attrs.evolve(preamble, system=cut, system_tokens=tokens)
    return attrs.evolve(preamble, reductions=tuple(steps))
