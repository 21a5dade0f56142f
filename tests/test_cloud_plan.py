"""The cloud plan's repair paths, tested as pure functions over random conversations.

Withholding local blocks cuts holes in a conversation: a local tool loop leaves tool calls without
results (or results without calls), two cloud messages of the same role become neighbours, the first
message may no longer be a user's. :func:`trooper.ledger.plan_cloud` repairs each of those, and the
guard's ``redact`` mode rewrites what it matched. Here conversations of random local and cloud turns
(plain, tool loops, several calls per message, a thinking block, reminders) are driven through the
turn core exactly as the engine drives it — :func:`trooper.turn.begin` plans each turn, the local
reply is fed event by event to the turn's recorder, the cloud's receipt is remembered — and every
plan must be a valid Messages request that holds no local content and every cloud block unchanged.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.config import LocalityConfig
from trooper.conversation import Conversation, Health
from trooper.ledger import REDACTED, WITHHELD_RESULT, LedgerIndex, cloud_sightings
from trooper.turn import CloudCall, Facts, LocalCall, LocalContext, Refuse, Turn, begin, read_request
from trooper.wire import block_type, content_blocks

MODEL = "claude-sonnet-4-6"
SESSION = "s-plan"
_serial = itertools.count()


def _canary(tag: str) -> str:
    return f"LOCAL{tag}x{next(_serial):05d}q7zk42"


def _context(body: Any, session: str) -> LocalContext:
    return LocalContext(list(body["messages"]), {"tail": 1}, 8192, 256)


class Conversationalist:
    """A client and the engine's pure half, with the history the client keeps and where each block came from."""

    def __init__(self, locality: LocalityConfig) -> None:
        self.locality = locality
        self.index = LedgerIndex()
        self.conversation = Conversation(id=SESSION)
        self.history: list[dict[str, Any]] = []
        #: ``(message number, block number) -> "local" | "cloud"``: the oracle of provenance.
        self.origin: dict[tuple[int, int], str] = {}
        self.local_texts: list[str] = []
        self.cloud_texts: list[str] = []

    def facts(self, messages: list[dict[str, Any]], *, forced: bool) -> Facts:
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": messages}
        if forced:
            body["x_force_local"] = True
        request = read_request(
            "POST", "/v1/messages", "", [("x-trooper-session", SESSION)], orjson.dumps(body), marker="::local"
        )
        return Facts(
            request, self.conversation, Health.UP, 1000.0, "req_1", self.index, self.locality, "qwen3", _context
        )

    def send(self, messages: list[dict[str, Any]], *, forced: bool) -> Turn:
        planned = begin(self.facts(messages, forced=forced))
        self.conversation = planned.conversation
        if isinstance(planned.action, CloudCall):
            self.check(planned.action)
            records = cloud_sightings(
                planned.request.body,
                planned.request.messages,
                planned.lineage,  # type: ignore[arg-type]
                self.index,
                planned.action.plan,
                session=SESSION,
                protect_context=self.locality.protect_client_context,
            )
            self.index.add(records)
        return planned

    def reply_locally(self, planned: Turn, blocks: list[dict[str, Any]]) -> None:
        """Feed a local reply to the turn's recorder event by event, as the local runner does."""
        action = planned.action
        assert isinstance(action, LocalCall)
        self.index.add(action.records)
        feed = action.recorder.feed
        self.index.add(feed({"type": "message_start", "message": {"role": "assistant", "content": []}}))
        for number, block in enumerate(blocks):
            if block["type"] == "text":
                self.index.add(
                    feed(
                        {"type": "content_block_start", "index": number, "content_block": {"type": "text", "text": ""}}
                    )
                )
                self.index.add(
                    feed(
                        {
                            "type": "content_block_delta",
                            "index": number,
                            "delta": {"type": "text_delta", "text": block["text"]},
                        }
                    )
                )
            else:
                start = {**block, "input": {}}
                self.index.add(feed({"type": "content_block_start", "index": number, "content_block": start}))
                partial = orjson.dumps(block["input"]).decode()
                self.index.add(
                    feed(
                        {
                            "type": "content_block_delta",
                            "index": number,
                            "delta": {"type": "input_json_delta", "partial_json": partial},
                        }
                    )
                )
            self.index.add(feed({"type": "content_block_stop", "index": number}))
        self.index.add(
            feed({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
        )
        self.index.add(feed({"type": "message_stop"}))

    def add(self, message: dict[str, Any], origin: str) -> None:
        number = len(self.history)
        self.history.append(message)
        for block_number, block in enumerate(content_blocks(message)):
            self.origin[(number, block_number)] = origin
            text = block.get("text") or block.get("content") or orjson.dumps(block.get("input", "")).decode()
            (self.local_texts if origin == "local" else self.cloud_texts).append(str(text))

    def check(self, action: CloudCall) -> None:
        sent = orjson.loads(action.payload)
        check_valid(sent["messages"])
        wire = action.payload.decode()
        for text in self.local_texts:
            for secret in _secrets(text):
                assert secret not in wire, f"local {secret} reached the cloud"
        for message in sent["messages"]:
            for block in content_blocks(message):
                assert REDACTED not in str(block)  # nothing new matched: nothing is redacted
        # Liveness: every cloud block the client sent arrives unchanged.
        sent_blocks = [orjson.dumps(block) for message in sent["messages"] for block in content_blocks(message)]
        for (number, block_number), origin in self.origin.items():
            if origin == "cloud" and number < len(self.history):
                block = content_blocks(self.history[number])[block_number]
                assert orjson.dumps(block) in sent_blocks, f"cloud block {number}.{block_number} did not arrive"


def _secrets(text: str) -> list[str]:
    return [word for word in text.replace('"', " ").split() if word.startswith("LOCAL")]


def check_valid(messages: list[dict[str, Any]]) -> None:
    """What the Messages API requires of a request's messages, and what Trooper promises to keep."""
    assert messages and messages[0]["role"] == "user"
    for before, after in itertools.pairwise(messages):
        assert before["role"] != after["role"], "two neighbouring messages of one role"
    for position, message in enumerate(messages):
        blocks = content_blocks(message)
        assert blocks, "an empty message"
        kinds = [block_type(block) for block in blocks]
        if "tool_result" in kinds:
            assert message["role"] == "user"
            lead = kinds.index("tool_result")
            assert lead == 0 and all(kind == "tool_result" for kind in kinds[: kinds.count("tool_result")])
            previous = messages[position - 1] if position else None
            assert previous is not None and previous["role"] == "assistant"
            calls = {block["id"] for block in content_blocks(previous) if block_type(block) == "tool_use"}
            for block in blocks:
                if block_type(block) == "tool_result":
                    assert block["tool_use_id"] in calls, "a tool result with no call before it"
        if message["role"] == "assistant":
            calls = [block["id"] for block in blocks if block_type(block) == "tool_use"]
            if calls and position + 1 < len(messages):
                answered = {
                    block.get("tool_use_id")
                    for block in content_blocks(messages[position + 1])
                    if block_type(block) == "tool_result"
                }
                assert set(calls) <= answered, "a tool call without its result"


# --------------------------------------------------------------------------------------- the turns

TURN = st.tuples(
    st.sampled_from(["local", "cloud"]),
    st.sampled_from(["plain", "tools", "thinking"]),
    st.integers(1, 3),  # tool calls per message
    st.booleans(),  # a reminder block leads the prompt
)


def _tool_calls(tag: str, count: int, local: bool) -> list[dict[str, Any]]:
    return [
        {
            "type": "tool_use",
            "id": f"toolu_{tag}{next(_serial)}",
            "name": "read",
            "input": {"path": f"/src/{_canary('P') if local else 'main'}.py"},
        }
        for _ in range(count)
    ]


def play(steps: list[tuple[str, str, int, bool]], locality: LocalityConfig | None = None) -> Conversationalist:
    talk = Conversationalist(locality or LocalityConfig())
    for origin, kind, calls, reminder in steps:
        local = origin == "local"
        tag = _canary("U") if local else f"cloud prompt {next(_serial)}"
        prompt: list[dict[str, Any]] = [{"type": "text", "text": f"::local {tag}" if local else tag}]
        if reminder:
            prompt.insert(0, {"type": "text", "text": "<system-reminder>today is Tuesday</system-reminder>"})
        talk.add({"role": "user", "content": prompt}, origin)
        planned = talk.send(list(talk.history), forced=False)
        assert planned.route == origin
        if kind == "tools":
            uses = _tool_calls(origin[0], calls, local)
            if local:
                talk.reply_locally(planned, uses)
            talk.add({"role": "assistant", "content": uses}, origin)
            results = [
                {"type": "tool_result", "tool_use_id": use["id"], "content": _canary("R") if local else "ok"}
                for use in uses
            ]
            talk.add({"role": "user", "content": results}, origin)
            planned = talk.send(list(talk.history), forced=False)
            assert planned.route == origin and planned.reason == "continuation"
        answer = [{"type": "text", "text": _canary("A") if local else f"cloud answer {next(_serial)}"}]
        if kind == "thinking" and not local:
            answer.insert(0, {"type": "thinking", "thinking": "hmm", "signature": "sig"})
        if local:
            talk.reply_locally(planned, answer)
        talk.add({"role": "assistant", "content": answer}, origin)
    return talk


@settings(max_examples=150, deadline=None)
@given(st.lists(TURN, min_size=1, max_size=7), st.booleans())
def test_every_plan_is_valid_private_and_keeps_cloud_content(
    steps: list[tuple[str, str, int, bool]], notice: bool
) -> None:
    talk = play(steps, LocalityConfig(withheld_notice=notice))
    talk.add({"role": "user", "content": "and now?"}, "cloud")
    final = talk.send(list(talk.history), forced=False)
    assert isinstance(final.action, CloudCall)


def test_a_local_tool_loop_in_the_middle_leaves_no_orphans() -> None:
    talk = play([("cloud", "tools", 2, False), ("local", "tools", 3, True), ("cloud", "plain", 1, False)])
    talk.add({"role": "user", "content": "go on"}, "cloud")
    action = talk.send(list(talk.history), forced=False).action
    assert isinstance(action, CloudCall)
    sent = orjson.loads(action.payload)["messages"]
    assert [message["role"] for message in sent] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    # The local prompt's reminder stays (client context), merged with the next cloud prompt after the notice.
    merged = [block["text"] for block in content_blocks(sent[4])]
    assert merged[0].startswith("[Trooper: 1 earlier turn") and "today is Tuesday" in merged[1]
    assert merged[2].startswith("cloud prompt")


def test_a_conversation_opened_locally_gets_a_user_opening() -> None:
    talk = play([("local", "plain", 1, False), ("cloud", "plain", 1, False)])
    talk.add({"role": "user", "content": "next"}, "cloud")
    action = talk.send(list(talk.history), forced=False).action
    assert isinstance(action, CloudCall)
    sent = orjson.loads(action.payload)["messages"]
    assert sent[0]["role"] == "user"
    assert sent[1]["content"] == content_blocks(talk.history[3])  # the cloud's answer, unchanged


def test_a_fallback_in_a_cloud_tool_loop_gets_placeholders_for_the_local_results() -> None:
    """The cloud called tools; their results went to the local model (local by provenance). The cloud
    later sees its own calls answered by placeholders, not left dangling."""
    talk = play([("cloud", "plain", 1, False)])
    uses = _tool_calls("c", 2, local=False)
    talk.add({"role": "user", "content": "read both files"}, "cloud")
    talk.send(list(talk.history), forced=False)
    talk.add({"role": "assistant", "content": uses}, "cloud")
    results = [{"type": "tool_result", "tool_use_id": use["id"], "content": _canary("R")} for use in uses]
    talk.add({"role": "user", "content": results}, "local")
    planned = talk.send(list(talk.history), forced=True)  # the results are handled locally
    assert planned.route == "local"
    talk.reply_locally(planned, [{"type": "text", "text": _canary("A")}])
    talk.add({"role": "assistant", "content": [{"type": "text", "text": talk.local_texts[-1]}]}, "local")
    talk.add({"role": "user", "content": "thanks"}, "cloud")
    action = talk.send(list(talk.history), forced=False).action
    assert isinstance(action, CloudCall)
    sent = orjson.loads(action.payload)["messages"]
    placeholders = [
        block for message in sent for block in content_blocks(message) if block.get("content") == WITHHELD_RESULT
    ]
    assert {block["tool_use_id"] for block in placeholders} == {use["id"] for use in uses}


@pytest.mark.parametrize("where", ["prompt", "tool_result", "system"])
def test_redact_replaces_only_what_matched(where: str) -> None:
    talk = play([("local", "plain", 1, False)], LocalityConfig(egress_action="redact"))
    secret = _secrets(talk.local_texts[-1])[0]
    pasted = f"what does {secret} mean?"
    messages = list(talk.history)
    body_system: Any = None
    if where == "prompt":
        messages.append(
            {"role": "user", "content": [{"type": "text", "text": pasted}, {"type": "text", "text": "thanks"}]}
        )
    elif where == "tool_result":
        uses = _tool_calls("c", 1, local=False)
        messages.append({"role": "user", "content": "read it"})
        messages.append({"role": "assistant", "content": uses})
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0]["id"], "content": pasted}]}
        )
    else:
        body_system = [{"type": "text", "text": "be brief"}, {"type": "text", "text": pasted}]
        messages.append({"role": "user", "content": "hello"})
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": messages}
    if body_system is not None:
        body["system"] = body_system
    request = read_request(
        "POST", "/v1/messages", "", [("x-trooper-session", SESSION)], orjson.dumps(body), marker="::local"
    )
    facts = Facts(request, talk.conversation, Health.UP, 1000.0, "req_1", talk.index, talk.locality, "qwen3", _context)
    action = begin(facts).action
    assert isinstance(action, CloudCall)
    assert secret.encode() not in action.payload
    sent = orjson.loads(action.payload)
    check_valid(sent["messages"])
    assert action.audit == (("egress_guard", {"action": "redact", "hits": list(action.plan.guard_hits)}),)
    if where == "prompt":
        assert content_blocks(sent["messages"][-1])[-1] == {"type": "text", "text": "thanks"}
    if where == "system":
        assert sent["system"][0] == {"type": "text", "text": "be brief"}
        assert sent["system"][1] == {"type": "text", "text": REDACTED}


def test_block_refuses_and_warn_sends_with_an_audit_row() -> None:
    for action_kind in ("block", "warn"):
        talk = play([("local", "plain", 1, False)], LocalityConfig(egress_action=action_kind))  # type: ignore[arg-type]
        secret = _secrets(talk.local_texts[-1])[0]
        messages = [*talk.history, {"role": "user", "content": f"and {secret}?"}]
        action = talk.send(messages, forced=False).action if action_kind == "block" else None
        if action_kind == "block":
            assert isinstance(action, Refuse) and action.error.status == 403
        else:
            planned = begin(talk.facts(messages, forced=False))
            assert isinstance(planned.action, CloudCall)
            assert planned.action.audit[0][0] == "egress_guard"
            assert secret.encode() in planned.action.payload  # warn sends it as it is, and says where
