"""Errors in Anthropic's shape, and ids shaped like Anthropic's.

Trooper's own failures reach clients exactly as the API's would (``{"type": "error", "error":
{"type": …, "message": …}}`` with the status the type implies), so SDKs raise their usual typed
exceptions and a client cannot tell a Trooper refusal from an upstream one by its form.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from typing import Any, Final

import orjson

JSON = dict[str, Any]

#: HTTP status for each Anthropic ``error.type`` (https://docs.claude.com/en/api/errors).
ERROR_STATUS: Final[Mapping[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_ALPHABET: Final = string.ascii_letters + string.digits
#: Byte value -> base62 character (``b % 62``). Values 248–255 wrap onto the first eight characters,
#: a bias of 1/256 that costs an id about 0.03 bits of its ~131: ids must be unique, not secret.
_BASE62: Final = bytes(ord(_ALPHABET[b % 62]) for b in range(256))


def new_id(prefix: str) -> str:
    """An id shaped like Anthropic's (``msg_01…``, ``toolu_01…``): 22 base62 characters after ``_01``.

    22 random bytes mapped through a table in one C call: every request pays for one, and a
    digit-by-digit base conversion of a big integer cost ten times as much.
    """
    return f"{prefix}_01" + os.urandom(22).translate(_BASE62).decode("ascii")


def new_message_id() -> str:
    return new_id("msg")


def new_tool_use_id() -> str:
    return new_id("toolu")


def new_request_id() -> str:
    return new_id("req")


def error_payload(error_type: str, message: str) -> JSON:
    """Anthropic's error shape; the ``type`` decides the status through :data:`ERROR_STATUS`."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps(error_payload(error_type, message))


class TrooperError(Exception):
    """An error Trooper itself answers with, in Anthropic's shape.

    Raised anywhere below the server; the server turns it into a response with :attr:`status`
    and :meth:`body`. ``headers`` carries extra response headers (for example ``retry-after``).
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status if status is not None else ERROR_STATUS.get(error_type, 500)
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return error_body(self.error_type, self.message)


def invalid_request(message: str) -> TrooperError:
    return TrooperError("invalid_request_error", message)
