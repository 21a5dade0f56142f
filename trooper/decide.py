"""The routing decision for one request: pure, synchronous, no I/O (DESIGN §3).

Given the conversation's state, the locality controls found in the request, whether the request
continues a tool loop (and on which route that turn began) and the cloud's health, return the
route, the reason, and the state-machine events to fire — in that order. The engine executes the
plan; hypothesis tests drive this function and the machine without a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from trooper.conversation import LOCAL_STATES, Health, State
from trooper.ledger import content_blocks, last_turn_message, strip_marker
from trooper.providers.base import header
from trooper.wire import invalid_request

Route = Literal["cloud", "local"]
TROOPER_FIELDS: frozenset[str] = frozenset({"x_force_local"})
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@attrs.frozen
class Controls:
    """Whether the request asks for a local turn, and through which control."""

    force_local: bool = False
    source: str | None = None  # "body" | "header" | "marker"
    marker_block: tuple[int, int] | None = None  # (message index, block index) carrying the marker


@attrs.frozen
class Plan:
    route: Route
    reason: str
    events: tuple[str, ...]


def read_controls(
    headers: Sequence[tuple[str, str]] | Mapping[str, str], body: Mapping[str, Any], marker: str
) -> Controls:
    """The locality controls of a request; a malformed control is a 400 naming it."""
    if "x_force_local" in body:
        value = body["x_force_local"]
        if not isinstance(value, bool):
            raise invalid_request(f"x_force_local: must be a boolean (true or false), got {type(value).__name__}")
        if value:
            return Controls(True, "body")
    raw = header(headers, "x-force-local")
    if raw is not None:
        lowered = raw.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise invalid_request(f"X-Force-Local header: must be true or false, got {raw[:40]!r}")
        if lowered in _TRUE:
            return Controls(True, "header")
    found = find_marker(body, marker)
    if found is not None:
        return Controls(True, "marker", found)
    return Controls()


def find_marker(body: Mapping[str, Any], marker: str) -> tuple[int, int] | None:
    """The text block of the last user message that starts with the marker, if any."""
    messages = body.get("messages")
    if not marker or not isinstance(messages, list) or not messages:
        return None
    position = last_turn_message(messages)  # Claude Code may put a system note after the prompt
    if position is None:
        return None
    last = messages[position]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return None
    for number, block in enumerate(content_blocks(last)):
        text = block if isinstance(block, str) else block.get("text") if isinstance(block, Mapping) else None
        if isinstance(block, Mapping) and block.get("type") != "text":
            continue
        if isinstance(text, str) and strip_marker(text, marker) is not None:
            return position, number
    return None


def decide(state: str, *, controls: Controls, continuation: Route | None, health: Health) -> Plan:
    """Where this request runs and which events the conversation's machine sees.

    A request continuing a tool loop keeps the route its turn began with; locality is decided
    only when a turn begins. Forced-local always wins; otherwise the cloud's known health decides.
    """
    if continuation is not None:
        return Plan(continuation, "continuation", ())
    if controls.force_local:
        event = "local_turn" if state == State.LOCAL else "force_local"
        return Plan("local", f"forced:{controls.source}", (event,))
    events: list[str] = []
    current = state
    if current == State.LOCAL:
        events.append("release")
        current = {Health.UP: State.CLOUD, Health.QUOTA: State.QUOTA_EXHAUSTED, Health.DOWN: State.OFFLINE}[health]
        if current == State.CLOUD:
            return Plan("cloud", "default", tuple(events))
        return Plan("local", str(health_reason(health)), tuple(events))
    if current == State.CLOUD:
        if health is Health.UP:
            return Plan("cloud", "default", ())
        event = "quota_hit" if health is Health.QUOTA else "connection_lost"
        return Plan("local", health_reason(health), (event,))
    if current in LOCAL_STATES:
        if health is Health.UP:
            return Plan("cloud", "recovered", ("cloud_recovered",))
        return Plan("local", health_reason(health), ("local_turn",))
    return Plan("cloud", "default", ())


def health_reason(health: Health) -> str:
    return "quota" if health is Health.QUOTA else "offline"
