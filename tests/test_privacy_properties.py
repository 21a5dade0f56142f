"""The privacy property over real loopback sockets: a smoke test of the in-process machine's promise.

The thorough exploration runs in-process (``tests/test_privacy_machine.py``); this machine plays a
smaller mix of the same turns through a real Trooper on loopback sockets (SQLite store) against the
fake Anthropic and the fake Ollama on theirs: cloud turns, forced-local turns through each control,
local tool loops, clients re-formatting the history they re-send, session-id changes and restarts.
After every step it checks *safety* (no local canary in what the cloud received, in raw, JSON-
unescaped, case- and whitespace-folded form) and *liveness* (cloud turns' content does reach the
cloud, so a Trooper that sends nothing cannot pass). The last test disables the filter and shows the
property catches it.
"""

from __future__ import annotations

import copy
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.conftest import Harness, make_config
from trooper.store import SQLiteStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script

MODEL = "claude-sonnet-4-6"
SETTINGS = settings(
    max_examples=6,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
_FAKES: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _fakes(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> Iterator[None]:
    _FAKES["cloud"], _FAKES["local"] = fake_cloud, fake_local
    yield
    _FAKES.clear()


def _canary(kind: str) -> str:
    return f"CANARY{kind}{uuid.uuid4().hex[:10]}"


def folded_views(fake: FakeAnthropic) -> tuple[bytes, str, str]:
    raw = fake.received_bytes()
    folded = " ".join(raw.decode("utf-8", "replace").split()).casefold()
    unescaped = []
    for request in fake.requests:
        if request.body:
            try:
                unescaped.append(orjson.dumps(orjson.loads(request.body)).decode())
            except orjson.JSONDecodeError:
                continue
    return raw, folded, " ".join(" ".join(unescaped).split()).casefold()


CC_NOTE: dict[str, Any] = {"role": "system", "content": [{"type": "text", "text": "# Environment\ncwd: /work"}]}


class PrivacyMachine(RuleBasedStateMachine):
    """A client session driven at random; local canaries must never reach the fake cloud."""

    def __init__(self) -> None:
        super().__init__()
        self.cloud: FakeAnthropic = _FAKES["cloud"]
        self.local: FakeOllama = _FAKES["local"]
        self.cloud.reset()
        self.local.reset()
        self.directory = tempfile.TemporaryDirectory()
        self.store_path = Path(self.directory.name) / "trooper.sqlite3"
        self.harness = Harness(
            make_config(), SQLiteStore(self.store_path), self.cloud.url, self.local.url, in_process=False
        ).start()
        self.history: list[dict[str, Any]] = []
        self.secrets: list[str] = []
        self.cloud_canaries: list[str] = []
        self.session = "s-" + uuid.uuid4().hex[:8]
        #: Where a Claude-Code-style ``system`` note goes in what is sent (None: no note).
        self.note_at: str | None = None
        self.tools = [
            {
                "name": "read",
                "description": "read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ]

    def teardown(self) -> None:
        self.harness.stop()
        self.directory.cleanup()

    def _client(self) -> anthropic.Anthropic:
        return self.harness.client(default_headers={"X-Trooper-Session": self.session})

    def _wire(self) -> list[dict[str, Any]]:
        """The history as sent: with Claude Code's system note after the first prompt, or at the end."""
        if self.note_at is None:
            return self.history
        at = 1 if self.note_at == "after_first" else len(self.history)
        return [*self.history[:at], CC_NOTE, *self.history[at:]]

    def _append_reply(self, message: anthropic.types.Message) -> None:
        self.history.append(
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}
        )

    @initialize()
    def first_turn(self) -> None:
        self.cloud_turn()

    @rule()
    def cloud_turn(self) -> None:
        secret = _canary("C")
        self.cloud_canaries.append(secret)
        self.history.append({"role": "user", "content": f"cloud question {secret}"})
        raw = self._client().messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=self._wire(), tools=self.tools
        )  # type: ignore[arg-type]
        assert raw.headers["x-trooper-route"] == "cloud"
        self._append_reply(raw.parse())

    @rule(control=st.sampled_from(["body", "header", "marker"]), stream=st.booleans(), thinking=st.booleans())
    def local_turn(self, control: str, stream: bool, thinking: bool) -> None:
        prompt, reply, thought = _canary("LP"), _canary("LR"), _canary("LT")
        self.secrets += [prompt, reply] + ([thought] if thinking else [])
        self.local.enqueue(
            local_script.Reply(text=f"local answer {reply}", thinking=f"hmm {thought}" if thinking else "")
        )
        text = f"local question {prompt}"
        extra: dict[str, Any] = {}
        if control == "marker":
            text = f"::local {text}"
        elif control == "body":
            extra["extra_body"] = {"x_force_local": True}
        else:
            extra["extra_headers"] = {"X-Force-Local": "true"}
        self.history.append({"role": "user", "content": text})
        options: dict[str, Any] = {"model": MODEL, "max_tokens": 2048, "messages": self._wire(), **extra}
        if thinking:
            options["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        if stream:
            with self._client().messages.stream(**options) as events:
                message = events.get_final_message()
                assert events.response.headers["x-trooper-route"] == "local"
        else:
            raw = self._client().messages.with_raw_response.create(**options)
            assert raw.headers["x-trooper-route"] == "local"
            message = raw.parse()
        self._append_reply(message)

    @rule()
    def local_tool_loop(self) -> None:
        prompt, arg, result, answer = (_canary(k) for k in ("TP", "TA", "TR", "TF"))
        self.secrets += [prompt, arg, result, answer]
        self.local.enqueue(
            local_script.Reply(text="", tool_calls=[{"name": "read", "arguments": {"path": arg}}]),
            local_script.Reply(text=f"it says {answer}"),
        )
        self.history.append({"role": "user", "content": f"read it {prompt}"})
        call = self._client().messages.create(
            model=MODEL, max_tokens=64, messages=self._wire(), tools=self.tools, extra_body={"x_force_local": True}
        )  # type: ignore[arg-type]
        self._append_reply(call)
        use = next(block for block in call.content if block.type == "tool_use")
        self.history.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": f"file body {result}"}],
            }
        )
        final = self._client().messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=self._wire(), tools=self.tools
        )  # type: ignore[arg-type]
        assert final.headers["x-trooper-route"] == "local"
        self._append_reply(final.parse())

    @rule(kind=st.sampled_from(["blocks", "strings", "cache_control", "whitespace", "strip_thinking"]), data=st.data())
    def reformat_history(self, kind: str, data: st.DataObject) -> None:
        """What real clients do to the history they re-send (content is unchanged for the user)."""
        history = copy.deepcopy(self.history)
        for message in history:
            content = message["content"]
            if kind == "blocks" and isinstance(content, str):
                message["content"] = [{"type": "text", "text": content}]
            elif (
                kind == "strings"
                and isinstance(content, list)
                and len(content) == 1
                and content[0].get("type") == "text"
            ):
                message["content"] = content[0]["text"]
            elif kind == "cache_control" and isinstance(content, list) and content:
                for block in content:
                    block.pop("cache_control", None)
                target = data.draw(st.integers(0, len(content) - 1))
                if content[target].get("type") in ("text", "tool_use", "tool_result"):
                    content[target]["cache_control"] = {"type": "ephemeral"}
            elif kind == "whitespace":
                if isinstance(content, str):
                    message["content"] = "  " + content.replace(" ", "   ") + "\n"
                else:
                    for block in content:
                        if block.get("type") == "text":
                            block["text"] = "\n" + block["text"].replace(" ", " \t ") + "  "
            elif kind == "strip_thinking" and message["role"] == "assistant" and isinstance(content, list):
                kept = [block for block in content if block.get("type") not in ("thinking", "redacted_thinking")]
                message["content"] = kept or [{"type": "text", "text": "(no text)"}]
        self.history = history

    @rule(where=st.sampled_from([None, "after_first", "end"]))
    def claude_code_notes(self, where: str | None) -> None:
        """Claude Code 2.x sends a ``system`` message inside ``messages``; the marker must still be seen."""
        self.note_at = where

    @rule()
    def new_session_id(self) -> None:
        self.session = "s-" + uuid.uuid4().hex[:8]

    @rule()
    def restart(self) -> None:
        self.harness.restart()

    @invariant()
    def no_local_canary_reached_the_cloud(self) -> None:
        raw, folded, unescaped = folded_views(self.cloud)
        for secret in self.secrets:
            assert secret.encode() not in raw, f"{secret} leaked (raw)"
            assert secret.casefold() not in folded, f"{secret} leaked (folded)"
            assert secret.casefold() not in unescaped, f"{secret} leaked (unescaped)"

    @invariant()
    def cloud_turns_reach_the_cloud(self) -> None:
        if not self.cloud_canaries or not self.cloud.requests:
            return
        _, _, unescaped = folded_views(self.cloud)
        for secret in self.cloud_canaries:
            assert secret.casefold() in unescaped, f"cloud content {secret} never reached the cloud"


def test_local_content_never_reaches_the_cloud() -> None:
    run_state_machine_as_test(PrivacyMachine, settings=SETTINGS)


@pytest.mark.parametrize("stream", [False, True])
def test_the_property_fails_when_the_filter_is_disabled(monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    """Test the test: with the cloud payload filter replaced by a pass-through, the safety check catches
    the leak on the shortest sequence that shows it (a local turn, then a cloud turn)."""
    import trooper.turn
    from trooper.ledger import CloudPlan

    def no_filter(body: dict[str, Any], messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> CloudPlan:
        return CloudPlan(list(messages), body.get("system"), False)

    monkeypatch.setattr(trooper.turn, "plan_cloud", no_filter)
    machine = PrivacyMachine()
    try:
        machine.first_turn()
        machine.local_turn(control="marker", stream=stream, thinking=False)
        machine.no_local_canary_reached_the_cloud()  # nothing has been sent to the cloud since
        machine.cloud_turn()
        with pytest.raises(AssertionError, match="leaked"):
            machine.no_local_canary_reached_the_cloud()
    finally:
        machine.teardown()
