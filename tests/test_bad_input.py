"""Bad input never crashes or corrupts: every answer is a well-formed Anthropic error (or a success),
the next request is served normally, and what was stored before is unchanged."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import API_KEY, Harness
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script

MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
CANARY = "CANARY-STORED-5d1e"


def post(harness: Harness, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return harness.http().post("/v1/messages", content=body, headers={**HEADERS, **(headers or {})})


def assert_anthropic_shape(reply: httpx.Response) -> None:
    """A success, or an error in Anthropic's shape with a matching status; never an internal error."""
    if reply.status_code == 200:
        return
    payload = reply.json()
    assert payload["type"] == "error", payload
    assert isinstance(payload["error"]["type"], str)
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert 400 <= reply.status_code < 600
    assert "internal error" not in payload["error"]["message"], payload


@pytest.fixture
def stored(sqlite_trooper: Harness, fake_local: FakeOllama, fake_cloud: FakeAnthropic) -> Iterator[Harness]:
    """A Trooper whose store already holds a local turn with a canary."""
    fake_local.enqueue(local_script.Reply(text=f"stored answer {CANARY}"))
    reply = post(
        sqlite_trooper,
        orjson.dumps(
            {
                "model": MODEL,
                "max_tokens": 32,
                "x_force_local": True,
                "messages": [{"role": "user", "content": f"stored question {CANARY}"}],
            }
        ),
        {"X-Trooper-Session": "canary-session"},
    )
    assert reply.status_code == 200
    yield sqlite_trooper


def snapshot(harness: Harness) -> tuple[Any, int, int]:
    store = harness.store
    return (
        store.load_conversation("canary-session"),
        len(store.ledger_since(0)[0]),
        len(store.audit("canary-session")),
    )


def assert_canary_intact(harness: Harness, fake_cloud: FakeAnthropic, before: tuple[Any, int, int]) -> None:
    conversation, ledger_size, audit_size = before
    assert harness.store.load_conversation("canary-session") == conversation
    assert len(harness.store.audit("canary-session")) == audit_size
    assert len(harness.store.ledger_since(0)[0]) >= ledger_size
    history = [
        {"role": "user", "content": f"stored question {CANARY}"},
        {"role": "assistant", "content": f"stored answer {CANARY}"},
        {"role": "user", "content": "a normal cloud turn"},
    ]
    fake_cloud.clear()
    reply = post(harness, orjson.dumps({"model": MODEL, "max_tokens": 32, "messages": history}))
    assert reply.status_code == 200, reply.text
    assert CANARY.encode() not in fake_cloud.received_bytes()


def _deep(levels: int) -> bytes:
    return b'{"model":"m","max_tokens":1,"messages":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize(
    ("body", "headers", "status", "mentions"),
    [
        (b"", {}, 400, "empty"),
        (b"{", {}, 400, "JSON"),
        (b"\xc3\x28{}", {}, 400, "JSON"),
        (b'"a string"', {}, 400, "JSON object"),
        (b"null", {}, 400, "JSON object"),
        (orjson.dumps({"model": MODEL, "max_tokens": 5}), {}, 400, "messages"),
        (orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": []}), {}, 400, "messages"),
        (orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": {"role": "user"}}), {}, 400, "messages"),
        (orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [5]}), {}, 400, "messages.0"),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}),
            {},
            400,
            "messages.0.role",
        ),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            {},
            400,
            "at least one message must have role 'user'",
        ),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}),
            {},
            400,
            "messages.0.content",
        ),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            {},
            400,
            "messages.0.content.0",
        ),
        (
            orjson.dumps(
                {"model": MODEL, "max_tokens": 5, "x_force_local": 1, "messages": [{"role": "user", "content": "x"}]}
            ),
            {},
            400,
            "x_force_local",
        ),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            {"X-Force-Local": "perhaps"},
            400,
            "X-Force-Local",
        ),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            {"X-Trooper-Session": "../../etc/passwd"},
            400,
            "x-trooper-session",
        ),
        (_deep(5000), {}, 400, "JSON"),
        (
            orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}] * 100_001}),
            {},
            400,
            "100000",
        ),
    ],
    ids=[
        "empty",
        "truncated",
        "bad-utf8",
        "string",
        "null",
        "no-messages",
        "empty-messages",
        "messages-object",
        "message-not-object",
        "bad-role",
        "no-user-message",
        "content-number",
        "block-without-type",
        "x_force_local-int",
        "force-header",
        "session-header",
        "deep-nesting",
        "too-many-messages",
    ],
)
def test_each_bad_request_gets_a_named_error(
    stored: Harness, fake_cloud: FakeAnthropic, body: bytes, *, headers: dict[str, str], status: int, mentions: str
) -> None:
    before = snapshot(stored)
    fake_cloud.clear()
    reply = post(stored, body, headers)
    assert reply.status_code == status, reply.text
    assert_anthropic_shape(reply)
    assert mentions in reply.json()["error"]["message"]
    assert fake_cloud.requests == []
    assert_canary_intact(stored, fake_cloud, before)


