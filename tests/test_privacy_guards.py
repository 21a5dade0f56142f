"""Each guard of the privacy mechanism, removed: the property tests must notice.

Every case below breaks one guard with ``monkeypatch`` and replays the shortest sequence of the
state machine's steps that depends on it; the machine's own checks (safety, liveness, the routes
and refusals it expects) must then fail. A guard whose removal went unnoticed would be a guard the
tests do not really check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from tests.test_privacy_machine import PrivacyMachine
from trooper import controls, ledger, text
from trooper.controls import Controls, read_controls
from trooper.wire import continues_turn

Steps = Callable[[PrivacyMachine], None]


def _paste_last_received(machine: PrivacyMachine) -> None:
    machine.interrupted_local_stream(events_read=6, concurrent=False)
    machine.rng.seed(1)
    machine.secrets[:] = machine.secrets[-1:]  # paste a word the client received before it hung up
    machine.paste_local_content_into_a_prompt()


def _controls_ignored_on_continuations(headers: Any, body: Any, marker: str) -> Controls:
    """The review's bug: a request continuing a tool loop had its controls ignored."""
    if continues_turn(body.get("messages") or []):
        return Controls()
    return read_controls(headers, body, marker)


def _last_turn_message(messages: Any) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") != "system":
            return index
    return None


def _plain_fold(value: str) -> str:
    return " ".join(value.casefold().split())


CASES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], Steps]] = {
    "reply positions": (
        lambda mp: mp.setattr(ledger.LedgerIndex, "local_reply", lambda self, value, session: False),
        lambda m: (m.local_turn(control="body", stream=False, thinking=False, short=True), m.cloud_turn(stream=False)),
    ),
    "prompt positions": (
        lambda mp: mp.setattr(ledger.LedgerIndex, "local_prompt", lambda self, value, session: False),
        lambda m: (m.local_turn(control="marker", stream=True, thinking=False, short=True), m.cloud_turn(stream=False)),
    ),
    "write-ahead reply recording": (
        lambda mp: mp.setattr(ledger.ReplyRecorder, "feed", lambda self, event: []),
        _paste_last_received,
    ),
    "content matching": (
        lambda mp: mp.setattr(ledger._Scan, "block_hit", lambda self, block, scope: False),
        lambda m: (
            m.local_turn(control="header", stream=False, thinking=False, short=False),
            m.paste_local_content_into_a_prompt(),
        ),
    ),
    "controls on a continuation": (
        lambda mp: mp.setattr("trooper.turn.read_controls", _controls_ignored_on_continuations),
        lambda m: m.cloud_tool_loop_moved_local(how="marker_block"),
    ),
    "the marker before a prefill": (
        lambda mp: mp.setattr(controls, "last_user_message", _last_turn_message),
        lambda m: m.prefilled_local_prompt(stream=False),
    ),
    "the marker inside a side request": (
        lambda mp: mp.setattr(controls, "_embedded", lambda marker: re.compile(r"(?!x)x")),
        lambda m: (
            m.local_turn(control="marker", stream=False, thinking=False, short=False),
            m.side_request_quoting_a_local_prompt(),
        ),
    ),
    "the marker after a reminder": (
        lambda mp: mp.setattr(controls, "after_leading_reminders", lambda value: ("", value)),
        lambda m: m.local_turn(control="reminder_marker", stream=False, thinking=False, short=False),
    ),
    "one normalisation": (
        lambda mp: mp.setattr(text.fold, "_compute", _plain_fold),
        lambda m: (
            m.local_turn(control="body", stream=False, thinking=False, short=False),
            m.reformat_history(kind="zero_width"),
            m.new_session_id(),
            m.cloud_turn(stream=False),
        ),
    ),
}


@pytest.mark.parametrize("guard", sorted(CASES))
def test_removing_a_guard_is_caught(monkeypatch: pytest.MonkeyPatch, guard: str) -> None:
    remove, steps = CASES[guard]
    text.fold.clear()
    remove(monkeypatch)
    machine = PrivacyMachine()
    try:
        with pytest.raises((AssertionError, pytest.fail.Exception, anthropic.APIError)):
            machine.start(share=False, seed=0)
            steps(machine)
            machine.no_local_content_reached_the_cloud()
            machine.cloud_content_arrived_unchanged()
    finally:
        machine.teardown()
        text.fold.clear()


def test_the_machine_passes_the_same_steps_with_every_guard_in_place() -> None:
    for guard in sorted(CASES):
        machine = PrivacyMachine()
        try:
            machine.start(share=False, seed=0)
            CASES[guard][1](machine)
            machine.no_local_content_reached_the_cloud()
            machine.cloud_content_arrived_unchanged()
        finally:
            machine.teardown()
