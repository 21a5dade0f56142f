"""Memory: token estimation, segmentation, truncation, the layers and the budget policy, caching."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import pytest

from trooper.memory import (
    MARKER_PREFIX,
    Budget,
    BudgetTooSmall,
    CalibratedEstimator,
    CallableEstimator,
    CompactionCache,
    ContentKind,
    classify,
    compact,
    is_prompt,
    message_text,
    segment,
    truncate_text,
    turn_fingerprint,
)
from trooper.memory.truncate import fit_turn, waterfill
from trooper.memory.turns import TurnIndex, content_text, prompt_starts

Message = dict[str, Any]
EST = CalibratedEstimator()


# ------------------------------------------------------------------------------------ builders


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def tool_call(tid: str, command: str, text: str = "Running it.") -> Message:
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": text},
            {"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": command}},
        ],
    }


def tool_result(tid: str, output: str, *, error: bool = False) -> Message:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid, "content": output}
    if error:
        block["is_error"] = True
    return {"role": "user", "content": [block]}


def conversation(middle: int = 30, *, filler: int = 20) -> list[Message]:
    """Anchor (2 turns), ``middle`` turns with one fact each, and a current prompt."""
    msgs: list[Message] = [
        user("We are building the inventory CLI. Never push to main; always run the tests first."),
        assistant("Understood: small changes, tests first, no pushes to main."),
        user("Use Python 3.12 and keep dependencies minimal."),
        assistant("Will do. I'll stick to the standard library where possible."),
    ]
    for i in range(middle):
        msgs.append(user(f"Turn {i + 3}: the replica inv-{i:03d}.eu-west-1.internal has {100 + i} GB left. " * 1))
        if i % 3 == 0:
            msgs.append(tool_call(f"toolu_{i:04d}", f"df -h /srv/data{i}"))
            msgs.append(tool_result(f"toolu_{i:04d}", f"/dev/sda{i} {100 + i}G used\nok"))
        msgs.append(assistant("Noted, that is plenty of room for now. " * filler))
    msgs.append(user("So what is the plan for the migration?"))
    return msgs


def texts(messages: Sequence[Message]) -> str:
    return "\n".join(message_text(m) for m in messages)


def assert_pairs_intact(messages: Sequence[Message]) -> None:
    """Every tool_use is answered in the next message and every tool_result answers the previous one."""
    for i, m in enumerate(messages):
        blocks = m["content"] if isinstance(m["content"], list) else []
        if m["role"] == "assistant":
            uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
            if uses and i + 1 < len(messages):
                nxt = messages[i + 1]
                got = {b["tool_use_id"] for b in nxt["content"] if b.get("type") == "tool_result"}
                assert nxt["role"] == "user" and got == uses, (i, uses, got)
        else:
            results = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
            if results:
                prev = messages[i - 1] if i else {"content": []}
                pcontent = prev["content"] if isinstance(prev["content"], list) else []
                ids = {b["id"] for b in pcontent if b.get("type") == "tool_use"}
                assert results <= ids, (i, results, ids)


# --------------------------------------------------------------------------------------- tokens


def test_classify_prose_code_json() -> None:
    assert classify("We should keep the deploy small and ship it on Friday after lunch.") is ContentKind.PROSE
    code = "def f(x):\n    return {k: v for k, v in x.items() if v != None}  # [a]\n" * 5
    assert classify(code) is ContentKind.CODE
    assert classify('{"name": "x", "items": [1, 2, 3], "ok": true, "nested": {"a": "b"}}') is ContentKind.JSON


def test_estimate_is_conservative_per_kind_and_counts_digits_and_non_ascii() -> None:
    prose = "the quick brown fox jumps over the lazy dog " * 20
    assert EST.count(prose) >= len(prose) / 3.5
    json_text = '{"key": "value", "n": "abc"}' * 20
    assert EST.count(json_text) >= len(json_text) / 2.4  # punctuation-dense JSON: about a token a run
    # Digits cost about a token each (local tokenizers split them), non-ASCII too.
    assert EST.count("1234567890" * 10) >= 100
    assert EST.count("日本語のテキスト" * 10) >= 80
    assert EST.count("") == 0


def test_json_strings_count_as_the_text_they_are() -> None:
    """A tool schema is mostly description strings: counted at JSON's punctuation rate it would seem to
    need about twice what a tokenizer counts; by its parts, it costs about what its prose does."""
    description = "Reads a file from the local filesystem and returns its lines with their numbers. " * 6
    schema = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": description},
            "offset": {"type": "integer", "description": description},
        },
        "required": ["file_path"],
    }
    text = json.dumps(schema, separators=(",", ":"))
    prose = EST.count(description) * 2
    assert prose < EST.count_json(schema) < prose * 1.25
    assert abs(EST.count(text) - EST.count_json(schema)) < 0.05 * EST.count_json(schema)  # as a text, alike
    assert EST.count_json(schema) < len(text) / 2.4  # well below the punctuation rate
    numbers = list(range(100_000, 100_050))
    # Each number costs its digits, each comma a token: a dense array stays conservative.
    assert EST.count_json(numbers) >= 50 * 7
    pretty = json.dumps({"items": [{"sku": "A-1", "qty": 3}] * 20}, indent=2)
    assert EST.count(pretty) >= 2 * pretty.count("\n")  # each line: its break, its punctuation


def test_message_counts_ignore_spelling_and_cache_control() -> None:
    as_str = {"role": "user", "content": "hello there"}
    as_block = {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    cached = {
        "role": "user",
        "content": [{"type": "text", "text": "hello there", "cache_control": {"type": "ephemeral"}}],
    }
    assert EST.count_message(as_str) == EST.count_message(as_block) == EST.count_message(cached)
    image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x" * 10}}]}
    assert EST.count_message(image) >= 1600
    assert EST.count_tools([{"name": "Bash", "input_schema": {"type": "object"}}]) > 0
    assert EST.count_system("You are helpful.") > EST.count_system(None) == 0


def test_calibration_moves_within_bounds_and_changes_the_key() -> None:
    est = CalibratedEstimator()
    key = est.key
    base = est.count("some prose " * 100)
    for _ in range(20):
        est.calibrate(1000, 1600)  # the real tokenizer counts more
    assert est.scale > 1.2 and est.key != key
    assert est.count("some prose " * 100) > base
    for _ in range(50):
        est.calibrate(1000, 10)  # absurdly low: clamped
    assert est.scale == pytest.approx(0.8)
    assert est.calibrate(10, 10_000) == est.scale  # tiny samples are ignored
    high = CalibratedEstimator()
    for _ in range(50):
        high.calibrate(100, 100_000)
    assert high.scale == pytest.approx(2.0)


def test_callable_estimator_plugs_an_exact_tokenizer() -> None:
    words = CallableEstimator(lambda text: len(text.split()), "words")
    assert words.count("a b c") == 3
    assert words.key == ("callable", "words")
    assert words.count_message(user("a b c")) > 3


# ------------------------------------------------------------------------------------ segmentation


def test_turns_start_at_prompts_and_keep_tool_loops() -> None:
    msgs = [
        user("first"),
        tool_call("t1", "ls"),
        tool_result("t1", "a"),
        assistant("done"),
        user("second"),
        assistant("ok"),
    ]
    turns = segment(msgs)
    assert [len(t.messages) for t in turns] == [4, 2]
    assert [t.number for t in turns] == [1, 2]
    assert all(t.has_prompt for t in turns)


def test_tool_result_followed_by_text_continues_the_turn() -> None:
    mixed = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}, {"type": "text", "text": "also"}],
    }
    assert not is_prompt(mixed)
    turns = segment([user("go"), tool_call("t1", "ls"), mixed, assistant("ok")])
    assert len(turns) == 1


def test_history_that_starts_mid_turn_has_a_promptless_first_turn() -> None:
    turns = segment([assistant("hello"), user("hi")])
    assert [t.has_prompt for t in turns] == [False, True]
    assert segment([]) == []


def test_fingerprint_normalises_spelling_and_cache_control_but_not_content() -> None:
    a = turn_fingerprint([user("hello  world")])
    b = turn_fingerprint([{"role": "user", "content": [{"type": "text", "text": "hello  world"}]}])
    c = turn_fingerprint(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello  world", "cache_control": {"type": "ephemeral"}}],
            }
        ]
    )
    assert a == b == c
    assert turn_fingerprint([user("hello world")]) != a  # whitespace matters: extracts depend on it
    with_cc = {"type": "tool_use", "id": "x", "name": "n", "input": {"cache_control": 1}}
    without = {"type": "tool_use", "id": "x", "name": "n", "input": {}}
    assert turn_fingerprint([{"role": "assistant", "content": [with_cc, with_cc]}]) != turn_fingerprint(
        [{"role": "assistant", "content": [without, without]}]
    )


def test_lazy_turn_index_matches_segment() -> None:
    msgs = conversation(10)
    index = TurnIndex(msgs, prompt_starts(msgs))
    assert list(index) == segment(msgs)
    assert index[-1] == segment(msgs)[-1]
    with pytest.raises(IndexError):
        index[len(index)]


# -------------------------------------------------------------------------------------- truncation


def test_truncate_text_keeps_head_and_tail_around_a_marker() -> None:
    text = "HEAD " + "filler words here " * 500 + " TAIL"
    cut = truncate_text(text, 100, EST)
    assert EST.count(cut) <= 100
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and MARKER_PREFIX in cut
    assert truncate_text("short", 100, EST) == "short"
    assert truncate_text("tiny", 1, EST) == "tiny"  # the marker would cost more than the text


def test_waterfill_keeps_small_items_whole() -> None:
    assert waterfill([10, 100, 100], 110) == [10, 50, 50]
    assert waterfill([5, 5], 100) == [5, 5]


def test_fit_turn_drops_old_exchanges_in_pairs_and_keeps_the_newest() -> None:
    msgs: list[Message] = [user("Investigate the outage. " * 5)]
    for i in range(10):
        msgs += [tool_call(f"t{i}", f"grep error /var/log/app{i}.log"), tool_result(f"t{i}", "line\n" * 80)]
    fitted, tokens, cut = fit_turn(msgs, 400, EST)
    assert cut and tokens <= 400
    assert fitted[0]["role"] == "user" and MARKER_PREFIX in message_text(fitted[0])
    assert "Investigate the outage" in message_text(fitted[0])
    assert "t9" in str(fitted[-1])  # the newest exchange is there
    assert_pairs_intact(fitted)


def test_fit_turn_truncates_an_oversized_newest_exchange() -> None:
    msgs = [user("read it"), tool_call("t1", "cat big.txt"), tool_result("t1", "data " * 5000)]
    fitted, tokens, cut = fit_turn(msgs, 300, EST)
    assert cut and tokens <= 300
    assert fitted[1]["content"][1]["id"] == "t1" and fitted[2]["content"][0]["tool_use_id"] == "t1"
    assert MARKER_PREFIX in message_text(fitted[2])


# -------------------------------------------------------------------------------------- compaction


def test_everything_fits_returns_the_messages_unchanged() -> None:
    msgs = conversation(3)
    result = compact(msgs, budget=Budget(100_000, 4096))
    assert result.messages == msgs and not result.compacted and result.sitrep is None
    assert result.layers["sitrep"] == 0
    assert result.layers["total"] == sum(EST.count_message(m) for m in msgs)
    assert result.num_ctx == 100_000


def test_layers_are_anchor_then_sitrep_then_tail() -> None:
    msgs = conversation(40)
    budget = Budget(2500, 500)
    result = compact(msgs, budget=budget, system="You are a careful assistant.", tools=[{"name": "Bash"}])
    assert result.compacted and result.sitrep is not None
    out = result.messages
    assert out[:4] == msgs[:4]  # Anchor verbatim
    assert content_text(out[4]["content"]).startswith("[SITREP: key lines of turns 3–")
    assert out[5]["role"] == "assistant"
    assert out[-1] == msgs[-1]  # the current prompt
    src = result.sources
    assert src["anchor"] == (1, 2)
    assert src["sitrep"] == tuple(range(3, src["tail"][0]))
    assert src["tail"][-1] == len(segment(msgs))
    total = sum(EST.count_message(m) for m in out) + result.layers["system"] + result.layers["tools"]
    assert total == result.layers["total"] <= budget.context_tokens - budget.reserved_output
    assert result.layers["total"] == sum(result.layers[k] for k in ("anchor", "sitrep", "tail", "system", "tools"))
    assert_pairs_intact(out)
    assert all(entry.turn in src["sitrep"] for entry in result.sitrep.entries)


def test_sitrep_keeps_exact_facts_the_tail_dropped() -> None:
    msgs = conversation(40)
    result = compact(msgs, budget=Budget(2500, 500))
    assert result.sitrep is not None
    summarised = result.sources["sitrep"]
    kept = [n for n in summarised if f"inv-{n - 3:03d}.eu-west-1.internal" in result.sitrep.text]
    assert len(kept) >= 6
    for entry in result.sitrep.entries:  # each entry is a span of the message it cites
        assert entry.text in message_text(msgs[entry.message])


def test_tail_keeps_the_current_and_two_previous_turns_and_a_quarter() -> None:
    msgs = conversation(40, filler=5)
    n = len(segment(msgs))
    for context in (1200, 2500, 6000):
        result = compact(msgs, budget=Budget(context, 0))
        assert result.sources["tail"][-3:] == (n - 2, n - 1, n)
        assert result.layers["tail"] >= 0.25 * context
        assert not result.truncated


def test_the_split_adapts_to_the_middle() -> None:
    msgs = conversation(40, filler=5)
    total = sum(EST.count_message(m) for m in msgs)
    small = compact(msgs, budget=Budget(total // 4, 0))  # a middle several times the space: summarised
    large = compact(msgs, budget=Budget(total * 3 // 4, 0))  # barely more than the space: mostly verbatim
    assert small.layers["sitrep"] > small.layers["tail"]
    assert large.layers["tail"] > large.layers["sitrep"] > 0
    assert len(large.sources["tail"]) > len(small.sources["tail"])


def test_tail_grows_in_place_and_the_sitrep_start_stays() -> None:
    """Between two moves of the Tail, requests keep its start and the SITREP's core, so a local server
    can reuse its prompt cache; a warm cache changes nothing about that."""
    msgs = conversation(60)
    budget = Budget(2500, 0)
    cache = CompactionCache()
    starts, cores = [], []
    history = msgs
    for step in range(8):
        result = compact(history, budget=budget, cache=cache)
        assert result == compact(history, budget=budget)
        assert result.sitrep is not None
        starts.append(result.sources["tail"][0])
        cores.append(result.sitrep.entries[: result.sitrep.core])
        history = [*history, assistant(f"Answer {step}: done."), user(f"Question {step}: next?")]
    assert len(set(starts)) < len(starts)  # the Tail stayed put at least once
    for a, b, core_a, core_b in zip(starts, starts[1:], cores, cores[1:], strict=False):
        if a == b:
            assert core_a == core_b


def test_a_squeezed_tail_cuts_only_messages_larger_than_their_share() -> None:
    msgs = conversation(20)[:-1]
    huge = assistant("A long explanation of every step. " * 600)
    msgs += [user("What did the migration do?"), huge, user("And the backup?"), assistant("It ran at 02:00.")]
    msgs.append(user("So what now?"))
    result = compact(msgs, budget=Budget(3000, 0))
    n = len(segment(msgs))
    assert result.sources["tail"] == (n - 2, n - 1, n)
    assert result.sources["truncated"] == (n - 2,)
    tail = result.messages[-5:]
    assert tail[0] == msgs[-5] and tail[2:] == msgs[-3:]  # small messages whole
    assert MARKER_PREFIX in message_text(tail[1])
    assert result.layers["total"] <= 3000


def test_anchor_and_current_overflow_are_truncated_with_markers() -> None:
    msgs = conversation(5)
    msgs[-1] = user("Please review this paste: " + "log line with details\n" * 2000)
    result = compact(msgs, budget=Budget(1000, 200))
    assert result.truncated and result.sources["truncated"] == (len(segment(msgs)),)
    assert result.sources["dropped"] == tuple(range(3, len(segment(msgs))))
    assert result.messages[:4] == msgs[:4]
    assert MARKER_PREFIX in message_text(result.messages[-1])
    assert message_text(result.messages[-1]).startswith("Please review this paste")
    assert result.layers["total"] <= 800


def test_anchor_keeps_its_share_when_the_current_turn_is_huge() -> None:
    msgs = [user("Context: " + "important background. " * 400), assistant("ok"), user("x " * 5000)]
    result = compact(msgs, budget=Budget(2000, 0, anchor_share=0.25))
    assert result.layers["anchor"] >= 0.2 * 2000
    assert result.layers["total"] <= 2000
    assert all(MARKER_PREFIX in message_text(m) for m in (result.messages[0], result.messages[-1]))


def test_budget_too_small_is_an_error() -> None:
    with pytest.raises(BudgetTooSmall):
        compact(conversation(5), budget=Budget(40, 0))
    with pytest.raises(BudgetTooSmall):
        compact(conversation(5), budget=Budget(1000, 999))
    with pytest.raises(ValueError, match="tail_share"):
        Budget(1000, 0, tail_share=1.5)
    with pytest.raises(ValueError, match="context_tokens"):
        Budget(-1)


def test_no_sitrep_when_there_is_no_room_for_one() -> None:
    msgs = conversation(10)
    a_and_c = sum(EST.count_message(m) for m in (*msgs[:4], msgs[-1]))
    result = compact(msgs, budget=Budget(a_and_c + 20, 0))
    assert result.sitrep is None and result.sources["dropped"] and not result.truncated
    assert result.layers["total"] <= a_and_c + 20


def test_the_tail_floor_takes_only_turns_that_fit_beside_the_anchor() -> None:
    """The Tail's floor is a share of the budget, but the Anchor comes first: a turn the floor would
    take (here an image, which cannot shrink) that does not fit beside the Anchor stays out of the Tail
    instead of making the request overflow."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    pictured: Message = {"role": "user", "content": [{"type": "text", "text": "deploy."}, image]}
    msgs = [pictured, assistant("deploy.")] * 3 + [user("deploy."), assistant("deploy.")] * 2
    msgs.append({"role": "user", "content": [{"type": "text", "text": "deploy."}]})
    budget = Budget(3689, 0, anchor_share=0.0, tail_share=0.25, tail_cap=0.5, slack_share=0.0)
    result = compact(msgs, budget=budget, estimator=EST)
    assert result.layers["total"] <= 3689
    assert result.messages[:4] == msgs[:4] and result.messages[-5:] == msgs[-5:]
    assert result.sources["tail"] == (4, 5, 6) and 3 not in result.sources["tail"]
    assert not result.truncated


