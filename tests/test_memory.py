"""Memory: token estimation, segmentation, the three layers, truncation, caching and the model option."""

from __future__ import annotations

import asyncio
import copy
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
    Section,
    SitrepWriter,
    SummaryRequest,
    classify,
    compact,
    extract_turn,
    is_prompt,
    message_text,
    segment,
    truncate_text,
    turn_fingerprint,
)
from trooper.memory.extract import find_entities, split_sentences
from trooper.memory.incremental import ConversationState
from trooper.memory.sitrep import build_sitrep
from trooper.memory.truncate import fit_turn, waterfill
from trooper.memory.turns import TurnIndex, prompt_starts

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
    assert EST.count(json_text) >= len(json_text) / 2.4
    # Digits cost about a token each (local tokenizers split them), non-ASCII too.
    assert EST.count("1234567890" * 10) >= 100
    assert EST.count("日本語のテキスト" * 10) >= 80
    assert EST.count("") == 0


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


# ------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("see https://grafana.acme.io/d/x7Kp2/latency.", "url", "https://grafana.acme.io/d/x7Kp2/latency"),
        ("mail m.delgado@acme.io today", "email", "m.delgado@acme.io"),
        ("host pg-7f3a.eu-west-1.internal:5432 is up", "host", "pg-7f3a.eu-west-1.internal:5432"),
        ("freeze on 2025-03-14 then", "date", "2025-03-14"),
        ("we meet March 3, 2025 at noon", "date", "March 3, 2025"),
        ("pin v2.14.3 now", "version", "v2.14.3"),
        ("ticket OPS-4412 filed", "ticket", "OPS-4412"),
        ("commit a3f9c1e broke it", "hash", "a3f9c1e"),
        ("edit src/app/main.py first", "path", "src/app/main.py"),
        ("the file /etc/app/limits.yaml.", "path", "/etc/app/limits.yaml"),
        ("p99 is 420 ms today", "quantity", "420 ms"),
        ("a cap of $1,200 monthly", "money", "$1,200"),
        ("Maria Delgado approved", "name", "Maria Delgado"),
        ("flag checkout_v2_rollout on", "ident", "checkout_v2_rollout"),
        ("run `make test` please", "code", "make test"),
        ("at 14:30 UTC sharp", "time", "14:30 UTC"),
    ],
)
def test_entities_are_found_as_exact_strings(text: str, kind: str, value: str) -> None:
    found = {(e.kind, e.text) for e in find_entities(text)}
    assert (kind, value) in found, found


def test_sentence_splitter_respects_abbreviations() -> None:
    parts = split_sentences("Use a cache, e.g. Redis. Then deploy it!\n- Bullet point here")
    assert parts == ["Use a cache, e.g. Redis.", "Then deploy it!", "Bullet point here"]


def test_extract_sections() -> None:
    turn = [
        user("Never run migrations on Friday. The database is db-7.acme.internal. How is it going?"),
        tool_call("t1", "pytest -x tests/"),
        tool_result("t1", "Traceback (most recent call last):\nAssertionError: boom", error=True),
        assistant("We decided to use Alembic instead of raw SQL. TODO: backfill the audit table."),
    ]
    ex = extract_turn(turn)
    by_section = {s: [c.text for c in ex.candidates if c.section == s] for s in Section}
    assert any("Never run migrations" in t for t in by_section[Section.GOALS])
    assert any("Alembic" in t for t in by_section[Section.DECISIONS])
    assert any("db-7.acme.internal" in t for t in by_section[Section.FACTS])
    assert any("ERROR" in t and "pytest -x tests/" in t for t in by_section[Section.TOOLS])
    assert any("backfill" in t for t in by_section[Section.OPEN])
    assert not any("How is it going" in t for texts_ in by_section.values() for t in texts_)
    assert "db-7.acme.internal" in ex.ekeys


def test_tool_output_odd_line_wins_over_routine_lines() -> None:
    log = "\n".join(f"2025-01-0{i}T10:00:00Z INFO req_{i}abc GET /api/x 200 {i}ms" for i in range(1, 9))
    log += "\nDeployed build v4.18.2 to production"
    ex = extract_turn([user("check the deploy"), tool_call("t1", "kubectl logs"), tool_result("t1", log)])
    facts = [c for c in ex.candidates if c.section == Section.FACTS]
    assert facts and "v4.18.2" in facts[0].text


# ---------------------------------------------------------------------------------------- sitrep


def _ranked(msgs: list[Message]) -> tuple[ConversationState, TurnIndex]:
    turns = TurnIndex(msgs, prompt_starts(msgs))
    state = ConversationState()
    state.sync(turns, len(turns), EST, None)
    state.rank(turns, len(turns), None)
    return state, turns


def test_sitrep_is_delimited_tagged_and_within_budget() -> None:
    msgs = conversation(20)
    state, _ = _ranked(msgs)
    sitrep = build_sitrep(state.ranked, 3, 22, 400, EST)
    assert sitrep is not None
    assert sitrep.text.startswith("[SITREP — summary of turns 3–22")
    assert sitrep.text.endswith("[end of SITREP]")
    assert sitrep.tokens <= 400
    assert sum(EST.count_message(m) for m in sitrep.messages()) == sitrep.tokens
    for entry in sitrep.entries:
        assert all(3 <= t <= 22 for t in entry.turns)
        assert f"[t{entry.turns[0]}" in sitrep.text
    assert "Facts:" in sitrep.text


