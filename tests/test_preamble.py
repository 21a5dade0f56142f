"""The local request's preamble (system prompt and tools) gives way before the user's words do.

Pure tests of :mod:`trooper.memory.preamble` and of :func:`trooper.memory.compact` using it, then the
engine through the SDK: the local model gets the reduced preamble, the response and the audit say
so, and a cloud turn after it gets the client's preamble exactly as sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Harness, make_config
from trooper.memory import MARKER_PREFIX, Budget, BudgetTooSmall, CalibratedEstimator, compact
from trooper.memory.preamble import REDUCTIONS, first_sentence, fit_preamble, used_tools
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_anthropic as script
from trooper.testing import fake_ollama as local_script

EST = CalibratedEstimator()
ADVICE = " ".join(
    f"Usage note {i}: prefer this tool when the task calls for it, and check its output." for i in range(40)
)


def _tool(name: str, advice: str = ADVICE) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"Runs {name} on the workspace. {advice}".strip(),
        "input_schema": {
            "type": "object",
            "properties": {"target": {"type": "string", "description": f"What {name} works on. {advice}".strip()}},
            "required": ["target"],
        },
    }


TOOLS = [_tool(name) for name in ("Bash", "Read", "Write", "Grep")]
SYSTEM = "You are a careful coding agent. Follow the user's instructions exactly.\n\n" + ADVICE * 3


def _turn(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_first_sentence() -> None:
    assert first_sentence("Reads a file. Then more.") == "Reads a file."
    assert first_sentence("  Is it? Yes.") == "Is it?"
    assert first_sentence("Line one\nline two. And more.") == "Line one"
    assert first_sentence("version 1.2 is out") == "version 1.2 is out"  # a dot inside a word is no end
    assert first_sentence("One sentence only.") == "One sentence only."
    assert first_sentence("") == ""


def test_a_preamble_that_leaves_room_is_sent_as_it_came() -> None:
    messages = [_turn("hello")]
    fitted = fit_preamble(SYSTEM, TOOLS, messages, room=100_000, need=10, estimator=EST)
    assert fitted.system is SYSTEM and fitted.tools == TOOLS and fitted.reductions == ()


def test_steps_are_taken_in_order_and_only_as_far_as_needed() -> None:
    messages = [
        _turn("run it"),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
    ]
    full = EST.count_system(SYSTEM) + EST.count_tools(TOOLS)
    short = [_tool(tool["name"], "") for tool in TOOLS]  # every description down to its first sentence
    # Just too little room: the descriptions give way, every tool stays.
    step1 = fit_preamble(SYSTEM, TOOLS, messages, room=full, need=EST.count_tools(TOOLS) // 2, estimator=EST)
    assert step1.reductions == ("tool-descriptions",)
    assert [tool["name"] for tool in step1.tools or []] == ["Bash", "Read", "Write", "Grep"]
    assert step1.tools == short
    assert step1.system is SYSTEM
    # Less: only the tool the conversation used, and the one tool_choice names.
    room = EST.count_system(SYSTEM) + EST.count_tools([short[1], short[3]]) + 100
    step2 = fit_preamble(
        SYSTEM, TOOLS, messages, room=room, need=100, estimator=EST, tool_choice={"type": "tool", "name": "Grep"}
    )
    assert step2.reductions == ("tool-descriptions", "unused-tools")
    assert [tool["name"] for tool in step2.tools or []] == ["Read", "Grep"]
    assert step2.system is SYSTEM
    # Much less: the system prompt keeps its head, marked as cut.
    step3 = fit_preamble(SYSTEM, TOOLS, messages, room=2_000, need=900, estimator=EST)
    assert step3.reductions == REDUCTIONS
    assert isinstance(step3.system, str) and step3.system.startswith("You are a careful coding agent.")
    assert MARKER_PREFIX in step3.system and step3.system_tokens <= 2_000 - step3.tools_tokens - 900
    assert full > step3.system_tokens + step3.tools_tokens


def test_the_system_prompt_keeps_at_least_an_eighth_of_the_room() -> None:
    fitted = fit_preamble(SYSTEM, None, [_turn("x")], room=4_000, need=10_000, estimator=EST)
    assert fitted.reductions == ("system",)
    assert 4_000 // 8 - 50 <= fitted.system_tokens <= 4_000 // 8


def test_a_system_prompt_of_blocks_keeps_its_leading_blocks() -> None:
    blocks = [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": ADVICE * 4, "cache_control": {"type": "ephemeral"}},
    ]
    fitted = fit_preamble(blocks, None, [_turn("x")], room=3_000, need=2_000, estimator=EST)
    assert isinstance(fitted.system, list) and fitted.system[0] == blocks[0]
    assert fitted.system[1]["cache_control"] == {"type": "ephemeral"} and MARKER_PREFIX in fitted.system[1]["text"]
    assert fitted.system_tokens <= 1_000


def test_used_tools_reads_every_tool_use() -> None:
    messages = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "a", "name": "Bash", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "ok"}]},
        {"role": "assistant", "content": "plain"},
    ]
    assert used_tools(messages) == {"Bash"}
    assert used_tools(messages, {"type": "tool", "name": "Read"}) == {"Bash", "Read"}
    assert used_tools(messages, {"type": "auto"}) == {"Bash"}


@st.composite
def _preambles(draw: st.DrawFn) -> tuple[Any, list[dict[str, Any]], int, int]:
    words = st.text(alphabet="abcdefgh .\n", min_size=0, max_size=400)
    names = draw(st.lists(st.sampled_from(["Bash", "Read", "Write", "Grep", "Edit"]), unique=True, max_size=5))
    tools = [_tool(name, draw(words)) for name in names]
    system = draw(st.one_of(st.none(), words, st.lists(words.map(lambda t: {"type": "text", "text": t}), max_size=3)))
    return system, tools, draw(st.integers(0, 6_000)), draw(st.integers(0, 3_000))


@settings(max_examples=200, deadline=None)
@given(_preambles())
def test_reduction_properties(case: tuple[Any, list[dict[str, Any]], int, int]) -> None:
    """Steps come in their order; nothing is added; a tool keeps its name and its schema's shape; the
    preamble is cut only when it crowds the messages, and then only as far as the room or the floor."""
    system, tools, room, need = case
    messages = [{"role": "assistant", "content": [{"type": "tool_use", "id": "u", "name": "Read", "input": {}}]}]
    fitted = fit_preamble(system, tools, messages, room=room, need=need, estimator=EST)
    before = EST.count_system(system) + EST.count_tools(tools)
    assert list(fitted.reductions) == [step for step in REDUCTIONS if step in fitted.reductions]
    assert fitted.system_tokens + fitted.tools_tokens <= before
    if room - before >= need:
        assert fitted.reductions == () and fitted.system is system
    names = [tool["name"] for tool in tools]
    kept = [tool["name"] for tool in fitted.tools or []]
    assert kept == [name for name in names if name in kept]
    if "unused-tools" not in fitted.reductions:
        assert kept == names
    for tool in fitted.tools or []:
        assert tool["input_schema"]["required"] == ["target"]
    if "system" in fitted.reductions:
        assert fitted.system_tokens <= max(room - fitted.tools_tokens - need, room // 8)
    assert fit_preamble(system, tools, messages, room=room, need=need, estimator=EST) == fitted  # deterministic


def test_compact_reduces_before_it_truncates_the_current_turn() -> None:
    prompt = "please look at the build failure in the parser module and fix it " * 20
    budget = Budget(context_tokens=4_096, reserved_output=1_024)
    result = compact([_turn(prompt)], budget=budget, system=SYSTEM, tools=TOOLS, estimator=EST)
    assert result.reductions and not result.truncated
    assert result.messages == [_turn(prompt)]  # the user's words whole
    assert result.layers["system"] + result.layers["tools"] + result.layers["tail"] <= 4_096 - 1_024
    plenty = compact([_turn(prompt)], budget=Budget(context_tokens=131_072), system=SYSTEM, tools=TOOLS)
    assert plenty.reductions == () and plenty.system is SYSTEM and plenty.tools == TOOLS


def test_compact_still_refuses_what_no_reduction_can_fit() -> None:
    with pytest.raises(BudgetTooSmall):
        compact([_turn("hi")], budget=Budget(context_tokens=40, reserved_output=30), system=SYSTEM, tools=TOOLS)


# ------------------------------------------------------------------------------------ the engine


@pytest.fixture
def small_local() -> Iterator[FakeOllama]:
    with FakeOllama(context_length=4_096) as fake:
        yield fake


def test_the_local_model_gets_the_reduced_preamble_and_the_cloud_the_clients_own(
    fake_cloud: FakeAnthropic, small_local: FakeOllama
) -> None:
    harness = Harness(make_config(), MemoryStore(), fake_cloud, small_local).start()
    try:
        client = harness.client()
        small_local.enqueue(local_script.Reply(text="done locally"))
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=512,
            system=SYSTEM,
            tools=TOOLS,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "::local what does the parser do?"}],
            extra_headers={"x-trooper-session": "preamble"},
        )
        assert raw.parse().content[0].text == "done locally"  # type: ignore[union-attr]
        memory = dict(pair.split("=", 1) for pair in raw.headers["x-trooper-memory"].split(";"))
        assert memory["reduced"].startswith("tool-descriptions")
        chat = small_local.chat_requests()[0]
        sent_system = next(m["content"] for m in chat["messages"] if m["role"] == "system")
        assert "Usage note" not in json.dumps(chat.get("tools") or [])
        assert int(memory["system"]) + int(memory["tools"]) < EST.count_system(SYSTEM) + EST.count_tools(TOOLS)
        assert sent_system.startswith("You are a careful coding agent.")
        trail = [e for e in harness.store.audit("preamble") if e["kind"] == "turn"]
        assert trail[0]["reductions"] == memory["reduced"].split("+")

        fake_cloud.enqueue(script.text("cloud answer"))
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=512,
            system=SYSTEM,
            tools=TOOLS,  # type: ignore[arg-type]
            messages=[
                {"role": "user", "content": "::local what does the parser do?"},
                {"role": "assistant", "content": "done locally"},
                {"role": "user", "content": "now in the cloud"},
            ],
            extra_headers={"x-trooper-session": "preamble"},
        )
        body = json.loads(fake_cloud.requests[-1].body)
        assert body["system"] == SYSTEM and body["tools"] == TOOLS  # the cloud's preamble, untouched
    finally:
        harness.stop()
