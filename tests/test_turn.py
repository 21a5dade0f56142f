"""The sans-IO turn core, tested as pure functions: no sockets, no event loop, no store.

* **Agreement with the design**: every combination of state, health, control and continuation gives
  the route, the reason and the transition an independent oracle (the design's table written out by
  hand) expects — and the route is always the route of the state the conversation ends in.
* **Properties** over random sequences of turns, fallbacks and continuations: counters, records and
  states stay consistent, a forced turn always runs locally, a fallback always records only its new
  part, the cloud bytes are the client's own when nothing is local.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.config import LocalityConfig
from trooper.conversation import LOCAL_STATES, Conversation, Health, route_of
from trooper.ledger import LedgerIndex, LedgerRecord
from trooper.lineage import tool_key
from trooper.turn import (
    CloudCall,
    Facts,
    LocalCall,
    LocalContext,
    Refuse,
    begin,
    cloud_call,
    count_estimated,
    events_for,
    fall_back,
    read_request,
    turn_record,
)

STATES = ("cloud", "local", "quota_exhausted", "offline")
MODEL = "claude-sonnet-4-6"

#: The design's routing, written out by hand (not derived from the transitions table):
#: (state, health, forced) -> (event, state after, route, reason)
ORACLE: dict[tuple[str, Health, bool], tuple[str | None, str, str, str]] = {}
for _state in STATES:
    for _health in Health:
        _after = {Health.UP: "cloud", Health.QUOTA: "quota_exhausted", Health.DOWN: "offline"}[_health]
        _reason = {Health.UP: "default", Health.QUOTA: "quota", Health.DOWN: "offline"}[_health]
        ORACLE[(_state, _health, True)] = (
            "local_turn" if _state == "local" else "force_local",
            "local",
            "local",
            "forced:body",
        )
        if _state == "local":
            ORACLE[(_state, _health, False)] = ("release", _after, route_of(_after), _reason)
        elif _state == "cloud":
            event = {Health.UP: None, Health.QUOTA: "quota_hit", Health.DOWN: "connection_lost"}[_health]
            ORACLE[(_state, _health, False)] = (event, _after, route_of(_after), _reason)
        elif _health is Health.UP:
            ORACLE[(_state, _health, False)] = ("cloud_recovered", "cloud", "cloud", "recovered")
        else:
            ORACLE[(_state, _health, False)] = ("local_turn", _state, "local", _reason)


def _context(body: Any, session: str) -> LocalContext:
    return LocalContext(list(body["messages"]), {"tail": 1}, 8192, 256)


def _facts(
    body: dict[str, Any],
    *,
    state: str = "cloud",
    health: Health = Health.UP,
    index: LedgerIndex | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    conversation: Conversation | None = None,
) -> Facts:
    raw = orjson.dumps(body)
    request = read_request("POST", "/v1/messages", "", [("x-trooper-session", "s1"), *headers], raw, marker="::local")
    return Facts(
        request,
        conversation or Conversation(id="s1", state=state),
        health,
        1000.0,
        "req_1",
        index or LedgerIndex(),
        LocalityConfig(),
        "qwen3",
        _context,
    )


def _body(*messages: dict[str, Any], forced: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 16, "messages": list(messages)}
    if forced:
        body["x_force_local"] = True
    return body


@pytest.mark.parametrize(("state", "health", "forced"), sorted(ORACLE, key=str))
def test_a_new_turn_follows_the_design(state: str, health: Health, forced: bool) -> None:
    event, after, route, reason = ORACLE[(state, health, forced)]
    planned = begin(_facts(_body({"role": "user", "content": "hi"}, forced=forced), state=state, health=health))
    assert [record.event for record in planned.records] == ([event] if event else [])
    assert planned.conversation.state == after
    assert planned.route == route == route_of(after)
    assert planned.reason == reason
    assert isinstance(planned.action, LocalCall if route == "local" else CloudCall)
    assert planned.new_turn and planned.conversation.turns == 1
    assert all(record.dest == after and record.reason == reason for record in planned.records)


def test_events_come_from_the_table() -> None:
    for state in STATES:
        for health in Health:
            for forced in (False, True):
                expected = ORACLE[(state, health, forced)][0]
                assert events_for(state, forced=forced, health=health) == ((expected,) if expected else ())


def _loop(tool_id: str) -> tuple[dict[str, Any], ...]:
    return (
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "t", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "done"}]},
    )


@pytest.mark.parametrize("state", STATES)
def test_a_continuation_keeps_its_route_and_fires_nothing(state: str) -> None:
    cloud = begin(_facts(_body(*_loop("toolu_cloud")), state=state))
    assert (cloud.route, cloud.reason, cloud.records, cloud.new_turn) == ("cloud", "continuation", [], False)
    index = LedgerIndex()
    index.add([LedgerRecord.of("tool", [tool_key("toolu_local")], origin="forced")])
    local = begin(_facts(_body(*_loop("toolu_local")), state=state, index=index))
    assert (local.route, local.reason, local.records) == ("local", "continuation", [])
    assert isinstance(local.action, LocalCall) and local.action.origin == "forced"


def test_a_control_on_a_cloud_continuation_moves_the_rest_of_the_turn_local() -> None:
    for body, headers in (
        (_body(*_loop("toolu_1"), forced=True), ()),
        (_body(*_loop("toolu_1")), (("x-force-local", "true"),)),
    ):
        planned = begin(_facts(body, headers=headers))
        assert planned.route == "local" and planned.records[0].event == "force_local"
        assert not planned.new_turn and planned.conversation.turns == 0
        assert isinstance(planned.action, LocalCall)
        recorded = {record.kind for record in planned.action.records}
        assert "prompt" in recorded or "prompt.session" in recorded  # the tool result is local now


def test_a_fallback_is_local_and_records_only_the_new_part() -> None:
    planned = begin(_facts(_body(*_loop("toolu_cloud"))))
    fresh = _facts(_body(*_loop("toolu_cloud")))
    fallback = fall_back(planned, fresh, "quota_hit")
    assert (fallback.route, fallback.reason) == ("local", "quota")
    assert fallback.conversation.state == "quota_exhausted"
    assert [record.event for record in fallback.records] == ["quota_hit"]
    assert isinstance(fallback.action, LocalCall) and fallback.action.origin == "fallback"
    # The cloud's own prompt and tool call are not the fallback's: only the new tool result is recorded.
    lineage = fallback.lineage
    assert lineage is not None and lineage.new_start == 2


def test_the_cloud_gets_the_clients_bytes_when_nothing_is_local() -> None:
    body = _body({"role": "user", "content": "hi"})
    request = _facts(body).request
    call = cloud_call(request, lambda: pytest.fail("no walk without local content"), LedgerIndex(), LocalityConfig())
    assert isinstance(call, CloudCall) and call.payload == request.raw
    forced_false = _facts({**body, "x_force_local": False}).request
    stripped = cloud_call(forced_false, lambda: pytest.fail("no walk"), LedgerIndex(), LocalityConfig())
    assert isinstance(stripped, CloudCall) and b"x_force_local" not in stripped.payload


def test_a_guard_refusal_is_a_403_with_its_audit_row() -> None:
    index = LedgerIndex()
    first = begin(_facts(_body({"role": "user", "content": "::local PIN 4821-7733-9911 please"}), index=index))
    assert isinstance(first.action, LocalCall)
    index.add(first.action.records)
    pasted = begin(_facts(_body({"role": "user", "content": "is PIN 4821-7733-9911 right?"}), index=index))
    assert isinstance(pasted.action, Refuse) and pasted.action.error.status == 403
    assert pasted.action.audit[0][0] == "egress_guard" and pasted.action.audit[0][1]["action"] == "block"


def test_counting_a_local_conversation_stays_here() -> None:
    assert count_estimated(_facts(_body({"role": "user", "content": "::local x"})))
    assert count_estimated(_facts(_body({"role": "user", "content": "x"}), state="local"))
    assert not count_estimated(_facts(_body({"role": "user", "content": "x"})))


def test_the_turn_record_holds_counts_never_content() -> None:
    planned = begin(_facts(_body({"role": "user", "content": "::local secret words"})))
    record = turn_record(planned, status=200, provider="ollama", model="qwen3", first_byte=0.01, duration=0.02)
    assert record["route"] == "local" and record["memory"] == {"tail": 1}
    assert "secret" not in orjson.dumps(record).decode()


# ------------------------------------------------------------------------------------- properties

TURNS = st.lists(
    st.tuples(
        st.sampled_from(["new", "forced", "continue", "fallback"]),
        st.sampled_from(list(Health)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(TURNS)
def test_sequences_of_turns_keep_the_conversation_consistent(steps: list[tuple[str, Health]]) -> None:
    conversation = Conversation(id="s1")
    index = LedgerIndex()
    history: list[dict[str, Any]] = []
    for number, (kind, health) in enumerate(steps):
        turns_before, transitions_before = conversation.turns, conversation.transitions
        if kind == "continue" and history and history[-1]["role"] == "assistant":
            tool = f"toolu_{number}"
            history[-1] = {"role": "assistant", "content": [{"type": "tool_use", "id": tool, "name": "t", "input": {}}]}
            history.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool, "content": "r"}]})
        else:
            history.append({"role": "user", "content": f"prompt {number}"})
        facts = _facts(_body(*history, forced=kind == "forced"), health=health, index=index, conversation=conversation)
        planned = begin(facts)
        fired = len(planned.records)
        if kind == "fallback" and planned.route == "cloud":
            # The driver commits the turn's transitions before calling; the fallback's come on top.
            planned = fall_back(planned, facts, "quota_hit" if health is Health.QUOTA else "connection_lost")
            fired += len(planned.records)
        conversation = planned.conversation
        assert conversation.transitions == transitions_before + fired
        assert conversation.turns == turns_before + (1 if planned.new_turn else 0)
        for record in planned.records:
            assert record.request_id == "req_1" and record.dest in STATES
        if kind == "forced":
            assert planned.route == "local"
        if planned.reason != "continuation":
            assert planned.route == route_of(conversation.state) or conversation.state in LOCAL_STATES
        if isinstance(planned.action, LocalCall):
            assert planned.route == "local"
            index.add(planned.action.records)
            reply = [{"type": "text", "text": f"local reply {number}"}]
        else:
            reply = [{"type": "text", "text": f"cloud reply {number}"}]
        history.append({"role": "assistant", "content": reply})
