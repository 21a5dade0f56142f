"""The conversation state machine against an independent model of the documented table."""

from __future__ import annotations

import json
import logging
import tracemalloc
from collections import Counter

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trooper.conversation import (
    EVENTS,
    LOCAL_STATES,
    MACHINE,
    PATH_LIMIT,
    STATES,
    TRANSITIONS,
    Conversation,
    Health,
    State,
    TransitionRecord,
    can_fire,
    conversation_from_dict,
    conversation_to_dict,
    fire,
    route_of,
)

# --- the independent model: the table written out by hand, not derived from TRANSITIONS ----------

RELEASE_TO = {Health.UP: "cloud", Health.QUOTA: "quota_exhausted", Health.DOWN: "offline"}
EXPECTED: dict[tuple[str, str], str] = {
    ("cloud", "force_local"): "local",
    ("quota_exhausted", "force_local"): "local",
    ("offline", "force_local"): "local",
    ("cloud", "quota_hit"): "quota_exhausted",
    ("cloud", "connection_lost"): "offline",
    ("quota_exhausted", "cloud_recovered"): "cloud",
    ("offline", "cloud_recovered"): "cloud",
    ("local", "local_turn"): "local",
    ("quota_exhausted", "local_turn"): "quota_exhausted",
    ("offline", "local_turn"): "offline",
}
ALL_STATES = ("cloud", "local", "quota_exhausted", "offline")
ALL_EVENTS = ("force_local", "release", "quota_hit", "connection_lost", "cloud_recovered", "local_turn")
RUNS_LOCALLY = {"local", "quota_exhausted", "offline"}


def expected_dest(state: str, event: str, health: Health) -> str | None:
    """Where ``event`` takes a conversation in ``state``, or None when the event is not valid there."""
    if event == "release":
        return RELEASE_TO[health] if state == "local" else None
    return EXPECTED.get((state, event))


class Turn:
    """A stand-in for the engine's turn: counts compactions."""

    def __init__(self) -> None:
        self.compactions = 0

    def compact(self) -> None:
        self.compactions += 1


class BrokenTurn:
    def compact(self) -> None:
        raise RuntimeError("compaction failed")


def in_state(state: str) -> Conversation:
    return Conversation(id=f"conv-{state}", state=state)


# --- the table ------------------------------------------------------------------------------------


def test_states_events_and_local_states_match_the_design() -> None:
    assert STATES == ALL_STATES
    assert tuple(State) == ALL_STATES
    assert set(EVENTS) == set(ALL_EVENTS)
    assert LOCAL_STATES == RUNS_LOCALLY
    assert all(type(name) is str for name in LOCAL_STATES)
    assert {route_of(state) for state in RUNS_LOCALLY} == {"local"}
    assert route_of("cloud") == "cloud"


def test_machine_has_exactly_the_table_and_no_auto_transitions() -> None:
    assert list(MACHINE.events) == list(EVENTS)
    assert not any(name.startswith("to_") for name in MACHINE.events)
    for state in ALL_STATES:
        for event in ALL_EVENTS:
            valid = any(expected_dest(state, event, health) is not None for health in Health)
            assert can_fire(state, event) is valid, (state, event)
    assert not can_fire("cloud", "no_such_event")


def test_table_rows_use_plain_state_names() -> None:
    for row in TRANSITIONS:
        names = [row["source"]] if isinstance(row["source"], str) else list(row["source"])
        names += [] if row["dest"] is None else [row["dest"]]
        assert all(type(name) is str and name in ALL_STATES for name in names), row


# --- every (state, event, health) ------------------------------------------------------------------


@pytest.mark.parametrize("health", list(Health))
@pytest.mark.parametrize("event", ALL_EVENTS)
@pytest.mark.parametrize("state", ALL_STATES)
def test_every_event_from_every_state(state: str, event: str, health: Health) -> None:
    conv = in_state(state)
    turn = Turn()
    dest = expected_dest(state, event, health)

    record = fire(conv, event, reason="why", at=12.5, request_id="req_1", health=health, turn=turn)

    if dest is None:
        assert record is None
        assert conv.state == state
        assert turn.compactions == 0
        assert (conv.transitions, conv.edge_counts, conv.path, conv.last_event) == (0, {}, [], None)
        return
    assert record == TransitionRecord(event=event, source=state, dest=dest, reason="why", at=12.5, request_id="req_1")
    assert conv.state == dest
    assert turn.compactions == (1 if dest in RUNS_LOCALLY else 0)
    assert conv.transitions == 1
    assert conv.last_event == event
    assert conv.edge_counts == {f"{state}->{dest}:{event}": 1}
    assert conv.path == ([] if dest == state else [state, dest])


@pytest.mark.parametrize(("health", "dest"), list(RELEASE_TO.items()))
def test_release_destination_follows_cloud_health(health: Health, dest: str) -> None:
    conv = in_state("local")
    assert fire(conv, "release", reason="default", at=0.0, health=health) is not None
    assert conv.state == dest


def test_release_accepts_health_as_its_string_value() -> None:
    conv = in_state("local")
    fire(conv, "release", reason="quota", at=0.0, health="quota")
    assert conv.state == "quota_exhausted"


