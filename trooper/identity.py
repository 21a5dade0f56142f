"""Which conversation a request belongs to.

The Messages API is stateless, so identity is inferred, in order of reliability: an explicit
header; Claude Code's session header; the ``session_id`` inside ``metadata.user_id`` (a JSON string
in current Claude Code, ``user_…_session_<uuid>`` in older ones); else a fingerprint of the system
prompt and the first user text, skipping ``<system-reminder>`` blocks that change between requests
(not the model: a client may switch models within one conversation). Nothing here is authorisation,
and the ledger never depends on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from trooper.wire.errors import invalid_request
from trooper.wire.request import header

EXPLICIT_HEADERS: Final = ("x-trooper-session", "x-session-id")
CLAUDE_CODE_HEADER: Final = "x-claude-code-session-id"
_VALID: Final = re.compile(r"^[A-Za-z0-9._:@\-]{1,128}$")
_LEGACY: Final = re.compile(r"_session_([A-Za-z0-9\-]{1,128})$")


def _checked(value: str, source: str) -> str:
    value = value.strip()
    if not _VALID.match(value):
        raise invalid_request(f"{source}: a session id must be 1-128 characters of letters, digits and . _ : @ -")
    return value


def from_metadata(body: Mapping[str, Any]) -> str | None:
    """The session id Claude Code embeds in ``metadata.user_id``, in either of its formats."""
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.startswith("{"):
        try:
            parsed = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return None
        session = parsed.get("session_id") if isinstance(parsed, dict) else None
        return session if isinstance(session, str) and _VALID.match(session) else None
    match = _LEGACY.search(user_id)
    return match.group(1) if match else None


def derived(body: Mapping[str, Any]) -> str:
    """A stable id from the system prompt and the first user text (reminders skipped).

    Each text is hashed by its length, its first and its last :data:`_EDGE` characters, not whole:
    this runs on every request that names no session, and a long prompt hashed whole would cost
    more than the rest of session identity together. Two conversations still share an id only if both
    texts agree in length, head and tail — the id is a best effort for clients that send none.
    """
    digest = hashlib.sha256()
    system = body.get("system")
    if isinstance(system, str):
        _update(digest, system)
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, Mapping):
                _update(digest, str(block.get("text", "")))
    digest.update(b"\x00")
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping) and message.get("role") == "user":
                _update(digest, _first_text(message.get("content")))
                break
    return "sess_" + digest.hexdigest()[:20]


#: Characters hashed from each end of a long text by :func:`derived`.
_EDGE = 2048


def _update(digest: Any, text: str) -> None:
    if len(text) > 2 * _EDGE:
        text = f"{len(text)}\x00{text[:_EDGE]}\x00{text[-_EDGE:]}"
    digest.update(text.encode("utf-8", "replace"))


def _first_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "text":
                text = str(block.get("text", ""))
                if not text.lstrip().startswith("<system-reminder>"):
                    return text
    return ""


def session_id(headers: Sequence[tuple[str, str]] | Mapping[str, str], body: Mapping[str, Any]) -> tuple[str, str]:
    """``(id, source)`` for a request; a malformed explicit header is a 400 naming the header."""
    for name in EXPLICIT_HEADERS:
        value = header(headers, name)
        if value is not None:
            return _checked(value, name), name
    value = header(headers, CLAUDE_CODE_HEADER)
    if value is not None and _VALID.match(value.strip()):
        return value.strip(), CLAUDE_CODE_HEADER
    from_meta = from_metadata(body)
    if from_meta:
        return from_meta, "metadata.user_id"
    return derived(body), "derived"