def test_100000_messages_are_served(stored: Harness, fake_cloud: FakeAnthropic) -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(99_999)]
    reply = post(stored, orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": messages}))
    assert reply.status_code == 200, reply.text[:300]


# ---------------------------------------------------------------------------------------- property

#: Wrong types first: the values a confused client most often sends where Trooper reads.
wrong_types = st.sampled_from(
    [
        None,
        0,
        5,
        -1,
        1.5,
        True,
        False,
        "",
        "x",
        [],
        [5],
        ["x"],
        {},
        {"x": 1},
        [{"type": 5}],
        [{"type": "text"}],
        {"type": "text", "text": 5},
    ]
)
json_values = wrong_types | st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
BLOCK_FIELDS = [
    "type",
    "text",
    "id",
    "name",
    "input",
    "tool_use_id",
    "content",
    "source",
    "thinking",
    "signature",
    "cache_control",
    "is_error",
]
BODY_FIELDS = [
    "model",
    "max_tokens",
    "messages",
    "system",
    "stream",
    "metadata",
    "tools",
    "thinking",
    "x_force_local",
    "tool_choice",
    "temperature",
]


@st.composite
def malformed_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    blocks: list[Any] = [
        {"type": "text", "text": "hello"},
        {"type": "tool_use", "id": "toolu_01abc", "name": "f", "input": {"a": 1}},
        {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": [{"type": "text", "text": "r"}]},
        {"type": "thinking", "thinking": "t", "signature": "s"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}},
    ]
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": [
            {"role": "user", "content": "start"},
            {"role": "assistant", "content": [blocks[1]]},
            {"role": "user", "content": [blocks[2], blocks[0]]},
            {"role": "assistant", "content": [blocks[3], {"type": "text", "text": "ok"}]},
            {"role": "user", "content": [blocks[4], {"type": "text", "text": "last"}]},
        ],
        "system": [{"type": "text", "text": "sys"}],
        "metadata": {"user_id": '{"session_id":"abc"}'},
    }
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["body", "message", "block"]))
        value = copy.deepcopy(draw(json_values))  # sampled values are shared: never mutate them
        if where == "body":
            body[draw(st.sampled_from(BODY_FIELDS))] = value
        elif where == "message" and isinstance(body.get("messages"), list) and body["messages"]:
            index = draw(st.integers(0, len(body["messages"]) - 1))
            message = body["messages"][index]
            if isinstance(message, dict):
                message[draw(st.sampled_from(["role", "content"]))] = value
            else:
                body["messages"][index] = value
        elif isinstance(body.get("messages"), list):
            for message in body["messages"]:
                if isinstance(message, dict) and isinstance(message.get("content"), list) and message["content"]:
                    block = message["content"][draw(st.integers(0, len(message["content"]) - 1))]
                    if isinstance(block, dict):
                        block[draw(st.sampled_from(BLOCK_FIELDS))] = value
                    break
    raw = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=4))
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["X-Force-Local"] = draw(st.sampled_from(["true", "false", "maybe", "", "1"]))
    if draw(st.booleans()):
        headers["X-Trooper-Session"] = draw(
            st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=0, max_size=140)
        )
    return raw, headers


def test_generated_malformed_requests(stored: Harness, fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    before = snapshot(stored)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(malformed_requests())
    def check(request: tuple[bytes, dict[str, str]]) -> None:
        raw, headers = request
        reply = post(stored, raw, headers)
        assert_anthropic_shape(reply)

    check()
    assert_canary_intact(stored, fake_cloud, before)