# --- compaction --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "event", "health"),
    [
        ("local", "local_turn", Health.UP),
        ("quota_exhausted", "local_turn", Health.QUOTA),
        ("offline", "local_turn", Health.DOWN),
        ("cloud", "force_local", Health.UP),
        ("offline", "force_local", Health.DOWN),
        ("cloud", "quota_hit", Health.UP),
        ("cloud", "connection_lost", Health.UP),
        ("local", "release", Health.QUOTA),
        ("local", "release", Health.DOWN),
    ],
)
def test_entering_or_staying_local_compacts_memory(state: str, event: str, health: Health) -> None:
    turn = Turn()
    assert fire(in_state(state), event, reason="r", at=0.0, health=health, turn=turn) is not None
    assert turn.compactions == 1


@pytest.mark.parametrize(
    ("state", "event"),
    [("local", "release"), ("quota_exhausted", "cloud_recovered"), ("offline", "cloud_recovered")],
)
def test_going_back_to_the_cloud_does_not_compact(state: str, event: str) -> None:
    turn = Turn()
    assert fire(in_state(state), event, reason="r", at=0.0, health=Health.UP, turn=turn) is not None
    assert turn.compactions == 0


def test_no_turn_no_compaction_needed() -> None:
    conv = in_state("local")
    assert fire(conv, "local_turn", reason="forced:body", at=0.0) is not None
    assert conv.transitions == 1


def test_failed_compaction_propagates_but_the_transition_is_still_counted() -> None:
    conv = in_state("cloud")
    with pytest.raises(RuntimeError, match="compaction failed"):
        fire(conv, "quota_hit", reason="quota", at=0.0, turn=BrokenTurn())
    # transitions has no rollback: the state moved, and the audit counters say so.
    assert conv.state == "quota_exhausted"
    assert conv.transitions == 1
    assert conv.edge_counts == {"cloud->quota_exhausted:quota_hit": 1}

    with pytest.raises(RuntimeError):
        fire(conv, "local_turn", reason="quota", at=1.0, turn=BrokenTurn())
    assert conv.transitions == 2
    assert sum(conv.edge_counts.values()) == conv.transitions


# --- records, counts, errors ------------------------------------------------------------------------


def test_counts_accumulate_along_a_conversation() -> None:
    conv = Conversation(id="c")
    steps = [
        ("force_local", Health.UP),
        ("local_turn", Health.UP),
        ("release", Health.QUOTA),
        ("local_turn", Health.QUOTA),
        ("cloud_recovered", Health.UP),
        ("quota_hit", Health.UP),
        ("cloud_recovered", Health.UP),
        ("cloud_recovered", Health.UP),  # invalid from cloud: ignored
    ]
    records = [fire(conv, event, reason="r", at=float(i), health=h) for i, (event, h) in enumerate(steps)]
    assert [r.event if r else None for r in records] == [e for e, _ in steps[:-1]] + [None]
    assert conv.state == "cloud"
    assert conv.transitions == 7
    assert conv.last_event == "cloud_recovered"
    assert conv.edge_counts == {
        "cloud->local:force_local": 1,
        "local->local:local_turn": 1,
        "local->quota_exhausted:release": 1,
        "quota_exhausted->quota_exhausted:local_turn": 1,
        "quota_exhausted->cloud:cloud_recovered": 2,
        "cloud->quota_exhausted:quota_hit": 1,
    }
    assert conv.path == ["cloud", "local", "quota_exhausted", "cloud", "quota_exhausted", "cloud"]


def test_path_is_bounded() -> None:
    conv = Conversation(id="long")
    for i in range(PATH_LIMIT * 3):
        fire(conv, "force_local" if i % 2 == 0 else "release", reason="r", at=float(i))
    assert len(conv.path) == PATH_LIMIT
    assert conv.path[-1] == conv.state == "cloud"
    assert conv.transitions == PATH_LIMIT * 3 == sum(conv.edge_counts.values())


def test_invalid_event_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    conv = in_state("cloud")
    with caplog.at_level(logging.DEBUG, logger="transitions"):
        assert fire(conv, "release", reason="r", at=0.0) is None
    assert caplog.records == []


def test_unknown_event_and_bad_health_are_programming_errors() -> None:
    conv = in_state("local")
    with pytest.raises(ValueError, match="unknown conversation event 'nope'"):
        fire(conv, "nope", reason="r", at=0.0)
    with pytest.raises(ValueError, match="'sideways'"):
        fire(conv, "release", reason="r", at=0.0, health="sideways")
    assert conv.state == "local"
    assert conv.transitions == 0


def test_transitions_logging_is_quiet() -> None:
    assert logging.getLogger("transitions").getEffectiveLevel() >= logging.WARNING


# --- persistence -------------------------------------------------------------------------------------