# ------------------------------------------------------------------------------------------ caching


def test_cache_gives_identical_results_and_hits() -> None:
    msgs = conversation(60)
    budget = Budget(3000, 500)
    cache = CompactionCache()
    cold = compact(msgs, budget=budget)
    first = compact(msgs, budget=budget, cache=cache)
    misses = cache.stats().turn_misses
    again = compact(msgs, budget=budget, cache=cache)
    assert cold == first == again
    stats = cache.stats()
    assert stats.turn_misses <= misses + 1 and stats.prefix_hits >= 1
    longer = [*msgs, assistant("The plan: copy, verify, switch."), user("And the rollback?")]
    assert compact(longer, budget=budget, cache=cache) == compact(longer, budget=budget)


def test_incremental_turn_costs_only_new_extracts() -> None:
    msgs = conversation(80)
    budget = Budget(3000, 500)
    cache = CompactionCache()
    compact(msgs, budget=budget, cache=cache)
    before = cache.stats()
    longer = [*msgs, assistant("Here is the plan."), user("Go on.")]
    compact(longer, budget=budget, cache=cache)
    after = cache.stats()
    assert after.turn_misses - before.turn_misses <= 3  # the completed turn and the new prompt
    assert after.prefix_hits == before.prefix_hits + 1


def test_edited_history_rewinds_and_moved_cache_control_is_harmless() -> None:
    msgs = conversation(60)
    budget = Budget(3000, 500)
    cache = CompactionCache()
    compact(msgs, budget=budget, cache=cache)
    edited = copy.deepcopy(msgs)
    edited[10] = user("An edited message about db-99.acme.internal that changes the middle.")
    assert compact(edited, budget=budget, cache=cache) == compact(edited, budget=budget)
    marked = copy.deepcopy(msgs)
    marked[-1] = {
        "role": "user",
        "content": [{"type": "text", "text": marked[-1]["content"], "cache_control": {"type": "ephemeral"}}],
    }
    marked[20] = {
        "role": "user",
        "content": [{"type": "text", "text": marked[20]["content"], "cache_control": {"type": "ephemeral"}}],
    }
    assert compact(marked, budget=budget, cache=cache).messages == compact(marked, budget=budget).messages
    assert compact(msgs, budget=budget, cache=cache) == compact(msgs, budget=budget)


