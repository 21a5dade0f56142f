"""The sans-IO turn: every decision one request makes, as a pure function of the facts.

The engine (``trooper/engine.py``) is a driver in the manner of ``h11.Connection``: it gathers facts —
the parsed request, the conversation as stored, the cloud's known health, the time, the ledger's
index — and hands them to :func:`begin`, which fires the conversation's transitions and returns
what to do: the exact bytes to send to the cloud, or the local request with the ledger records to
write before it, or a refusal. When the cloud fails before answering, :func:`fall_back` turns the
plan into a local one; :func:`turn_record` says what the audit trail keeps. Nothing here awaits,
reads a clock, touches the store or calls a provider.

Where a turn runs comes from the transitions table (:mod:`trooper.conversation`), never from a
second encoding: :func:`events_for` picks, among the events a situation could mean, the first one
the table allows from the conversation's state, and the route is the route of the state the
conversation is in after firing. A tool-loop continuation fires nothing and keeps its turn's route
— unless a control asks for a local turn, which moves the rest of a cloud loop local.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import attrs
import orjson

from trooper.config import LocalityConfig
from trooper.controls import TROOPER_FIELDS, Controls, read_controls, strip_controls
from trooper.conversation import (
    LOCAL_STATES,
    Conversation,
    Health,
    TransitionRecord,
    can_fire,
    destination_of,
    fire,
    route_of,
)
from trooper.identity import session_id
from trooper.ledger import (
    NO_SYSTEM,
    Blocked,
    CloudPlan,
    LedgerIndex,
    LedgerRecord,
    Origin,
    ReplyRecorder,
    plan_cloud,
    record_local_turn,
)
from trooper.lineage import Lineage, walk
from trooper.memory import BudgetTooSmall, SummaryRequest
from trooper.wire import JSON, LowerHeaders, TrooperError, answered_tool_calls, parse_body, validate_messages

Route = Literal["cloud", "local"]

#: Events a new turn may mean, by the cloud's known health, in the order they are tried: the first
#: one the table allows from the conversation's state is fired (none: the turn stays where it is).
_CANDIDATES: Final[dict[Health, tuple[str, ...]]] = {
    Health.UP: ("release", "cloud_recovered"),
    Health.QUOTA: ("release", "quota_hit", "local_turn"),
    Health.DOWN: ("release", "connection_lost", "local_turn"),
}
_FORCED: Final = ("force_local", "local_turn")


# ------------------------------------------------------------------------------------------- facts


@attrs.frozen
class Request:
    """A Messages request as Trooper reads it: bytes, the parsed body, controls and session."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    raw: bytes
    body: JSON
    messages: list[JSON]
    lookup: LowerHeaders
    controls: Controls
    session: str

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True


def read_request(
    method: str, path: str, query: str, headers: Sequence[tuple[str, str]], raw: bytes, *, marker: str
) -> Request:
    """Parse and check a request; a malformed one raises a 400 :class:`TrooperError` naming the field."""
    body = parse_body(raw)
    messages = validate_messages(body)
    lookup = LowerHeaders.of(headers)
    controls = read_controls(lookup, body, marker)
    session, _source = session_id(lookup, body)
    return Request(method, path, query, headers, raw, body, messages, lookup, controls, session)


@attrs.frozen
class LocalContext:
    """What the memory gives a local turn: its messages, what each layer cost, the context asked for."""

    messages: list[JSON]
    layers: dict[str, int]
    num_ctx: int
    max_tokens: int | None
    #: The model-written SITREP to ask the local model for after this turn, when one is due.
    summary: SummaryRequest | None = None
    #: Who wrote the SITREP this turn got: ``extractive``, ``model``, ``mixed``, or ``none`` (no middle).
    sitrep: str = "none"
    #: How the system prompt and tools were cut to leave the messages room (none: sent as they came).
    reductions: tuple[str, ...] = ()
    #: The reduced system prompt and tools, when ``reductions`` says they were cut.
    system: Any = None
    tools: Any = None

    def header(self) -> str:
        """``x-trooper-memory``: every layer's token count, e.g. ``anchor=812;sitrep=400;tail=2210``,
        then ``reduced=tool-descriptions+unused-tools`` when the preamble was cut."""
        pairs = [f"{name}={value}" for name, value in self.layers.items()]
        if self.reductions:
            pairs.append("reduced=" + "+".join(self.reductions))
        return ";".join(pairs)