def test_cattrs_round_trip() -> None:
    conv = Conversation(id="persist", turn_route="local", turn_reason="forced:marker", turns=3)
    fire(conv, "force_local", reason="forced:marker", at=1.0)
    fire(conv, "local_turn", reason="forced:marker", at=2.0)
    data = conversation_to_dict(conv)
    assert json.loads(json.dumps(data)) == data  # plain JSON-able data, no machine inside
    restored = conversation_from_dict(json.loads(json.dumps(data)))
    assert attrs.asdict(restored) == attrs.asdict(conv)
    # The dict is a snapshot: later transitions don't leak into it.
    fire(conv, "release", reason="default", at=3.0)
    assert data["state"] == "local"
    assert data["edge_counts"] == {"cloud->local:force_local": 1, "local->local:local_turn": 1}
    # A restored conversation keeps working with the shared machine.
    assert fire(restored, "release", reason="default", at=3.0, health=Health.DOWN) is not None
    assert restored.state == "offline"
    assert restored.transitions == 3


def test_restoring_an_unknown_state_is_a_clear_value_error() -> None:
    data = conversation_to_dict(Conversation(id="old"))
    data["state"] = "degraded"
    with pytest.raises(ValueError, match="'old' has unknown state 'degraded'"):
        conversation_from_dict(data)


def test_malformed_data_is_a_value_error_too() -> None:
    with pytest.raises(ValueError, match=r"'bad' cannot be restored: .*turns"):
        conversation_from_dict({"id": "bad", "turns": "many"})
    with pytest.raises(ValueError, match="cannot be restored"):
        conversation_from_dict({"state": "cloud"})


def test_unknown_state_rejected_on_construction_and_assignment() -> None:
    with pytest.raises(ValueError, match="unknown conversation state 'nowhere'"):
        Conversation(id="x", state="nowhere")
    conv = Conversation(id="x")
    with pytest.raises(ValueError, match="unknown conversation state"):
        conv.state = "nowhere"


def test_defaults() -> None:
    conv = Conversation(id="new")
    assert conv.state == "cloud"
    assert conversation_from_dict({"id": "new"}).state == "cloud"


# --- cost: the static pattern registers nothing -----------------------------------------------------


def test_nothing_is_registered_with_the_machine() -> None:
    conv = Conversation(id="static")
    fire(conv, "force_local", reason="r", at=0.0)
    assert MACHINE.models == []
    assert not hasattr(conv, "trigger")
    assert not hasattr(conv, "may_release")


def test_memory_per_conversation_is_small() -> None:
    """Size check (not timed): 2,000 conversations that each took a few transitions stay < 2 KB each."""
    count = 2_000
    steps = [("force_local", Health.UP), ("release", Health.QUOTA), ("cloud_recovered", Health.UP)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        conversations = [Conversation(id=f"{i:08d}") for i in range(count)]
        for conv in conversations:
            for event, health in steps:
                fire(conv, event, reason="r", at=0.0, health=health)
        per_conversation = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert all(c.transitions == 3 for c in conversations)
    assert per_conversation < 2048, f"{per_conversation:.0f} bytes per conversation"
    assert MACHINE.models == []


# --- property: random event sequences against the model --------------------------------------------


class ConversationMachine(RuleBasedStateMachine):
    """Random events with random health, checked against :func:`expected_dest` after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conversation(id="prop")
        self.state = "cloud"
        self.counts: Counter[str] = Counter()
        self.clock = 0.0

    @rule(event=st.sampled_from(ALL_EVENTS), health=st.sampled_from(list(Health)))
    def fire_event(self, event: str, health: Health) -> None:
        self.clock += 1.0
        turn = Turn()
        before = attrs.asdict(self.conv)
        dest = expected_dest(self.state, event, health)

        record = fire(self.conv, event, reason="prop", at=self.clock, health=health, turn=turn)

        if dest is None:
            assert record is None
            assert attrs.asdict(self.conv) == before  # an invalid event changes nothing at all
            assert turn.compactions == 0
            return
        assert record is not None
        assert (record.event, record.source, record.dest, record.at) == (event, self.state, dest, self.clock)
        assert turn.compactions == (1 if dest in RUNS_LOCALLY else 0)
        self.counts[f"{self.state}->{dest}:{event}"] += 1
        self.state = dest

    @rule()
    def restart(self) -> None:
        """Persist and restore, as a Trooper restart would."""
        self.conv = conversation_from_dict(json.loads(json.dumps(conversation_to_dict(self.conv))))

    @precondition(lambda self: self.state != "local")
    @rule()
    def force_local_from_anywhere_but_local(self) -> None:
        assert fire(self.conv, "force_local", reason="forced:header", at=self.clock, turn=Turn())
        self.counts[f"{self.state}->local:force_local"] += 1
        self.state = "local"

    @invariant()
    def state_is_known_and_matches_model(self) -> None:
        assert self.conv.state in ALL_STATES
        assert self.conv.state == self.state

    @invariant()
    def counts_are_consistent(self) -> None:
        assert sum(self.conv.edge_counts.values()) == self.conv.transitions
        assert self.conv.edge_counts == dict(self.counts)
        assert len(self.conv.path) <= PATH_LIMIT
        if self.conv.path:
            assert self.conv.path[-1] == self.conv.state

    @invariant()
    def nothing_registered(self) -> None:
        assert MACHINE.models == []


ConversationMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestConversationMachine = ConversationMachine.TestCase
