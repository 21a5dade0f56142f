"""The Messages wire format's pure helpers: the SSE grammar, stream accumulation, and the turn rule.

Every stream Trooper relays or produces goes through :mod:`trooper.wire.sse`, so the decoder must give
the same events however the bytes are chunked (TCP decides that, not the sender), and accumulating a
stream must rebuild the message it streams. :mod:`trooper.wire.messages` holds the one rule for
whether a request begins a turn or continues one, which decides where a tool loop runs; it is checked
here on its edge cases (prefills, system notes, results with no call before them).
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.wire import (
    MessageAccumulator,
    SSEDecoder,
    answered_tool_calls,
    block_events,
    block_type,
    content_blocks,
    continues_turn,
    encode_sse,
    last_user_message,
    message_events,
    tool_result_id,
    tool_use_id,
)
from trooper.wire.messages import TOOL_USE_TYPES

PROPERTY = settings(max_examples=100, deadline=None)


def decode(chunks: list[bytes]) -> list[tuple[str, str]]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return [*events, *decoder.flush()]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, so any list of ints will do)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------------------------------------ encoding


def test_encode_sse_names_the_event_after_its_type() -> None:
    event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "héllo\n"}}
    frame = encode_sse(event)
    assert frame == b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' + (
        b'"delta":{"type":"text_delta","text":"h\xc3\xa9llo\\n"}}\n\n'
    )
    assert decode([frame]) == [("content_block_delta", orjson.dumps(event).decode())]


# ------------------------------------------------------------------------------------------ decoding


def test_frames_fields_comments_and_blank_lines() -> None:
    stream = (
        b": a comment before anything\n\n"
        b"event: ping\n\n"  # no data: not an event
        b"id: 7\nretry: 100\nevent: first\ndata: one\ndata:two\ndata:  three\n\n"
        b"\n\n"  # extra blank lines between frames
        b"data\n\n"  # a data field without a colon is an empty value
        b"event: last\r\ndata: crlf\r\n\r\n"
    )
    assert decode([stream]) == [("first", "one\ntwo\n three"), ("message", ""), ("last", "crlf")]


def test_flush_returns_a_final_frame_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"event: done\ndata: {}\n\nevent: cut\ndata: tail\n")) == [("done", "{}")]
    assert list(decoder.flush()) == [("cut", "tail")]
    assert list(decoder.flush()) == []  # the buffer is gone


@pytest.mark.parametrize("rest", [b"", b"\n", b": only a comment\n", b"event: no-data\n"])
def test_flush_without_a_complete_looking_frame_gives_nothing(rest: bytes) -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: x\n\n" + rest)) == [("message", "x")]
    assert list(decoder.flush()) == []


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode([b"data: caf\xc3\n\n"]) == [("message", "caf\ufffd")]


_NAMES = st.sampled_from(["message_start", "content_block_delta", "ping", "error", "message_stop"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_EVENTS = st.lists(st.builds(lambda name, payload: {"type": name, "payload": payload}, _NAMES, _JSON), max_size=6)
_CUTS = st.lists(st.integers(min_value=0), max_size=12)


@PROPERTY
@given(_EVENTS, _CUTS, st.booleans())
def test_encoded_events_decode_whatever_the_chunking(events: list[Any], cuts: list[int], crlf: bool) -> None:
    stream = b"".join(encode_sse(event) for event in events)
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")  # JSON data holds no raw newline
    decoded = decode(split(stream, cuts))
    assert [(name, orjson.loads(data)) for name, data in decoded] == [(event["type"], event) for event in events]


#: Field values of a well-formed stream: any text without a line break (non-ASCII included).
_VALUES = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=8)
_LINES = st.one_of(
    st.tuples(st.just("data"), _VALUES),
    st.tuples(st.just("event"), _VALUES.filter(bool)),
    st.tuples(st.sampled_from(["id", "retry", ""]), _VALUES),  # "" is a comment line
)
_FRAMES = st.lists(st.lists(_LINES, min_size=1, max_size=4), max_size=5)


def _expected(frames: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The SSE spec's reading of the frames (for the fields Anthropic uses)."""
    out = []
    for frame in frames:
        event, data = "message", []
        for field, value in frame:
            if field == "event":
                event = value.removeprefix(" ")
            elif field == "data":
                data.append(value.removeprefix(" "))
        if data:
            out.append((event, "\n".join(data)))
    return out


