"""Trooper's own controls in a request: ``x_force_local``, ``X-Force-Local`` and the prompt marker.

A client asks for a local turn in one of three ways, and each must be honoured wherever it can
appear, because a control that is missed sends a turn the user meant to keep local to the cloud:

* the body field ``x_force_local`` and the header ``X-Force-Local`` (any request, a tool-loop
  continuation included);
* the **marker** (``::local`` by default) at the start of the prompt — in the last *user* message,
  also when an assistant prefill or a system note follows it, and after leading
  ``<system-reminder>`` segments that clients such as Claude Code put in the same block;
* the marker **inside** other text of the last user message: a side request that wraps a local
  prompt in its own template (a title request quoting the conversation) carries the marker in its
  middle. Such a request is not a prompt of the user's, but it is about a local turn, so it runs
  locally too; the marker is left as it is, since it is not a control at that place.

Trooper's fields and the leading marker are removed before any provider sees the request: the
cloud rejects unknown fields, and the marker is not part of what the user asked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from trooper.text import after_leading_reminders, strip_reminders
from trooper.wire.errors import JSON, invalid_request
from trooper.wire.messages import content_blocks, last_user_message
from trooper.wire.request import header

TROOPER_FIELDS: Final = frozenset({"x_force_local"})
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")

Source = Literal["body", "header", "marker", "embedded"]


@attrs.frozen
class Controls:
    """Whether the request asks for a local turn, and through which control."""

    force_local: bool = False
    source: Source | None = None
    #: (message index, block index) of the text block that starts with the marker.
    marker_block: tuple[int, int] | None = None


def read_controls(
    headers: Sequence[tuple[str, str]] | Mapping[str, str], body: Mapping[str, Any], marker: str
) -> Controls:
    """The locality controls of a request; a malformed control is a 400 naming it."""
    if "x_force_local" in body:
        value = body["x_force_local"]
        if not isinstance(value, bool):
            raise invalid_request(f"x_force_local: must be a boolean (true or false), got {type(value).__name__}")
        if value:
            return Controls(True, "body")
    raw = header(headers, "x-force-local")
    if raw is not None:
        lowered = raw.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise invalid_request(f"X-Force-Local header: must be true or false, got {raw[:40]!r}")
        if lowered in _TRUE:
            return Controls(True, "header")
    return find_marker(body, marker)


def find_marker(body: Mapping[str, Any], marker: str) -> Controls:
    """The marker in the last user message: at the start of a text block, else anywhere in one."""
    messages = body.get("messages")
    if not marker or not isinstance(messages, list) or not messages:
        return Controls()
    position = last_user_message(messages)
    if position is None or not isinstance(messages[position], Mapping):
        return Controls()
    texts = [
        (number, block if isinstance(block, str) else str(block.get("text", "")))
        for number, block in enumerate(content_blocks(messages[position]))
        if isinstance(block, str) or (isinstance(block, Mapping) and block.get("type") == "text")
    ]
    for number, text in texts:
        if strip_marker(text, marker) is not None:
            return Controls(True, "marker", (position, number))
    pattern = _embedded(marker)
    for _number, text in texts:
        if pattern.search(strip_reminders(text)):
            return Controls(True, "embedded")
    return Controls()


@functools.lru_cache(maxsize=8)
def _embedded(marker: str) -> re.Pattern[str]:
    """The marker as a token of its own (``::local`` in "… ::local what …", not in "::localhost")."""
    before = r"(?<!\w)" if re.match(r"\w", marker[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", marker[-1]) else ""
    return re.compile(before + re.escape(marker) + after)


def strip_marker(text: str, marker: str) -> str | None:
    """``text`` without the marker that starts its prompt (after leading reminders), or None without one."""
    lead, rest = after_leading_reminders(text)
    stripped = rest.lstrip()
    if marker and stripped.startswith(marker):
        after = stripped[len(marker) :]
        if not after or after[0].isspace() or not (marker[-1].isalnum() or marker[-1] == "_"):
            return lead + after.lstrip()
    return None


def strip_controls(body: Mapping[str, Any], controls: Controls, marker: str) -> JSON:
    """The body a provider may see: Trooper's fields removed, a leading marker cut from the prompt."""
    out = {k: v for k, v in body.items() if k not in TROOPER_FIELDS}
    if controls.marker_block is None:
        return out
    message_index, block_index = controls.marker_block
    messages = list(out["messages"])
    message = dict(messages[message_index])
    blocks = content_blocks(message)
    block = blocks[block_index]
    text = block if isinstance(block, str) else str(block.get("text", ""))
    stripped = strip_marker(text, marker)
    new_text = stripped if stripped is not None else text
    new_block = {**block, "text": new_text} if isinstance(block, Mapping) else {"type": "text", "text": new_text}
    message["content"] = [*blocks[:block_index], new_block, *blocks[block_index + 1 :]]
    messages[message_index] = message
    out["messages"] = messages
    return out


__all__ = ["TROOPER_FIELDS", "Controls", "Source", "find_marker", "read_controls", "strip_controls", "strip_marker"]