def test_sitrep_merges_duplicates_and_skips_covered_facts() -> None:
    msgs = [user("setup"), assistant("ok"), user("x"), assistant("y")]
    for i in range(4):
        msgs += [user("Never deploy on Fridays. The box is web-1.acme.internal."), assistant(f"ok {i}")]
    msgs.append(user("now?"))
    state, _ = _ranked(msgs)
    sitrep = build_sitrep(state.ranked, 3, 6, 500, EST)
    assert sitrep is not None
    goals = [e for e in sitrep.entries if e.section == Section.GOALS]
    assert len(goals) == 1 and goals[0].turns == (3, 4, 5, 6)
    covered = build_sitrep(state.ranked, 3, 6, 500, EST, covered=frozenset({"web-1.acme.internal"}))
    assert covered is not None
    assert "web-1.acme.internal" not in [
        e for entry in covered.entries if entry.section == Section.FACTS for e in entry.entities
    ]


def test_sitrep_returns_none_when_not_even_the_frame_fits() -> None:
    state, _ = _ranked(conversation(5))
    assert build_sitrep(state.ranked, 3, 7, 10, EST) is None


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
    assert out[4]["content"][0]["text"].startswith("[SITREP — summary of turns 3–")
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
    for entry in result.sitrep.entries:
        assert all(t in src["sitrep"] for t in entry.turns)


def test_sitrep_keeps_exact_facts_the_tail_dropped() -> None:
    msgs = conversation(40)
    result = compact(msgs, budget=Budget(2500, 500))
    assert result.sitrep is not None
    summarised = result.sources["sitrep"]
    kept = [n for n in summarised if f"inv-{n - 3:03d}.eu-west-1.internal" in result.sitrep.text]
    assert len(kept) >= 6
    source = texts(msgs)
    for entry in result.sitrep.entries:  # entities are exact strings of the conversation
        assert all(e in source for e in entry.entities)


def test_sitrep_share_is_reserved_and_unused_room_goes_to_the_tail() -> None:
    msgs = conversation(40)
    usable = 3000
    result = compact(msgs, budget=Budget(usable, 0, sitrep_share=0.2))
    assert result.layers["sitrep"] <= usable - result.layers["anchor"] - result.layers["tail"]
    none = compact(msgs, budget=Budget(usable, 0, sitrep_share=0.0))
    assert len(none.sources["tail"]) >= len(result.sources["tail"])


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
    with pytest.raises(ValueError, match="sitrep_share"):
        Budget(1000, 0, sitrep_share=1.5)


def test_no_sitrep_when_there_is_no_room_for_one() -> None:
    msgs = conversation(10)
    a_and_c = sum(EST.count_message(m) for m in (*msgs[:4], msgs[-1]))
    result = compact(msgs, budget=Budget(a_and_c + 20, 0))
    assert result.sitrep is None and result.sources["dropped"] and not result.truncated
    assert result.layers["total"] <= a_and_c + 20


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


# ------------------------------------------------------------------------------------- ollama show


# ------------------------------------------------------------------------------- model-written SITREP


def test_model_written_sitrep_is_stored_and_used() -> None:
    msgs = conversation(40)
    budget = Budget(2500, 500)
    cache = CompactionCache()
    seen: list[SummaryRequest] = []

    def summarise(request: SummaryRequest) -> str:
        seen.append(request)
        assert "[t3]" in request.transcript and "{max_tokens}" not in request.prompt()
        return f"Goals:\n- never push to main [t1]\nFacts:\n- replicas summarised up to turn {request.last}"

    writer = SitrepWriter(summarise, cache=cache, max_chunk_tokens=100_000)
    before = compact(msgs, budget=budget, cache=cache)
    assert before.sitrep is not None and before.sitrep.kind == "extractive"
    summary = writer.refresh(msgs, budget=budget)
    assert summary is not None and summary.first == 3 and seen[0].previous is None
    assert writer.plan(msgs, budget=budget) is None  # up to date
    after = compact(msgs, budget=budget, cache=cache, summaries=writer.store)
    assert after.sitrep is not None and after.sitrep.kind in ("model", "mixed")
    assert "replicas summarised up to turn" in after.sitrep.text
    assert after.layers["total"] <= 2000
    # A longer history: the stored summary covers a prefix; extractive entries cover the rest.
    longer = [*msgs, assistant("ok"), *conversation(10)[4:]]
    mixed = compact(longer, budget=budget, cache=cache, summaries=writer.store)
    assert mixed.sitrep is not None and mixed.sitrep.model_turns == (3, summary.last)
    step = writer.plan(longer, budget=budget)
    assert step is not None and step.previous == summary.text and step.turns[0].number == summary.last + 1


def test_model_summariser_can_be_async_and_chunks_long_backlogs() -> None:
    msgs = conversation(40)
    budget = Budget(2500, 500)
    cache = CompactionCache()

    async def summarise(request: SummaryRequest) -> str:
        await asyncio.sleep(0)
        return f"summary of {request.first}-{request.last}"

    writer = SitrepWriter(summarise, cache=cache, max_chunk_tokens=300)
    first = asyncio.run(writer.arefresh(msgs, budget=budget))
    assert first is not None and first.last < 40
    second = asyncio.run(writer.arefresh(msgs, budget=budget))
    assert second is not None and second.last > first.last
    request = writer.plan(msgs, budget=budget)
    assert request is not None
    with pytest.raises(TypeError, match="asynchronous"):
        writer.run(request)


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