def test_calibration_change_recounts() -> None:
    msgs = conversation(40)
    est = CalibratedEstimator()
    cache = CompactionCache()
    budget = Budget(3000, 500)
    compact(msgs, budget=budget, estimator=est, cache=cache)
    for _ in range(10):
        est.calibrate(1000, 1500)
    warm = compact(msgs, budget=budget, estimator=est, cache=cache)
    assert warm == compact(msgs, budget=budget, estimator=est)
    assert warm.layers["total"] <= 2500


def test_extract_cache_is_bounded() -> None:
    cache = CompactionCache(maxsize=10, max_prefixes=2)
    for i in range(5):
        compact(conversation(8 + i), budget=Budget(1500, 0), cache=cache)
    assert len(cache) <= 10
    cache.clear()
    assert len(cache) == 0 and cache.stats().turn_hits == 0


def test_shorter_or_regenerated_history_after_a_long_one() -> None:
    msgs = conversation(30)
    budget = Budget(2500, 500)
    cache = CompactionCache()
    compact(msgs, budget=budget, cache=cache)
    for cut in (4, 6, 10, len(msgs) - 1):
        shorter = msgs[:-cut]
        if shorter and shorter[-1]["role"] == "user":
            assert compact(shorter, budget=budget, cache=cache) == compact(shorter, budget=budget)
    regenerated = [*msgs[:-2], assistant("A different answer."), user("And now?")]
    assert compact(regenerated, budget=budget, cache=cache) == compact(regenerated, budget=budget)
    assert compact(msgs, budget=budget, cache=cache) == compact(msgs, budget=budget)


def test_every_block_kind_has_a_count() -> None:
    def block(b: dict[str, Any]) -> int:
        return EST.count_message({"role": "user", "content": [b]})

    assert block({"type": "redacted_thinking", "data": "x" * 400}) > block({"type": "redacted_thinking", "data": ""})
    text_doc = {"type": "document", "title": "Notes", "source": {"type": "text", "data": "word " * 200}}
    assert block(text_doc) > 200
    nested = {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "a b c"}]}}
    assert block(nested) > 0
    assert block({"type": "document", "source": {"type": "base64", "data": "A" * 40_000}}) >= 7_500
    assert block({"type": "document", "source": {"type": "url", "url": "https://x.io/a.pdf"}}) > 0
    assert block({"type": "document"}) > 0
    assert block({"type": "search_result", "content": "x"}) > 0
    assert EST.count_message({"role": "user", "content": ["bare string block"]}) > 0
    assert EST.count_message({"role": "user", "content": {"odd": "shape"}}) > 0
    assert EST.count_message({"role": "user"}) == 4
