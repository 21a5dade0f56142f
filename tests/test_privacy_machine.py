"""The privacy promise as a property, in-process: hundreds of turns through a real engine, no sockets.

A hypothesis state machine plays a client (the official SDK) through a real Trooper — its engine, its
ASGI server, a SQLite store — in front of the package's fake Anthropic and fake Ollama, driven
in-process. It mixes what clients really do: cloud turns; local turns through every control (body
field, header, marker, marker after a reminder, marker on a tool-loop continuation); local tool loops
whose tool calls carry multi-line scripts; streams the client interrupts after a few events, then
re-sends as Claude Code does ("[Request interrupted by user]"); concurrent requests while a local
reply streams; prefills; side requests quoting a local prompt; token counts under other session ids;
quota fallbacks in the middle of cloud tool loops and recovery; client re-formatting (block/string,
cache_control, whitespace, NFD, fullwidth forms, zero-width characters, smart quotes, split and
merged text blocks, re-serialised tool inputs, stripped thinking); new session ids, restarts, and a
second instance on the same store.

After every step:
* **safety** — no canary (distinctive local content) in anything the cloud received, raw or decoded
  and folded; no *quiet* local secret (everyday words, recognisable only by provenance) either,
  unless the test itself pasted it into new content;
* **liveness** — every block of cloud content the client sent with the last cloud request reached
  the cloud unchanged (a filter that withholds too much fails here).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.privacy_kit import REFORMATS, Messages, block_texts_of, canary, leaked, quiet, reformat
from trooper.config import Config, LocalityConfig, OllamaConfig
from trooper.store import SQLiteStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_anthropic as cloud_script
from trooper.testing import fake_ollama as local_script
from trooper.testing.harness import TrooperHarness

MODEL = "claude-sonnet-4-6"
REMINDER = "<system-reminder>\nThe project's CLAUDE.md: keep answers short.\n</system-reminder>"
TOOLS = [
    {
        "name": "bash",
        "description": "run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    }
]
SETTINGS = settings(
    max_examples=40,
    stateful_step_count=18,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def _dump(message: anthropic.types.Message) -> dict[str, Any]:
    return {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}


class PrivacyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "trooper.sqlite3"
        self.cloud = FakeAnthropic()
        self.local = FakeOllama()
        self.instances: list[TrooperHarness] = []
        self.current = 0
        self.rng = random.Random(0)
        self.history: Messages = []
        self.origin: list[str] = []  # per history message: cloud / local / fallback / pasted
        self.session = "s-" + canary("")[6:]
        self.secrets: list[str] = []  # distinctive local content: never in the cloud
        self.quiet: list[str] = []  # everyday-words local content: only provenance protects it
        self.fallback_secrets: list[str] = []
        self.shared_fallback = False
        self.note = False
        self.last_sent: Messages | None = None
        #: Positions in the cloud's request log of requests it refused (429) before a fallback.
        self.refused: set[int] = set()

    # ------------------------------------------------------------------------------------- plumbing

    @initialize(share=st.booleans(), seed=st.integers(0, 2**16))
    def start(self, share: bool, seed: int) -> None:
        self.rng.seed(seed)
        self.shared_fallback = share
        locality = attrs.evolve(LocalityConfig(), share_fallback_after_recovery=share)
        self.config = Config(ollama=OllamaConfig(model="qwen3"), locality=locality)
        self.instances.append(TrooperHarness(self.config, SQLiteStore(self.path), self.cloud, self.local).start())
        self.cloud_turn(stream=False)

    def teardown(self) -> None:
        for harness in self.instances:
            harness.stop()
        self.directory.cleanup()

    @property
    def harness(self) -> TrooperHarness:
        return self.instances[self.current]

    def client(self, session: str | None = None) -> anthropic.Anthropic:
        return self.harness.client(default_headers={"X-Trooper-Session": session or self.session})

    def wire(self) -> Messages:
        """The history as sent (with Claude Code's system note after the first prompt, when on)."""
        if not self.note or not self.history:
            return list(self.history)
        note = {"role": "system", "content": [{"type": "text", "text": "# Environment\ncwd: /work"}]}
        return [self.history[0], note, *self.history[1:]]

    def add(self, message: dict[str, Any], origin: str) -> None:
        self.history.append(message)
        self.origin.append(origin)

    def send(self, **options: Any) -> tuple[Any, anthropic.types.Message]:
        raw = self.client().messages.with_raw_response.create(model=MODEL, max_tokens=256, tools=TOOLS, **options)
        return raw, raw.parse()

    def sent(self, messages: Messages) -> None:
        self.last_sent = messages

    # ------------------------------------------------------------------------------------------ turns

    @rule(stream=st.booleans())
    def cloud_turn(self, stream: bool) -> None:
        text = f"cloud question {canary('C')} {quiet(self.rng)}"
        self.add({"role": "user", "content": text}, "cloud")
        self.cloud.enqueue(cloud_script.text(f"cloud answer {canary('CA')}"))
        messages = self.wire()
        if stream:
            with self.client().messages.stream(model=MODEL, max_tokens=64, messages=messages, tools=TOOLS) as events:
                reply = events.get_final_message()
                assert events.response.headers["x-trooper-route"] == "cloud"
        else:
            raw, reply = self.send(messages=messages)
            assert raw.headers["x-trooper-route"] == "cloud"
        self.sent(messages)
        self.add(_dump(reply), "cloud")

    @rule(
        control=st.sampled_from(["body", "header", "marker", "reminder_marker"]),
        stream=st.booleans(),
        thinking=st.booleans(),
        short=st.booleans(),
    )
    def local_turn(self, control: str, stream: bool, thinking: bool, short: bool) -> None:
        """``short``: the prompt and the reply are everyday words only, which provenance alone protects."""
        prompt_secret, reply_quiet = (quiet(self.rng) if short else canary("LP")), quiet(self.rng)
        self.quiet.append(reply_quiet)
        reply_text = reply_quiet if short else f"local answer {canary('LR')} and {reply_quiet}"
        if short:
            self.quiet.append(prompt_secret)
        else:
            self.secrets += [prompt_secret, reply_text.split()[2]]
        thought = canary("LT") if thinking else ""
        if thought:
            self.secrets.append(thought)
        self.local.enqueue(local_script.Reply(text=reply_text, thinking=f"hmm {thought}" if thought else ""))
        text = f"local question {prompt_secret}"
        options: dict[str, Any] = {}
        content: Any = text
        if control == "marker":
            content = f"::local {text}"
        elif control == "reminder_marker":
            content = [{"type": "text", "text": f"{REMINDER}\n::local {text}"}]
        elif control == "body":
            options["extra_body"] = {"x_force_local": True}
        else:
            options["extra_headers"] = {"X-Force-Local": "true"}
        self.add({"role": "user", "content": content}, "local")
        messages = self.wire()
        if thinking:
            options["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        if stream:
            with self.client().messages.stream(model=MODEL, max_tokens=2048, messages=messages, **options) as events:
                reply = events.get_final_message()
                assert events.response.headers["x-trooper-route"] == "local"
        else:
            raw = self.client().messages.with_raw_response.create(
                model=MODEL, max_tokens=2048, messages=messages, **options
            )
            assert raw.headers["x-trooper-route"] == "local"
            reply = raw.parse()
        self.add(_dump(reply), "local")
        prompt_seen = self.local.chat_requests()[-1]["messages"][-1]
        assert "::local" not in str(prompt_seen.get("content")), "the marker reached the local model"

    @rule()
    def local_tool_loop(self) -> None:
        """The local model writes a multi-line script with a tool; the result and the answer are local too."""
        prompt, path, output, answer = canary("TP"), canary("TA"), canary("TR"), canary("TF")
        script = f"cat <<'EOF' > /tmp/{path}.sh\nhost = vault.internal\nkey = {path}\nEOF"
        self.secrets += [prompt, path, output, answer, f"key = {path}"]
        self.local.enqueue(
            local_script.Reply(text="", tool_calls=[{"name": "bash", "arguments": {"command": script}}]),
            local_script.Reply(text=f"it printed {answer}"),
        )
        self.add({"role": "user", "content": f"::local write the script {prompt}"}, "local")
        _, call = self.send(messages=self.wire())
        self.add(_dump(call), "local")
        use = next(block for block in call.content if block.type == "tool_use")
        result = {"type": "tool_result", "tool_use_id": use.id, "content": f"done: {output}"}
        self.add({"role": "user", "content": [result]}, "local")
        raw, final = self.send(messages=self.wire())
        assert raw.headers["x-trooper-route"] == "local"
        self.add(_dump(final), "local")

    @rule(how=st.sampled_from(["marker_block", "body", "header"]))
    def cloud_tool_loop_moved_local(self, how: str) -> None:
        """A control on a cloud loop's continuation moves the rest of the turn to the local model."""
        ask = f"list the files {canary('CT')}"
        self.add({"role": "user", "content": ask}, "cloud")
        self.cloud.enqueue(cloud_script.tool_use("bash", {"command": "ls /work"}))
        messages = self.wire()
        _, call = self.send(messages=messages)
        self.sent(messages)
        self.add(_dump(call), "cloud")
        use = next(block for block in call.content if block.type == "tool_use")
        listing, typed, answer = canary("CR"), canary("CM"), canary("CF")
        self.secrets += [listing, answer] + ([typed] if how == "marker_block" else [])
        blocks: list[dict[str, Any]] = [{"type": "tool_result", "tool_use_id": use.id, "content": f"a.txt {listing}"}]
        options: dict[str, Any] = {}
        if how == "marker_block":
            blocks.append({"type": "text", "text": f"::local and keep this local {typed}"})
        elif how == "body":
            options["extra_body"] = {"x_force_local": True}
        else:
            options["extra_headers"] = {"X-Force-Local": "true"}
        self.add({"role": "user", "content": blocks}, "local")
        self.local.enqueue(local_script.Reply(text=f"files: {answer}"))
        raw, final = self.send(messages=self.wire(), **options)
        assert raw.headers["x-trooper-route"] == "local"
        self.add(_dump(final), "local")

    @rule(events_read=st.integers(1, 6), concurrent=st.booleans())
    def interrupted_local_stream(self, events_read: int, concurrent: bool) -> None:
        """Esc while a local answer streams; Claude Code keeps what it got and says it was interrupted."""
        words = [canary("IW") for _ in range(6)]
        self.local.enqueue(local_script.Reply(text="first " + " ".join(words), delay=0.001))
        self.add({"role": "user", "content": f"::local tell me {canary('IP')}"}, "local")
        self.secrets.append(block_texts_of(self.history[-1])[0].split()[-1])
        received = ""
        with self.client().messages.stream(model=MODEL, max_tokens=2048, messages=self.wire()) as events:
            for count, event in enumerate(events, 1):
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    received += event.delta.text
                if count >= events_read:
                    break
            if concurrent:  # a request of the same conversation while the reply is still open
                partial = [*self.wire(), {"role": "assistant", "content": received or "..."}]
                partial.append({"role": "user", "content": f"meanwhile {canary('C')}"})
                worker = threading.Thread(target=self._quietly_send, args=(partial,))
                worker.start()
                time.sleep(0.01)
        if concurrent:
            worker.join(30)
        self.secrets += [word for word in words if word in received]  # what the client got is local
        if received.strip():
            self.quiet.append(received.strip())
            self.add({"role": "assistant", "content": [{"type": "text", "text": received}]}, "local")
        self.add({"role": "user", "content": [{"type": "text", "text": "[Request interrupted by user]"}]}, "cloud")
        self.cloud_turn(stream=False)

    def _quietly_send(self, messages: Messages) -> None:
        self.client().messages.create(model=MODEL, max_tokens=16, messages=messages)

    @rule(stream=st.booleans())
    def prefilled_local_prompt(self, stream: bool) -> None:
        """A ``::local`` prompt followed by an assistant prefill still runs locally."""
        secret, prefill = canary("PF"), "Sure, here it is:"
        self.secrets.append(secret)
        self.add({"role": "user", "content": f"::local complete this {secret}"}, "local")
        self.local.enqueue(local_script.Reply(text=f" done {canary('PR')}"))
        messages = [*self.wire(), {"role": "assistant", "content": prefill}]
        raw = self.client().messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=messages)
        assert raw.headers["x-trooper-route"] == "local"
        reply = raw.parse()
        text = prefill + "".join(block.text for block in reply.content if block.type == "text")
        self.secrets.append(text.split()[-1])
        self.add({"role": "assistant", "content": text}, "local")

    @rule()
    def side_request_quoting_a_local_prompt(self) -> None:
        """A title request wraps the conversation; the marker inside it keeps it off the cloud."""
        locals_ = [m for m, o in zip(self.history, self.origin, strict=True) if o == "local" and m["role"] == "user"]
        # Whole messages: a client that split a prompt into blocks quotes it whole, not block by block.
        whole = ["".join(block_texts_of(m)) for m in locals_]
        texts = [text for text in whole if "::local" in text] or [text for text in whole if "CANARY" in text]
        if not texts:
            return
        quoted = "Write a five-word title for this conversation:\n" + "\n".join(texts[-2:])
        side = self.client(session=canary("side"))
        if "::local" in quoted:
            raw = side.messages.with_raw_response.create(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": quoted}]
            )
            assert raw.headers["x-trooper-route"] == "local"
        else:  # no marker to find: the egress guard recognises the local prompt it quotes
            with pytest.raises(anthropic.PermissionDeniedError):
                side.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": quoted}])

    @rule()
    def count_tokens_under_another_session(self) -> None:
        messages = [*self.wire(), {"role": "user", "content": "how long is this?"}]
        self.client(session=canary("count")).messages.count_tokens(model=MODEL, messages=messages)

    @rule()
    def paste_local_content_into_a_prompt(self) -> None:
        """New content holding a distinctive local span is refused; the client keeps it in its history
        (as Claude Code does), and from then on it is re-sent history, withheld, never refused."""
        if not self.secrets:
            return
        secret = self.rng.choice(self.secrets)
        self.add({"role": "user", "content": f"what does this mean: {secret} ?"}, "pasted")
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            self.send(messages=self.wire())
        assert "::local" in refused.value.message
        self.add({"role": "assistant", "content": "(the request was refused)"}, "pasted")

    @rule(retry_after=st.sampled_from([0, 60]))
    def quota_in_the_middle_of_a_cloud_tool_loop(self, retry_after: int) -> None:
        """The continuation hits a 429: the local model answers; the cloud keeps what it produced."""
        ask = f"check the logs {canary('Q')}"
        self.add({"role": "user", "content": ask}, "cloud")
        self.cloud.enqueue(cloud_script.tool_use("bash", {"command": "tail /var/log/app.log"}))
        messages = self.wire()
        _, call = self.send(messages=messages)
        self.sent(messages)
        self.add(_dump(call), "cloud")
        use = next(block for block in call.content if block.type == "tool_use")
        result_secret, answer_secret = canary("QR"), canary("QF")
        (self.fallback_secrets if self.shared_fallback else self.secrets).extend([result_secret, answer_secret])
        self.add(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": result_secret}]},
            "fallback",
        )
        self.cloud.enqueue(cloud_script.rate_limited(retry_after=retry_after))
        self.local.enqueue(local_script.Reply(text=f"the log says {answer_secret}"))
        raw, final = self.send(messages=self.wire())
        assert raw.headers["x-trooper-route"] == "local"
        # The refused request did carry the tool result: the cloud said no before it looked. Later
        # requests must not carry it again (a fallback is local content unless shared).
        self.refused.add(len(self.cloud.requests) - 1)
        self.add(_dump(final), "fallback")
        if retry_after:  # let the next turn find the cloud back
            self.harness.cloud_recovered()

    @rule(kind=st.sampled_from(REFORMATS))
    def reformat_history(self, kind: str) -> None:
        self.history = reformat(self.history, kind, self.rng)

    @rule()
    def claude_code_note(self) -> None:
        self.note = not self.note

    @rule()
    def new_session_id(self) -> None:
        self.session = "s-" + canary("")[6:]

    @rule()
    def restart(self) -> None:
        self.harness.restart()

    @rule()
    def other_instance(self) -> None:
        if len(self.instances) == 1:
            self.instances.append(TrooperHarness(self.config, SQLiteStore(self.path), self.cloud, self.local).start())
        self.current = 1 - self.current

    # ------------------------------------------------------------------------------------- invariants

    @invariant()
    def no_local_content_reached_the_cloud(self) -> None:
        if not self.instances:
            return
        assert leaked(self.cloud, self.secrets, skip=self.refused) == []
        pasted = "\n".join(
            text
            for message, origin in zip(self.history, self.origin, strict=True)
            if origin == "pasted"
            for text in block_texts_of(message)
        )
        quiet_secrets = [phrase for phrase in self.quiet if phrase not in pasted]
        assert leaked(self.cloud, quiet_secrets, skip=self.refused) == []

    @invariant()
    def cloud_content_arrived_unchanged(self) -> None:
        if self.last_sent is None or not self.cloud.requests:
            return
        received = self.cloud.last_json("/v1/messages")["messages"]
        blocks = [block for message in received for block in _blocks(message)]
        for message in self.last_sent:
            index = next((i for i, m in enumerate(self.history) if m is message), None)
            if index is None:
                continue
            origin = self.origin[index]
            if origin != "cloud" and not (origin == "fallback" and self.shared_fallback):
                continue
            for block in _blocks(message):
                assert block in blocks, f"cloud content was changed or dropped: {block}"
        self.last_sent = None


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def test_local_content_never_reaches_the_cloud_and_cloud_content_always_does() -> None:
    run_state_machine_as_test(PrivacyMachine, settings=SETTINGS)