@PROPERTY
@given(_FRAMES, st.lists(st.booleans(), min_size=1), _CUTS)
def test_any_well_formed_stream_decodes_whatever_the_chunking(
    frames: list[list[tuple[str, str]]], crlf: list[bool], cuts: list[int]
) -> None:
    endings = iter(crlf * 64)
    stream = b""
    for frame in frames:
        for field, value in frame:
            stream += f"{field}:{value}".encode() + (b"\r\n" if next(endings) else b"\n")
        stream += b"\r\n" if next(endings) else b"\n"
    expected = _expected(frames)
    assert decode([stream]) == expected
    assert decode(split(stream, cuts)) == expected
    assert decode([bytes([byte]) for byte in stream]) == expected


def test_a_stray_carriage_return_decodes_the_same_whatever_the_chunking() -> None:
    # A lone CR ends a line (the SSE spec), and a CR at the end of a chunk may be half of CRLF.
    stream = b"data: a\r\r\n\n"
    assert decode([stream]) == decode([stream[:10], stream[10:]]) == decode([stream[:8], stream[8:]])
    assert decode([stream]) == [("message", "a")]
    assert decode([b"data: one\rdata: two\r\r"]) == [("message", "one\ntwo")]


# -------------------------------------------------------------------------------------- accumulation


def _message(content: list[Any], **fields: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 34},
        **fields,
    }


_TEXT = st.text(st.characters(exclude_categories=["Cs"]))
_INPUTS = st.dictionaries(st.text(max_size=5), _JSON, max_size=3)
_BLOCKS = st.one_of(
    st.builds(lambda text: {"type": "text", "text": text}, _TEXT),
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, _TEXT, _TEXT.filter(bool)),
    st.builds(lambda i, n, v: {"type": "tool_use", "id": i, "name": n, "input": v}, _TEXT, _TEXT, _INPUTS),
    st.builds(lambda data: {"type": "redacted_thinking", "data": data}, _TEXT),
    st.builds(lambda i, v: {"type": "server_tool_use", "id": i, "name": "web_search", "input": v}, _TEXT, _INPUTS),
)


def accumulate(events: list[Any]) -> Any:
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.feed(event)
    return accumulator.message


@PROPERTY
@given(
    st.lists(_BLOCKS, max_size=5),
    st.sampled_from(["end_turn", "tool_use", "max_tokens", None]),
    st.integers(0, 10**6),
    _CUTS,
)
def test_accumulating_a_message_stream_rebuilds_the_message(
    content: list[Any], stop_reason: str | None, output_tokens: int, cuts: list[int]
) -> None:
    """:func:`message_events` and :class:`MessageAccumulator` are inverses, also through SSE bytes."""
    message = _message(content, stop_reason=stop_reason, usage={"input_tokens": 5, "output_tokens": output_tokens})
    events = list(message_events(message))
    assert accumulate(events) == message
    stream = b"".join(encode_sse(event) for event in events)
    assert accumulate([orjson.loads(data) for _, data in decode(split(stream, cuts))]) == message


def test_message_events_shape() -> None:
    message = _message([{"type": "text", "text": "hi"}], usage={"input_tokens": 5, "output_tokens": 9})
    events = list(message_events(message))
    assert [event["type"] for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"] == {"input_tokens": 5, "output_tokens": 1}  # as the API sends it: at most 1 so far
    assert events[4] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }
    assert message["content"] == [{"type": "text", "text": "hi"}]  # the message itself is left alone


