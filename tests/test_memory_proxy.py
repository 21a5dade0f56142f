"""Memory through the proxy: after a long cloud conversation, a forced-local turn reaches the fake
Ollama as Anchor, then SITREP, then Tail, sized to the context Ollama reports for the model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Harness, make_config
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing.fake_ollama import FakeModel

MODEL = "claude-sonnet-4-6"
CONTEXT = 4096


@pytest.fixture
def small_local() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel("qwen3", context_length=CONTEXT)]) as fake:
        yield fake


def _conversation(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for number in range(1, turns + 1):
        fact = f"ticket OPS-{4000 + number} is assigned to Dana Whitfield"
        messages.append({"role": "user", "content": f"Turn {number}: please note that {fact}. " + "filler " * 40})
        messages.append({"role": "assistant", "content": f"Noted for turn {number}. " + "details " * 40})
    return messages


def test_local_turn_gets_anchor_sitrep_tail_within_num_ctx(fake_cloud: FakeAnthropic, small_local: FakeOllama) -> None:
    harness = Harness(make_config(), MemoryStore(), fake_cloud.url, small_local.url).start()
    try:
        history = _conversation(60)
        history.append({"role": "user", "content": "::local which tickets did we discuss?"})
        raw = harness.client().messages.with_raw_response.create(
            model=MODEL, max_tokens=512, messages=history, system="You are a helpful assistant."
        )
        assert raw.headers["x-trooper-route"] == "local"
        layers = dict(item.split("=") for item in raw.headers["x-trooper-memory"].split(";"))
        assert int(layers["anchor"]) > 0 and int(layers["sitrep"]) > 0 and int(layers["tail"]) > 0
        assert int(layers["total"]) <= CONTEXT - 512

        sent = small_local.chat_requests()[-1]
        assert sent["options"]["num_ctx"] == CONTEXT
        assert sent["options"]["num_predict"] == 512
        messages = [m for m in sent["messages"] if m["role"] != "system"]
        contents = [m["content"] for m in messages]
        # Anchor: the first two turns verbatim, in order.
        assert contents[0].startswith("Turn 1: please note") and contents[2].startswith("Turn 2: please note")
        sitrep_at = next(i for i, text in enumerate(contents) if text.startswith("[SITREP"))
        assert sitrep_at == 4
        sitrep = contents[sitrep_at]
        # Tail: the newest turns, verbatim, ending with the current prompt (marker stripped).
        assert contents[-1] == "which tickets did we discuss?"
        assert contents[-3].startswith("Turn 60: please note")
        tail_turns = [text for text in contents[sitrep_at + 2 :] if text.startswith("Turn ")]
        first_tail = int(tail_turns[0].split(":")[0].split()[1])
        assert 3 < first_tail < 60
        # The SITREP abstracts the middle: facts of turns between the Anchor and the Tail survive in it.
        middle_facts = [f"OPS-{4000 + n}" for n in range(3, first_tail)]
        kept = [fact for fact in middle_facts if fact in sitrep]
        assert len(kept) >= len(middle_facts) // 3  # a ~700-token SITREP for ~2,500 tokens of middle
        assert "Turn 30: please note" not in " ".join(contents[:sitrep_at])
        assert fake_cloud.requests == []
    finally:
        harness.stop()


def test_history_that_cannot_fit_even_truncated_fails_clearly(
    fake_cloud: FakeAnthropic, small_local: FakeOllama
) -> None:
    harness = Harness(make_config(), MemoryStore(), fake_cloud.url, small_local.url).start()
    try:
        import anthropic

        # One sentence no reduction can shorten, of a tool the request insists on: nothing gives way.
        tools = [{"name": "tool_0", "description": "x " * 20_000, "input_schema": {"type": "object"}}]
        with pytest.raises(anthropic.BadRequestError) as info:
            harness.client().messages.create(
                model=MODEL,
                max_tokens=512,
                tools=tools,  # type: ignore[arg-type]
                tool_choice={"type": "tool", "name": "tool_0"},
                messages=[{"role": "user", "content": "::local hi"}],
            )
        assert "does not fit the local model's context" in info.value.message
        assert fake_cloud.requests == []
        assert (
            harness.client()
            .messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "cloud"}])
            .content
        )
    finally:
        harness.stop()


def test_cloud_usage_calibrates_the_conversations_token_estimate(trooper: Harness, fake_cloud: FakeAnthropic) -> None:
    """The cloud's exact ``usage.input_tokens`` tunes this conversation's estimator (O(new messages))."""
    assert trooper.engine is not None
    client = trooper.client(default_headers={"X-Trooper-Session": "calibrated"})
    history: list[dict[str, Any]] = []
    for number in range(4):
        history.append({"role": "user", "content": f"question {number}: " + "words of prose " * 200})
        reply = client.messages.create(model=MODEL, max_tokens=16, messages=history)
        history.append({"role": "assistant", "content": reply.content[0].text})  # type: ignore[union-attr]
    estimator = trooper.engine.memory.estimator_for("calibrated")
    assert estimator is not trooper.engine.memory.estimator
    assert estimator.scale != 1.0  # the fake counts ~4 characters a token; the default guess is ~3.5
    assert trooper.engine.memory.estimator.scale == 1.0  # other conversations are not affected