@attrs.frozen
class Facts:
    """Everything :func:`begin` decides from. ``conversation`` is the stored one; firing moves it."""

    request: Request
    conversation: Conversation
    #: The cloud's health as known now (``UP`` when there is no local model to fall back to).
    health: Health
    now: float
    request_id: str
    index: LedgerIndex
    locality: LocalityConfig
    #: The local model, or None when no local provider is configured.
    local_model: str | None
    #: Builds the local memory for a body and session (pure; may raise ``BudgetTooSmall``).
    compact: Callable[[JSON, str], LocalContext]


# ----------------------------------------------------------------------------------------- actions


@attrs.frozen
class CloudCall:
    """Send ``payload`` (the exact bytes) to the cloud."""

    payload: bytes
    plan: CloudPlan
    #: Audit rows for what the egress guard found and let through (``redact``, ``warn``).
    audit: tuple[tuple[str, JSON], ...] = ()


@attrs.frozen
class LocalCall:
    """Run the turn on the local model, after writing ``records``; ``recorder`` ledgers the reply."""

    body: JSON
    stream: bool
    num_ctx: int | None
    origin: Origin
    records: tuple[LedgerRecord, ...]
    recorder: ReplyRecorder
    #: Why the conversation cannot fit the local model, when it cannot (the turn then fails).
    memory_error: str | None = None


@attrs.frozen
class Refuse:
    """Answer with ``error`` and send nothing anywhere."""

    error: TrooperError
    audit: tuple[tuple[str, JSON], ...] = ()


Action = CloudCall | LocalCall | Refuse


@attrs.define
class Turn:
    """One request's turn, as decided: its route and reason, the transitions fired, what to do."""

    request: Request
    request_id: str
    route: Route
    reason: str
    #: Whether the request began a turn (a continuation does not).
    new_turn: bool
    records: list[TransitionRecord]
    conversation: Conversation
    action: Action
    memory: LocalContext | None = None
    lineage: Lineage | None = None
    #: Who answered, for the turn record (the driver fills these in as it calls a provider).
    provider: str = ""
    model: str = ""

    @property
    def withheld(self) -> tuple[int, int, int]:
        """Blocks withheld, turns withheld, guard hits: what the turn record counts."""
        if isinstance(self.action, CloudCall):
            plan = self.action.plan
            return plan.withheld_blocks + plan.vetted_blocks, plan.withheld_turns, len(plan.guard_hits)
        return 0, 0, 0


# ------------------------------------------------------------------------------------------ routing


def events_for(state: str, *, forced: bool, health: Health) -> tuple[str, ...]:
    """The event a new turn fires from ``state``: the first candidate the table allows."""
    for event in _FORCED if forced else _CANDIDATES[health]:
        if can_fire(state, event):
            return (event,)
    return ()


def _reason(event: str | None, *, controls: Controls, health: Health, route: Route) -> str:
    if controls.force_local:
        return f"forced:{controls.source}"
    if event == "cloud_recovered":
        return "recovered"
    if route == "cloud":
        return "default"
    return "quota" if health is Health.QUOTA else "offline"


def continuation_route(messages: Sequence[JSON], index: LedgerIndex) -> Route | None:
    """A tool loop keeps its turn's route: local when the tool calls it answers were local."""
    answered = answered_tool_calls(messages)
    if answered is None:
        return None
    return "local" if any(index.tool_origin(ref) is not None for ref in answered) else "cloud"


def may_run_locally(request: Request, conversation: Conversation, health: Health, index: LedgerIndex) -> bool:
    """Whether this request could become a local turn (what the driver loads ahead only for one)."""
    return (
        request.controls.force_local
        or health is not Health.UP
        or conversation.state in LOCAL_STATES
        or continuation_route(request.messages, index) == "local"
    )


def local_origin(request: Request, continuation: Route | None, index: LedgerIndex) -> Origin:
    """Forced when the user asked for it — now, or when the tool loop this request continues began.

    A loop's origin comes from its tool calls' records, never from the conversation's state at the
    time: another request of the session may have released the state in between.
    """
    if request.controls.force_local:
        return "forced"
    if continuation == "local":
        answered = answered_tool_calls(request.messages) or []
        if any(index.tool_origin(ref) == "forced" for ref in answered):
            return "forced"
    return "fallback"


class _Compaction:
    """The state machine's compaction callback for one turn (see ``compact_memory``)."""

    def __init__(self, facts: Facts) -> None:
        self._facts = facts
        self.result: LocalContext | None = None
        self.error: str | None = None

    def compact(self) -> None:
        """Called synchronously when a turn starts running locally. A history that cannot fit the
        local model even truncated is remembered, not raised: the machine has already moved (it has
        no rollback), and the turn is then answered with a clear error."""
        if self.result is not None:
            return
        request = self._facts.request
        body = strip_controls(request.body, request.controls, self._facts.locality.marker)
        try:
            self.result = self._facts.compact(body, request.session)
        except BudgetTooSmall as exc:
            self.error = str(exc)