def test_thinking_without_signature_streams_no_signature_delta() -> None:
    events = list(block_events(3, {"type": "thinking", "thinking": "hmm"}))
    assert [event.get("delta", {}).get("type") for event in events] == [None, "thinking_delta", None]
    assert all(event["index"] == 3 for event in events)


def test_citations_survive_the_round_trip() -> None:
    # Each citation travels as a citations_delta, as the API streams them.
    citation = {"type": "char_location", "cited_text": "source words", "document_index": 0}
    message = _message([{"type": "text", "text": "cited", "citations": [citation]}])
    assert accumulate(list(message_events(message))) == message


def test_accumulator_applies_every_delta_kind() -> None:
    citation = {"type": "char_location", "cited_text": "c"}
    events = [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},  # ignored
        {"type": "message_start", "message": {"id": "m", "content": None, "usage": None}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": citation}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": citation}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "unknown_delta", "x": 1}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "thinking_delta", "thinking": "a"}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "signature_delta", "signature": "s1"}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "signature_delta", "signature": "s2"}},
        {"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "t", "input": {}}},
        {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
        {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "[1]}"}},
        {"type": "content_block_stop", "index": 3},
        {"type": "content_block_start", "index": 4, "content_block": {"type": "tool_use", "id": "u", "input": {}}},
        {"type": "content_block_delta", "index": 4, "delta": {"type": "input_json_delta", "partial_json": " "}},
        {"type": "content_block_stop", "index": 4},
        {"type": "content_block_start", "index": 5, "content_block": {"type": "tool_use", "id": "v", "input": {}}},
        {"type": "content_block_stop", "index": 5},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    message = accumulate(events)
    assert message == {
        "id": "m",
        "content": [
            {},  # a block the stream never started
            {"type": "text", "text": "Hello", "citations": [citation, citation]},
            {"type": "thinking", "thinking": "a", "signature": "s2"},
            {"type": "tool_use", "id": "t", "input": {"a": [1]}},
            {"type": "tool_use", "id": "u", "input": {}},  # whitespace-only input JSON is an empty input
            {"type": "tool_use", "id": "v", "input": {}},  # no input delta at all
        ],
        "usage": {"output_tokens": 7},
        "stop_reason": "tool_use",
    }


def test_message_delta_merges_usage() -> None:
    message = accumulate(
        [
            {"type": "message_start", "message": _message([], usage={"input_tokens": 3, "output_tokens": 1})},
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": None},
            {"type": "message_delta", "usage": {"output_tokens": 40}},
        ]
    )
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 40}
    assert message["stop_reason"] == "max_tokens"


def test_nothing_before_message_start_is_a_message() -> None:
    assert accumulate([{"type": "message_delta", "delta": {"stop_reason": "end_turn"}}]) is None


# ------------------------------------------------------------------------------------ messages: blocks


def test_content_blocks() -> None:
    blocks = [{"type": "image"}]
    assert content_blocks({"content": "hi"}) == [{"type": "text", "text": "hi"}]
    assert content_blocks({"content": blocks}) is blocks
    assert content_blocks({"content": None}) == []
    assert content_blocks({}) == []
    assert content_blocks({"content": {"type": "text"}}) == []


def test_block_type() -> None:
    assert block_type({"type": "tool_use"}) == "tool_use"
    assert block_type({}) == "None"
    assert block_type("text") is None


@pytest.mark.parametrize("kind", sorted(TOOL_USE_TYPES))
def test_every_tool_call_type_has_an_id_and_no_result_id(kind: str) -> None:
    block = {"type": kind, "id": "call_1", "tool_use_id": "confusing"}
    assert tool_use_id(block) == "call_1"
    assert tool_result_id(block) is None


