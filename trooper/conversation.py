"""The conversation state machine: states, the transitions table, the shared machine, the model.

Pure and synchronous: no I/O, no clock, no asyncio. The engine passes the time
(``at``) and the cloud's health in; this module only decides whether an event is valid, moves the
conversation, runs the (pure) memory-compaction callback and returns what happened, so the engine
can write it to the audit trail (invariant I4).

One :class:`transitions.Machine` serves every conversation of the process, and no conversation is
registered with it (the maintainers' "static machine" FAQ pattern): registration costs kilobytes and
an O(n) ``add_model`` per conversation, and breaks on attrs slots/eq classes. A conversation is a
plain attrs object with a ``state`` field; :func:`fire` triggers ``MACHINE.events[name]`` on it.
"""

from __future__ import annotations

import enum
import logging
import sys
import types
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

import attrs
import cattrs
from transitions import EventData, Machine

# transitions logs every callback at INFO; one line per turn per conversation drowns real logs.
logging.getLogger("transitions").setLevel(logging.WARNING)


class State(enum.StrEnum):
    """Where a conversation's turns run. The values are the machine's state names."""

    CLOUD = "cloud"
    LOCAL = "local"
    QUOTA_EXHAUSTED = "quota_exhausted"
    OFFLINE = "offline"


class Health(enum.StrEnum):
    """The cloud's health as known when a turn starts; it picks where ``release`` lands."""

    UP = "up"
    QUOTA = "quota"
    DOWN = "down"


#: States whose turns run on the local model: by choice (``local``) or because the cloud can't serve.
LOCAL_STATES: Final[frozenset[str]] = frozenset({State.LOCAL.value, State.QUOTA_EXHAUSTED.value, State.OFFLINE.value})

#: How many entered states :attr:`Conversation.path` keeps. Bounded, so a long conversation stays
#: small; the per-edge counts stay exact however long the conversation runs.
PATH_LIMIT: Final = 64


class Compactable(Protocol):
    """The turn object the engine passes to :func:`fire`: it builds the local memory of the turn.

    ``compact`` must be synchronous and pure (the default SITREP is extractive); work needing I/O,
    such as an LLM-written SITREP, is scheduled by the engine, never awaited inside the machine.
    """

    def compact(self) -> object: ...


# --- callbacks named in the table -----------------------------------------------------------------
# They receive transitions' EventData (send_event=True). Their __name__ is what the diagrams show.


def _health(event_data: EventData) -> Health:
    return Health(event_data.kwargs.get("health", Health.UP))


def health_up(event_data: EventData) -> bool:
    """``release`` goes back to the cloud when the cloud is known to be up."""
    return _health(event_data) is Health.UP


def health_quota(event_data: EventData) -> bool:
    """``release`` lands in ``quota_exhausted`` while the cloud's quota is known to be gone."""
    return _health(event_data) is Health.QUOTA


def health_down(event_data: EventData) -> bool:
    """``release`` lands in ``offline`` while the cloud is known to be unreachable."""
    return _health(event_data) is Health.DOWN


def compact_memory(event_data: EventData) -> None:
    """Build the Anchor/SITREP/Tail memory for a turn about to run locally.

    Runs after every transition into a state that runs turns locally and on ``local_turn`` (a new
    turn in such a state), so the local model always starts a turn with memory sized for it. The
    turn is duck-typed (:class:`Compactable`); without one (tests, replays) there is nothing to do.
    """
    turn: Compactable | None = event_data.kwargs.get("turn")
    if turn is not None:
        turn.compact()