# ------------------------------------------------------------------------------------------- begin


def begin(facts: Facts) -> Turn:
    """Decide the turn: fire its transitions, then say what to send where (or why not)."""
    request, conversation = facts.request, facts.conversation
    continuation = continuation_route(request.messages, facts.index)
    forced = request.controls.force_local
    compaction = _Compaction(facts)
    records: list[TransitionRecord] = []
    if continuation == "local" or (continuation == "cloud" and not forced):
        route: Route = continuation
        reason = "continuation"
    else:
        # A new turn; or a control on a cloud loop's continuation, which moves the rest of it local.
        if continuation is None:
            conversation.turns += 1
        events = events_for(conversation.state, forced=forced, health=facts.health)
        destination = conversation.state
        if events:
            found = destination_of(conversation.state, events[0], facts.health)
            assert found is not None, f"the table allows {events[0]} from {conversation.state} but leads nowhere"
            destination = found
        route = route_of(destination)
        reason = _reason(events[0] if events else None, controls=request.controls, health=facts.health, route=route)
        for name in events:
            record = fire(
                conversation,
                name,
                reason=reason,
                at=facts.now,
                request_id=facts.request_id,
                health=facts.health,
                turn=compaction,
            )
            assert record is not None and record.dest == destination, f"{name}: {record} disagrees with the table"
            records.append(record)
    conversation.turn_route, conversation.turn_reason = route, reason
    lineage = LazyLineage(facts)
    memory: LocalContext | None = None
    action: Action
    if route == "local":
        compaction.compact()  # a continuation fires nothing: same memory, built here
        memory = compaction.result
        origin = local_origin(request, continuation, facts.index)
        action = _local_call(facts, lineage(), memory, origin, compaction.error)
    else:
        action = cloud_call(request, lineage, facts.index, facts.locality)
    return Turn(
        request,
        facts.request_id,
        route,
        reason,
        continuation is None,
        records,
        conversation,
        action,
        memory,
        lineage.value,
    )


class LazyLineage:
    """The request's lineage, walked at most once and only when needed."""

    def __init__(self, facts: Facts) -> None:
        self._facts = facts
        self.value: Lineage | None = None

    def __call__(self) -> Lineage:
        if self.value is None:
            request = self._facts.request
            self.value = walk(
                request.messages, self._facts.index, session=request.session, marker=self._facts.locality.marker
            )
        return self.value


def _local_call(
    facts: Facts, lineage: Lineage, memory: LocalContext | None, origin: Origin, memory_error: str | None
) -> LocalCall:
    request, locality = facts.request, facts.locality
    records, recorder = record_local_turn(
        request.body,
        request.messages,
        lineage,
        facts.index,
        session=request.session,
        origin=origin,
        shareable=origin == "fallback" and locality.share_fallback_after_recovery,
        marker=locality.marker if request.controls.source == "marker" else None,
        protect_context=locality.protect_client_context,
    )
    body = {k: v for k, v in request.body.items() if k not in TROOPER_FIELDS}
    if memory is not None:
        body["messages"] = memory.messages
        if memory.reductions:
            for field, value in (("system", memory.system), ("tools", memory.tools)):
                if value is None:
                    body.pop(field, None)
                else:
                    body[field] = value
            if not memory.tools:
                body.pop("tool_choice", None)
        if memory.max_tokens is not None:
            body["max_tokens"] = memory.max_tokens
    elif memory_error is None:
        memory_error = "no memory was built for this turn"
    return LocalCall(
        body,
        request.stream,
        memory.num_ctx if memory is not None else None,
        origin,
        tuple(records),
        recorder,
        memory_error if memory is None else None,
    )


def fall_back(turn: Turn, facts: Facts, event: str) -> Turn:
    """The cloud failed before answering (``quota_hit`` / ``connection_lost``): answer locally.

    ``facts`` are fresh — the conversation reloaded under its lock, the health just observed — and the
    turn becomes a fallback turn: local content, recorded from its new part only (what came before it
    in a cloud tool loop is the cloud's own).
    """
    conversation = facts.conversation
    if turn.new_turn:
        conversation.turns = max(conversation.turns, turn.conversation.turns)
    reason = "quota" if event == "quota_hit" else "offline"
    compaction = _Compaction(facts)
    record = fire(conversation, event, reason=reason, at=facts.now, request_id=turn.request_id, turn=compaction)
    conversation.turn_route, conversation.turn_reason = "local", reason
    compaction.compact()
    lineage = LazyLineage(facts)
    return attrs.evolve(
        turn,
        route="local",
        reason=reason,
        records=[record] if record is not None else [],
        conversation=conversation,
        memory=compaction.result,
        action=_local_call(facts, lineage(), compaction.result, "fallback", compaction.error),
        lineage=lineage.value,
    )


