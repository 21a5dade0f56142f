"""A Messages request as Trooper reads it: the body parsed and checked, the headers looked up.

Trooper reads only what it needs (``messages`` and a handful of fields) and leaves the rest for the
provider to judge, but what it reads it checks, so a malformed request gets a 400 that names the
field instead of a crash or a confused decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import orjson

from trooper.wire.errors import JSON, invalid_request

#: Roles of the messages a conversation is made of. Claude Code (2.1.x) also sends ``system`` messages
#: inside ``messages`` (its environment notes, right after the first prompt); those are the client's
#: context, like the top-level ``system`` field: forwarded as they are, never a turn of their own.
MESSAGE_ROLES: Final = ("user", "assistant", "system")

#: Headers a proxy must not forward (RFC 9110 §7.6.1) plus those the HTTP client recomputes.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "content-length",
    }
)


class LowerHeaders(dict[str, str]):
    """Headers keyed by lowercased name, built once per request so each lookup is one dict access.

    A request's headers are looked up half a dozen times (controls, session, credential); scanning
    and lowercasing the whole list each time was most of what those lookups cost. As with
    :func:`header`, the first value of a repeated header wins.
    """

    @classmethod
    def of(cls, headers: Sequence[tuple[str, str]] | Mapping[str, str]) -> LowerHeaders:
        items = headers.items() if isinstance(headers, Mapping) else headers
        out = cls()
        for key, value in items:
            out.setdefault(key.lower(), value)
        return out


def header(headers: Sequence[tuple[str, str]] | Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup over a list of pairs or a mapping."""
    lowered = name.lower()
    if isinstance(headers, LowerHeaders):
        return headers.get(lowered)
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key.lower() == lowered:
            return value
    return None


def parse_body(raw: bytes) -> JSON:
    """The request body as a dict, or a 400 that says what is wrong with it."""
    if not raw:
        raise invalid_request("request body is empty: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_request(f"request body must be a JSON object, got {type(body).__name__}")
    return body


#: Top-level fields Trooper reads, and the JSON types it can work with.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "system": ((str, list), "a string or a list of text blocks"),
    "stream": ((bool,), "a boolean"),
    "tools": ((list,), "a list of tools"),
    "metadata": ((dict,), "an object"),
    "max_tokens": ((int,), "an integer"),
}


def validate_messages(body: JSON) -> list[JSON]:
    """Check what Trooper reads (``messages`` and a few fields); the rest is for the provider to judge."""
    for field, (types, described) in _FIELD_TYPES.items():
        value = body.get(field)
        if value is not None and (not isinstance(value, types) or (field == "max_tokens" and isinstance(value, bool))):
            raise invalid_request(f"{field}: must be {described}, got {type(value).__name__}")
    for field in ("system", "tools"):
        value = body.get(field)
        if isinstance(value, list):
            for number, item in enumerate(value):
                if not isinstance(item, dict):
                    raise invalid_request(f"{field}.{number}: must be an object")
    messages = body.get("messages")
    if messages is None:
        raise invalid_request("messages: field required")
    if not isinstance(messages, list):
        raise invalid_request(f"messages: must be a list, got {type(messages).__name__}")
    if not messages:
        raise invalid_request("messages: at least one message is required")
    if len(messages) > 100_000:
        raise invalid_request(f"messages: at most 100000 messages are allowed, got {len(messages)}")
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(f"messages.{position}: must be an object")
        if message.get("role") not in MESSAGE_ROLES:
            raise invalid_request(f"messages.{position}.role: must be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if isinstance(content, list):
            for number, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise invalid_request(f"messages.{position}.content.{number}: must be an object with a type")
        elif not isinstance(content, str):
            raise invalid_request(f"messages.{position}.content: must be a string or a list of blocks")
    if not any(message["role"] == "user" for message in messages):
        raise invalid_request("messages: at least one message must have role 'user'")
    return messages