# --- the table -------------------------------------------------------------------------------------
#
# Rule 1: everything that decides where a conversation's turns run lives in this table. The runtime
# machine, the committed diagrams in diagrams/ and the per-conversation audit graph are all built
# from it (trooper.graph), and a test fails when diagrams/ no longer matches it.
#
# Rule 2: locality is decided when a turn begins. ``force_local`` and ``release`` are fired by the
# engine at the start of a turn (marked / unmarked); ``quota_hit`` and ``connection_lost`` when the
# cloud fails a turn (which then runs locally); ``cloud_recovered`` when a retry-after passed or a
# probe succeeded. A tool round-trip continues the current turn and fires nothing.
#
# Rule 3: memory compaction is a transition callback (``after: compact_memory``) on every edge INTO
# a local state, plus the internal ``local_turn`` event, which the engine fires when a new turn
# starts in a local state without a state change. Edges into ``cloud`` never compact.
#
# Rule 4: ``release`` has one row per destination, chosen by conditions on the ``health`` the
# engine passes in. The three conditions are exhaustive and disjoint, so ``release`` from ``local``
# always moves. No other event has conditions: validity depends on the source state alone.
#
# State names are plain strings here (not State members): transitions treats Enum members by
# their *name* ("CLOUD"), which would not match the persisted value ("cloud").
#
# The table is data, not a MarkupMachine export: MarkupMachine copies before_state_change into
# after_state_change in its markup (transitions 0.9.3), so a round-trip through .markup would
# corrupt the machine-level callbacks.

TRANSITIONS: Final[list[dict[str, Any]]] = [
    {
        "trigger": "force_local",
        "source": ["cloud", "quota_exhausted", "offline"],
        "dest": "local",
        "after": [compact_memory],
    },
    {"trigger": "release", "source": "local", "dest": "cloud", "conditions": [health_up]},
    {
        "trigger": "release",
        "source": "local",
        "dest": "quota_exhausted",
        "conditions": [health_quota],
        "after": [compact_memory],
    },
    {
        "trigger": "release",
        "source": "local",
        "dest": "offline",
        "conditions": [health_down],
        "after": [compact_memory],
    },
    {"trigger": "quota_hit", "source": "cloud", "dest": "quota_exhausted", "after": [compact_memory]},
    {"trigger": "connection_lost", "source": "cloud", "dest": "offline", "after": [compact_memory]},
    {"trigger": "cloud_recovered", "source": ["quota_exhausted", "offline"], "dest": "cloud"},
    {
        "trigger": "local_turn",
        "source": ["local", "quota_exhausted", "offline"],
        "dest": None,  # internal: no exit/enter, no state change; only the callbacks run
        "after": [compact_memory],
    },
]

STATES: Final[tuple[str, ...]] = tuple(state.value for state in State)
INITIAL: Final[str] = State.CLOUD.value
#: Event names in table order (each once).
EVENTS: Final[tuple[str, ...]] = tuple(dict.fromkeys(row["trigger"] for row in TRANSITIONS))