# -------------------------------------------------------------------------------------- the cloud


def cloud_call(
    request: Request, lineage: Callable[[], Lineage], index: LedgerIndex, locality: LocalityConfig
) -> CloudCall | Refuse:
    """The exact bytes the cloud receives — the original ones unless something must change — or a refusal.

    With nothing local in the ledger there is nothing to withhold or guard: the lineage is not even
    walked, and the original bytes go out.
    """
    body = request.body
    if not index.holds_local and not locality.protect_client_context:
        untouched = CloudPlan(request.messages, body.get("system", NO_SYSTEM), False)
        if not TROOPER_FIELDS & body.keys():
            return CloudCall(request.raw, untouched)
        return CloudCall(orjson.dumps({k: v for k, v in body.items() if k not in TROOPER_FIELDS}), untouched)
    plan = plan_cloud(
        body,
        request.messages,
        lineage(),
        index,
        session=request.session,
        notice=locality.withheld_notice,
        egress_action=locality.egress_action,
        protect_context=locality.protect_client_context,
    )
    if isinstance(plan, Blocked):
        return Refuse(
            TrooperError("permission_error", plan.message, status=403),
            (("egress_guard", {"action": "block", "hits": list(plan.paths)}),),
        )
    audit: tuple[tuple[str, JSON], ...] = ()
    if plan.guard_hits:
        audit = (("egress_guard", {"action": locality.egress_action, "hits": list(plan.guard_hits)}),)
    if not plan.changed and not TROOPER_FIELDS & body.keys():
        return CloudCall(request.raw, plan, audit)
    out = {k: v for k, v in body.items() if k not in TROOPER_FIELDS}
    if plan.changed:
        out["messages"] = plan.messages
        if plan.system is not body.get("system", NO_SYSTEM):
            if plan.system is NO_SYSTEM or plan.system == []:
                out.pop("system", None)
            else:
                out["system"] = plan.system
    return CloudCall(orjson.dumps(out), plan, audit)


def count_estimated(facts: Facts) -> bool:
    """Whether a ``count_tokens`` request must be estimated here rather than sent.

    Counting sends the conversation, so it obeys locality like a turn would, whatever session it
    names: a request carrying a local control, continuing a local tool loop, or of a conversation
    that is local right now stays on the machine.
    """
    request = facts.request
    return (
        request.controls.force_local
        or continuation_route(request.messages, facts.index) == "local"
        or facts.conversation.state == "local"
    )


# ------------------------------------------------------------------------------------------ records


def turn_record(
    turn: Turn, *, status: int, provider: str, model: str, first_byte: float, duration: float
) -> dict[str, Any]:
    """The audit trail's turn record: ids, route, counts and timings — never content."""
    blocks, turns, hits = turn.withheld
    data: dict[str, Any] = {
        "request_id": turn.request_id,
        "route": turn.route,
        "reason": turn.reason,
        "status": status,
        "provider": provider,
        "model": model,
        "stream": turn.request.stream,
        "withheld_blocks": blocks,
        "withheld_turns": turns,
        "guard_hits": hits,
        "first_byte_ms": round(first_byte * 1000, 3),
        "duration_ms": round(duration * 1000, 3),
    }
    if turn.memory is not None:
        data["memory"] = turn.memory.layers
        data["sitrep"] = turn.memory.sitrep
        data["reductions"] = list(turn.memory.reductions)
    return data


def trooper_headers(turn: Turn) -> list[tuple[str, str]]:
    """The ``x-trooper-*`` headers every turn's response carries."""
    headers = [
        ("x-trooper-route", turn.route),
        ("x-trooper-state", turn.conversation.state),
        ("x-trooper-session", turn.conversation.id),
        ("x-trooper-reason", turn.reason),
        ("x-trooper-request-id", turn.request_id),
    ]
    if turn.memory is not None:
        headers.append(("x-trooper-memory", turn.memory.header()))
    return headers


__all__ = [
    "Action",
    "CloudCall",
    "Facts",
    "LazyLineage",
    "LocalCall",
    "LocalContext",
    "Refuse",
    "Request",
    "Turn",
    "begin",
    "cloud_call",
    "continuation_route",
    "count_estimated",
    "events_for",
    "fall_back",
    "local_origin",
    "may_run_locally",
    "read_request",
    "trooper_headers",
    "turn_record",
]
