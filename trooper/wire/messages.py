"""The shape of a conversation in the Messages API: blocks, tool calls, and where a turn begins.

A *turn* is a user prompt plus every tool round trip until the assistant's final answer. Whether a
request begins a turn or continues one decides where it runs (a continuation keeps its turn's route),
what a local turn records and what the memory treats as the current exchange, so the rule is written
once, here: a request continues a turn when its last user or assistant message is a user message
whose first block is a ``tool_result``. Its *new part* — what the client adds with this request — is
its last user message and what follows it (an assistant prefill).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

#: Block types that call a tool (the client's tools, and the server tools' own calls).
TOOL_USE_TYPES: Final = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def content_blocks(message: Mapping[str, Any]) -> list[Any]:
    """A message's content as a list of blocks (a string is one text block)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    return []


def block_type(block: Any) -> str | None:
    return str(block.get("type")) if isinstance(block, Mapping) else None


def tool_use_id(block: Any) -> str | None:
    """The id of a block that calls a tool."""
    if isinstance(block, Mapping) and block.get("type") in TOOL_USE_TYPES:
        ref = block.get("id")
        if isinstance(ref, str):
            return ref
    return None


def tool_result_id(block: Any) -> str | None:
    """The tool call a result block answers (``tool_result`` and the server tools' result blocks)."""
    if isinstance(block, Mapping) and block.get("type") not in TOOL_USE_TYPES:
        ref = block.get("tool_use_id")
        if isinstance(ref, str):
            return ref
    return None


def last_user_message(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the last ``user`` message (an assistant prefill or a system note may follow it)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None


def answered_tool_calls(messages: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The tool calls a request answers when it continues a turn; None when it begins one.

    See the module docstring for the rule; the calls are those of the assistant message before the
    request's last user message (empty when there is none, which the API would reject anyway).
    """
    last = None
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") != "system":
            last = index
            break
    if last is None or messages[last].get("role") != "user":
        return None
    blocks = content_blocks(messages[last])
    if not blocks or block_type(blocks[0]) != "tool_result":
        return None
    for message in reversed(messages[:last]):
        if message.get("role") == "assistant":
            return [ref for ref in map(tool_use_id, content_blocks(message)) if ref is not None]
    return []


def continues_turn(messages: Sequence[Mapping[str, Any]]) -> bool:
    return answered_tool_calls(messages) is not None


__all__ = [
    "TOOL_USE_TYPES",
    "answered_tool_calls",
    "block_type",
    "content_blocks",
    "continues_turn",
    "last_user_message",
    "tool_result_id",
    "tool_use_id",
]