def sources(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The source states of one table row (a row may list several)."""
    source = row["source"]
    return (source,) if isinstance(source, str) else tuple(source)


def destination(row: Mapping[str, Any], source: str) -> str:
    """Where a row leads from ``source``; an internal row (``dest: None``) stays in place."""
    dest = row["dest"]
    return source if dest is None else str(dest)


def edge_key(source: str, dest: str, event: str) -> str:
    """The key of one edge in :attr:`Conversation.edge_counts`: ``"src->dst:event"``."""
    return _EDGE_KEYS.get((source, dest, event)) or f"{source}->{dest}:{event}"


def _check_table() -> dict[tuple[str, str, str], str]:
    """Fail at import on a typo in the table, and intern every edge key once for all conversations."""
    keys: dict[tuple[str, str, str], str] = {}
    for row in TRANSITIONS:
        for name in (*sources(row), *([] if row["dest"] is None else [row["dest"]])):
            if name not in STATES:
                raise ValueError(f"transitions table: unknown state {name!r} in {row['trigger']!r}")
        for source in sources(row):
            dest = destination(row, source)
            keys[(source, dest, row["trigger"])] = sys.intern(f"{source}->{dest}:{row['trigger']}")
    return keys


_EDGE_KEYS: Final = _check_table()


# --- the model -------------------------------------------------------------------------------------


def _known_state(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in STATES:
        raise ValueError(f"unknown conversation state {value!r}; known states: {', '.join(STATES)}")


@attrs.define(eq=False)
class Conversation:
    """One conversation's routing state, persisted as data (cattrs), never pickled with a machine.

    ``eq=False`` keeps identity semantics: two conversations with equal fields are still two
    conversations (and transitions compares models with ``==`` if anyone ever registers one).
    The engine owns ``turn_route``/``turn_reason``/``turns``; :func:`fire` owns the counters.
    """

    id: str
    state: str = attrs.field(default=INITIAL, validator=_known_state)
    #: Route of the turn in progress ("cloud" | "local"): tool round-trips keep it.
    turn_route: str | None = None
    #: Why the turn in progress has its route: "forced:body", "forced:header", "forced:marker",
    #: "quota", "offline", "default", …
    turn_reason: str | None = None
    turns: int = 0
    #: Successful transitions, internal ``local_turn`` included (== sum of ``edge_counts``).
    transitions: int = 0
    last_event: str | None = None
    #: ``"src->dst:event"`` → how often this conversation took that edge (the audit graph's labels).
    edge_counts: dict[str, int] = attrs.Factory(dict)
    #: The states entered, oldest first, starting with the state the first transition left;
    #: at most :data:`PATH_LIMIT` entries. Internal transitions enter nothing.
    path: list[str] = attrs.Factory(list)


@attrs.frozen
class TransitionRecord:
    """One transition as the engine writes it to the audit trail (event, source, dest, reason, time)."""

    event: str
    source: str
    dest: str
    reason: str
    at: float
    request_id: str | None


def _count_transition(event_data: EventData) -> None:
    """Machine-level ``after_state_change``: count every successful transition on the conversation."""
    transition = event_data.transition
    conv = event_data.model
    if transition is None or not isinstance(conv, Conversation):
        return
    source = transition.source
    dest = source if transition.dest is None else transition.dest
    event = event_data.event.name
    key = edge_key(source, dest, event)
    conv.edge_counts[key] = conv.edge_counts.get(key, 0) + 1
    conv.transitions += 1
    conv.last_event = event
    if transition.dest is not None:
        if not conv.path:
            conv.path.append(source)
        conv.path.append(dest)
        if len(conv.path) > PATH_LIMIT:
            del conv.path[:-PATH_LIMIT]


def _count_interrupted(event_data: EventData) -> None:
    """Machine-level ``finalize_event``: keep the counts true when an ``after`` callback raised.

    transitions has no rollback: when ``turn.compact()`` raises, the state has already changed but
    ``after_state_change`` never ran. Count the transition if it happened (the conversation is in
    its destination, or it is internal: ``local_turn`` has no conditions, so only its ``after``
    can have raised), then let the error propagate.
    """
    transition = event_data.transition
    if event_data.error is None or transition is None:
        return
    if transition.dest is None or getattr(event_data.model, "state", None) == transition.dest:
        _count_transition(event_data)


#: The one machine of the process. Conversations are never registered (``MACHINE.models`` stays
#: empty); ``auto_transitions=False`` because ``to_<state>()`` triggers would bypass the table.
MACHINE: Final = Machine(
    model=None,
    states=list(STATES),
    initial=INITIAL,
    transitions=TRANSITIONS,
    auto_transitions=False,
    send_event=True,
    ignore_invalid_triggers=True,
    after_state_change=[_count_transition],
    finalize_event=[_count_interrupted],
    name="trooper",
)


def can_fire(state: str, event: str) -> bool:
    """Whether ``event`` is valid from ``state`` (conditions aside: they only pick ``release``'s target)."""
    found = MACHINE.events.get(event)
    return found is not None and state in found.transitions


def route_of(state: str) -> Literal["cloud", "local"]:
    """Where a turn starting in ``state`` runs: ``"local"`` for :data:`LOCAL_STATES`, else ``"cloud"``."""
    return "local" if state in LOCAL_STATES else "cloud"


def destination_of(state: str, event: str, health: Health) -> str | None:
    """Where ``event`` leads from ``state`` under ``health``, read from the table (None: not allowed).

    The rows' own conditions decide, evaluated as the machine would, so that a caller can know a
    transition's outcome — and so its reason — before firing it.
    """
    probe = types.SimpleNamespace(kwargs={"health": health})
    for row in TRANSITIONS:
        allowed = row["trigger"] == event and state in sources(row)
        if allowed and all(condition(probe) for condition in row.get("conditions", ())):
            return destination(row, state)
    return None


def fire(
    conv: Conversation,
    event: str,
    *,
    reason: str,
    at: float,
    request_id: str | None = None,
    health: Health | str = Health.UP,
    turn: Compactable | None = None,
) -> TransitionRecord | None:
    """Trigger ``event`` on ``conv``; return the audit record, or ``None`` if the event is not valid now.

    An event that is not valid from the current state is a normal outcome for the engine (e.g. a
    ``cloud_recovered`` probe result arriving after the user forced a local turn), so it returns
    ``None`` and changes nothing. An event name that is not in the table is a programming error and
    raises ``ValueError``, as does a ``health`` that is not a :class:`Health`. An exception raised by
    ``turn.compact()`` propagates; the transition has happened by then and is counted.
    """
    if event not in MACHINE.events:
        raise ValueError(f"unknown conversation event {event!r}; known events: {', '.join(EVENTS)}")
    health = Health(health)
    if conv.state not in MACHINE.events[event].transitions:
        return None
    source = conv.state
    done = MACHINE.events[event].trigger(conv, reason=reason, at=at, request_id=request_id, health=health, turn=turn)
    if not done:
        return None
    return TransitionRecord(event=event, source=source, dest=conv.state, reason=reason, at=at, request_id=request_id)


# --- persistence -----------------------------------------------------------------------------------

_converter: Final = cattrs.Converter()


def conversation_to_dict(conv: Conversation) -> dict[str, Any]:
    """The conversation as plain JSON-able data (state name included); the machine is not part of it."""
    data: dict[str, Any] = _converter.unstructure(conv)
    return data


def conversation_from_dict(data: Mapping[str, Any]) -> Conversation:
    """Restore a conversation saved by :func:`conversation_to_dict`.

    A state name the current table does not know (a renamed state, a newer Trooper's data) raises
    ``ValueError`` naming it, instead of a conversation the machine would fail on at its next turn;
    so does any other malformed field (cattrs' error group is flattened into one message).
    """
    state = data.get("state", INITIAL)
    if state not in STATES:
        raise ValueError(
            f"conversation {data.get('id')!r} has unknown state {state!r}; known states: {', '.join(STATES)}"
        )
    try:
        conv = _converter.structure(dict(data), Conversation)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc))
        raise ValueError(f"conversation {data.get('id')!r} cannot be restored: {problems}") from exc
    # Share one string object per edge key across conversations, as fresh ones do.
    conv.edge_counts = {edge_key(*split_edge_key(key)): count for key, count in conv.edge_counts.items()}
    return conv


def split_edge_key(key: str) -> tuple[str, str, str]:
    """``"src->dst:event"`` → ``(src, dst, event)``, the inverse of :func:`edge_key`."""
    edge, _, event = key.rpartition(":")
    source, _, dest = edge.partition("->")
    return source, dest, event


__all__ = [
    "EVENTS",
    "INITIAL",
    "LOCAL_STATES",
    "MACHINE",
    "PATH_LIMIT",
    "STATES",
    "TRANSITIONS",
    "Compactable",
    "Conversation",
    "Health",
    "State",
    "TransitionRecord",
    "can_fire",
    "compact_memory",
    "conversation_from_dict",
    "conversation_to_dict",
    "destination",
    "destination_of",
    "edge_key",
    "fire",
    "route_of",
    "sources",
    "split_edge_key",
]
