"""The routing decision for one request: pure, synchronous, no I/O.

Given the conversation's state, the locality controls found in the request, whether the request
continues a tool loop (and on which route that turn began) and the cloud's health, return the
route, the reason, and the state-machine events to fire — in that order. The engine executes the
plan.
"""

from __future__ import annotations

from typing import Literal

import attrs

from trooper.controls import Controls
from trooper.conversation import LOCAL_STATES, Health, State

Route = Literal["cloud", "local"]


@attrs.frozen
class Plan:
    route: Route
    reason: str
    events: tuple[str, ...]


def decide(state: str, *, controls: Controls, continuation: Route | None, health: Health) -> Plan:
    """Where this request runs and which events the conversation's machine sees.

    A request continuing a tool loop keeps the route its turn began with — except that a control
    asking for a local turn moves the rest of a cloud loop to the local model (the user's control
    always wins; it never moves a local loop back). Otherwise forced-local wins, then the cloud's
    known health decides.
    """
    if continuation == "local":
        return Plan("local", "continuation", ())
    if controls.force_local:
        event = "local_turn" if state == State.LOCAL else "force_local"
        return Plan("local", f"forced:{controls.source}", (event,))
    if continuation is not None:
        return Plan(continuation, "continuation", ())
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