@pytest.mark.parametrize(
    ("block", "call", "result"),
    [
        ({"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, None, "t1"),
        ({"type": "web_search_tool_result", "tool_use_id": "s1", "content": []}, None, "s1"),
        ({"type": "mcp_tool_result", "tool_use_id": "m1"}, None, "m1"),
        ({"type": "tool_use", "id": 7}, None, None),  # ids are strings
        ({"type": "tool_result", "tool_use_id": None}, None, None),
        ({"type": "text", "text": "t"}, None, None),
        ("tool_use", None, None),
    ],
)
def test_tool_ids(block: Any, call: str | None, result: str | None) -> None:
    assert tool_use_id(block) == call
    assert tool_result_id(block) == result


# ------------------------------------------------------------------------------------- messages: turns

USER = {"role": "user", "content": "run the tests"}
NOTE = {"role": "system", "content": "environment notes"}
CALLS = {
    "role": "assistant",
    "content": [
        {"type": "text", "text": "running"},
        {"type": "tool_use", "id": "toolu_a", "name": "bash", "input": {}},
        {"type": "server_tool_use", "id": "srvtoolu_b", "name": "web_search", "input": {}},
    ],
}
RESULTS = {
    "role": "user",
    "content": [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "ok"},
        {"type": "text", "text": "and also this"},
    ],
}
PREFILL = {"role": "assistant", "content": "Sure,"}


def test_last_user_message() -> None:
    assert last_user_message([USER, CALLS, RESULTS, PREFILL, NOTE]) == 2
    assert last_user_message([NOTE, PREFILL]) is None
    assert last_user_message([]) is None


@pytest.mark.parametrize(
    ("messages", "answered"),
    [
        ([USER], None),
        ([USER, CALLS, RESULTS], ["toolu_a", "srvtoolu_b"]),
        ([USER, CALLS, RESULTS, NOTE], ["toolu_a", "srvtoolu_b"]),  # a system note does not end the loop
        ([USER, NOTE, CALLS, NOTE, RESULTS], ["toolu_a", "srvtoolu_b"]),
        ([USER, CALLS, USER, RESULTS], ["toolu_a", "srvtoolu_b"]),  # the nearest assistant message answers
        ([USER, CALLS, RESULTS, PREFILL], None),  # the last turn message is the assistant's
        ([USER, CALLS, {"role": "user", "content": [RESULTS["content"][1], RESULTS["content"][0]]}], None),
        ([USER, CALLS, {"role": "user", "content": "results as a string"}], None),
        ([USER, CALLS, {"role": "user", "content": []}], None),
        ([RESULTS], []),  # a result with no call before it continues a turn (the API would reject it)
        ([USER, RESULTS], []),
        ([NOTE], None),
        ([], None),
    ],
)
def test_answered_tool_calls(messages: list[Any], answered: list[str] | None) -> None:
    assert answered_tool_calls(messages) == answered
    assert continues_turn(messages) is (answered is not None)


_CONVERSATION = st.lists(st.sampled_from([USER, CALLS, RESULTS, PREFILL]), max_size=6)


@PROPERTY
@given(_CONVERSATION, st.lists(st.integers(min_value=0), max_size=4))
def test_system_messages_never_change_the_turn_rule(messages: list[Any], places: list[int]) -> None:
    """``role: "system"`` messages are client context wherever they stand, never a turn boundary."""
    noted = list(messages)
    for place in places:
        noted.insert(place % (len(noted) + 1), NOTE)
    assert answered_tool_calls(noted) == answered_tool_calls(messages)
    expected = last_user_message(messages)
    found = last_user_message(noted)
    assert (found is None) is (expected is None)
    if found is not None:
        assert sum(message is not NOTE for message in noted[:found]) == expected


@PROPERTY
@given(st.binary(max_size=200).map(lambda raw: raw.replace(b"\x00", b"\r")), st.lists(st.integers(0), max_size=8))
def test_any_bytes_decode_the_same_whatever_the_chunking(stream: bytes, cuts: list[int]) -> None:
    """Not only well-formed streams: whatever the bytes, where they were cut changes nothing."""
    assert decode(split(stream, cuts)) == decode([stream])
