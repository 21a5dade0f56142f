"""The Anthropic Messages wire format, pure and synchronous: requests, messages, streams, errors.

* :mod:`.request` — the body parsed and checked, headers looked up, hop-by-hop headers;
* :mod:`.messages` — blocks, tool calls, and the one rule for where a turn begins;
* :mod:`.sse` — server-sent events: encoding, decoding, accumulating a stream into a message;
* :mod:`.errors` — Anthropic's error shape and ids;
* :mod:`.exchange` — a request and a response as bytes, between the server and the engine.
"""

from trooper.wire.errors import (
    ERROR_STATUS,
    JSON,
    TrooperError,
    error_body,
    error_payload,
    invalid_request,
    new_id,
    new_message_id,
    new_request_id,
    new_tool_use_id,
)
from trooper.wire.exchange import ANSWERED_BY_TROOPER, Incoming, Outgoing, error_response, stamped
from trooper.wire.messages import (
    answered_tool_calls,
    block_type,
    content_blocks,
    continues_turn,
    last_user_message,
    tool_result_id,
    tool_use_id,
)
from trooper.wire.request import HOP_BY_HOP, MESSAGE_ROLES, LowerHeaders, header, parse_body, validate_messages
from trooper.wire.sse import MessageAccumulator, SSEDecoder, block_events, encode_sse, message_events

__all__ = [
    "ANSWERED_BY_TROOPER",
    "ERROR_STATUS",
    "HOP_BY_HOP",
    "JSON",
    "MESSAGE_ROLES",
    "Incoming",
    "LowerHeaders",
    "MessageAccumulator",
    "Outgoing",
    "SSEDecoder",
    "TrooperError",
    "answered_tool_calls",
    "block_events",
    "block_type",
    "content_blocks",
    "continues_turn",
    "encode_sse",
    "error_body",
    "error_payload",
    "error_response",
    "header",
    "invalid_request",
    "last_user_message",
    "message_events",
    "new_id",
    "new_message_id",
    "new_request_id",
    "new_tool_use_id",
    "parse_body",
    "stamped",
    "tool_result_id",
    "tool_use_id",
    "validate_messages",
]
