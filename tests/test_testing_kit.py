"""The testing kit as its users see it: the example in ``trooper.testing``'s docstring runs as written."""

from __future__ import annotations

from typing import Any

from trooper.config import Config, OllamaConfig
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama, TrooperHarness
from trooper.testing import fake_ollama as local_script


def test_the_documented_example_runs_in_process_and_over_sockets() -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "hello"}]
    for in_process in (True, False):
        with FakeAnthropic() as cloud, FakeOllama() as local:
            harness = TrooperHarness(Config(), MemoryStore(), cloud, local, in_process=in_process).start()
            harness.client().messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=history)
            assert cloud.last_json()["messages"] == history
            harness.stop()


def test_a_forced_local_turn_is_seen_by_the_local_fake_only() -> None:
    with FakeAnthropic() as cloud, FakeOllama() as local:
        local.enqueue(local_script.Reply(text="kept here"))
        harness = TrooperHarness(Config(ollama=OllamaConfig(model="qwen3")), MemoryStore(), cloud, local).start()
        reply = harness.client().messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "::local the vault is at vault-7731.internal"}],
        )
        harness.stop()
    assert [block.text for block in reply.content if block.type == "text"] == ["kept here"]
    assert cloud.requests == []
    assert b"vault-7731.internal" in local.received_bytes()
