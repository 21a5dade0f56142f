"""The SITREP: what is chosen (salience, redundancy), how it reads (dates, marks, spans), how it lays
out within a budget, and the model-written SITREP driven by a scripted summariser."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import attrs
import pytest

from trooper.memory import (
    Budget,
    CalibratedEstimator,
    CompactionCache,
    ModelSitrep,
    SummaryRequest,
    accept_summary,
    compact,
    extract_turn,
    plan_summary,
    segment,
)
from trooper.memory._dates import SessionDate
from trooper.memory.sitrep import (
    MORE,
    Candidate,
    Selection,
    SitrepEntry,
    UnitKind,
    layout,
    select,
    speaker_factor,
    term_weight,
    unit_factor,
    unit_line,
)
from trooper.memory.summariser import render_turns

Message = dict[str, Any]
EST = CalibratedEstimator()


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def candidates(*texts: str, date: SessionDate | None = None) -> list[Candidate]:
    """One candidate per unit of each text, as the SITREP's turns 3, 4, … (user messages)."""
    out = []
    for number, text in enumerate(texts, 3):
        for unit in extract_turn([user(text)]).units:
            out.append(Candidate(unit, number, 2 * number, date, unit_factor(unit, 1.0)))
    return out


def choose(cands: list[Candidate], budget: int, covered: set[str] | None = None) -> list[str]:
    df: dict[str, int] = {}
    for c in cands:
        for term in c.unit.terms:
            df[term] = df.get(term, 0) + 1
    costs = [EST.count(unit_line(c.unit)) + 1 for c in cands]
    chosen, needs = select(cands, costs, df=df, covered=covered or set(), budget=budget, estimator=EST)
    assert sum(needs) <= budget
    return [e.text for e in chosen]


# ------------------------------------------------------------------------------------ selection


def test_rare_specific_lines_beat_phatic_generic_and_repeated_ones() -> None:
    cands = candidates(
        "That sounds like a lot of fun!",
        "The weather was nice and the day was good.",
        "The weather was nice again.",
        "I moved the nightly export to Frankfurt after the Lisbon outage.",
    )
    assert choose(cands, 30) == ["I moved the nightly export to Frankfurt after the Lisbon outage."]


def test_a_line_adds_little_when_its_terms_are_covered() -> None:
    cands = candidates("Maria owns the checkout rollout.", "Maria owns the checkout rollout now.")
    assert len(choose(cands, 200)) == 1  # the second repeats the first
    covered = {"maria", "owns", "checkout", "rollout"}  # shown verbatim in the Anchor or the Tail
    assert choose(candidates("Maria owns the checkout rollout."), 200, covered) == []


def test_a_variant_that_only_changes_a_number_counts_less() -> None:
    cands = candidates(
        "The checkout tests cover 86% after the change.",
        "The checkout tests cover 91% after the change.",
        "The pricing job runs at 02:00 in Dublin.",
    )
    assert choose(cands, 1000)[-1] == "The checkout tests cover 91% after the change."


def test_factors_questions_first_person_and_verbosity() -> None:
    question = extract_turn([user("Did the Lisbon deploy finish?")]).units[0]
    statement = extract_turn([user("I finished the Lisbon deploy.")]).units[0]
    assert unit_factor(question, 1.0) < unit_factor(statement, 1.0)
    chars = {"user": (1000, 10), "assistant": (8000, 10)}
    assert speaker_factor("user", chars) == 1.0
    assert 0.3 <= speaker_factor("assistant", chars) < 1.0
    assert speaker_factor("assistant", {"assistant": (10, 1)}) == 1.0
    assert term_weight(1) > term_weight(50) > 0


def test_budget_and_dates_headings_are_paid_for() -> None:
    day = SessionDate(dt.date(2024, 1, 10), "10.01.2024")
    cands = candidates("We booked the Lisbon flights.", "Paola adopted a beagle called Miso.", date=day)
    assert choose(cands, 5) == []  # nothing fits
    assert len(choose(cands, 1000)) == 2


# ------------------------------------------------------------------------------------ rendering


def transcript_conversation() -> list[Message]:
    days = ["06.01.2024", "10.01.2024", "14.01.2024", "20.01.2024"]
    msgs: list[Message] = [user("[01.01.2024, 10:00:00] Kevin: Hi Paola!"), assistant("Paola: Hi Kevin!")]
    msgs += [user("Kevin: How was the holiday?"), assistant("Paola: Quiet, thanks.")]
    facts = [
        ("Kevin: Yesterday I played football with my team in Orlando.", "Paola: Oh, I really love tennis."),
        ("Kevin: I fixed the bike brakes myself.", "Paola: Tomorrow I have an exam in contract law."),
        ("Kevin: I am planning to visit Porto in March.", "Paola: We made macarons for my mom last Friday."),
        ("Kevin: Cool.", "Paola: Nice."),
    ]
    for day, (a, b) in zip(days, facts, strict=True):
        msgs += [user(f"[{day}, 20:00:00] {a}"), assistant(b)]
        for _ in range(12):
            msgs += [
                user("Kevin: The weather was nice and warm today."),
                assistant("Paola: It was a nice day here too."),
            ]
    msgs.append(user("Kevin: What did we talk about?"))
    return msgs


def test_the_sitrep_groups_lines_by_session_and_writes_relative_dates_out() -> None:
    msgs = transcript_conversation()
    result = compact(msgs, budget=Budget(sum(EST.count_message(m) for m in msgs) * 3 // 10, 0))
    assert result.sitrep is not None
    text = result.sitrep.text
    assert "06.01.2024 (Saturday 6 January 2024):" in text
    assert "- Kevin (Yesterday = Friday 5 January 2024): Yesterday I played football with my team in Orlando." in text
    assert "- Paola (Tomorrow = Thursday 11 January 2024): Tomorrow I have an exam in contract law." in text
    assert "- Paola (last Friday = Friday 12 January 2024): We made macarons for my mom last Friday." in text
    assert "- [done] Kevin: I fixed the bike brakes myself." in text
    assert "- [open] Kevin: I am planning to visit Porto in March." in text
    assert "Oh, I really" not in text and "- Paola: I love tennis." in text  # light compression
    assert text.index("06.01.2024") < text.index("10.01.2024") < text.index("14.01.2024")
    assert text.count("06.01.2024") == 1  # one heading per session, not a timestamp per line
    entry = next(e for e in result.sitrep.entries if "Porto" in e.text)
    assert entry.speaker == "Kevin" and entry.role == "user" and msgs[entry.message]["content"].endswith(entry.text)


def test_tool_calls_render_with_their_outcome_and_mark() -> None:
    msgs: list[Message] = [user("Fix the build."), assistant("On it."), user("Use the CI runner."), assistant("OK.")]
    for i, (out, err) in enumerate([("72 passed in 3.1s", False), ("E  ImportError: no module named yaml", True)]):
        use = {"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"command": f"pytest tests/unit_{i}"}}
        msgs += [user(f"Run suite {i}."), {"role": "assistant", "content": [use]}]
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": f"t{i}", "content": out, "is_error": err}
        msgs += [{"role": "user", "content": [result]}, assistant("Done." if not err else "It failed.")]
    for i in range(30):
        msgs += [user(f"Question {i} about the weather?"), assistant("It is sunny.")]
    msgs.append(user("What next?"))
    sitrep = compact(msgs, budget=Budget(sum(EST.count_message(m) for m in msgs) * 2 // 5, 0)).sitrep
    assert sitrep is not None
    assert "- [done] assistant ran Bash: pytest tests/unit_0 → 72 passed in 3.1s" in sitrep.text
    assert "- [failed] assistant ran Bash: pytest tests/unit_1 → E  ImportError: no module named yaml" in sitrep.text


def entry(turn: int, seq: int, text: str, *, message: int = 0) -> SitrepEntry:
    return SitrepEntry(turn=turn, message=message, kind=UnitKind.SAID, role="user", speaker="user", text=text, seq=seq)


def test_spans_of_one_message_share_a_line() -> None:
    chosen = (entry(3, 0, "A."), entry(3, 1, "B."), entry(3, 3, "D."), entry(4, 0, "E.", message=1))
    sitrep = layout(Selection(3, 4, chosen, (5, 5, 5, 5)), 1000, 1000, EST)
    assert sitrep is not None
    assert "\n- user: A. B. … D.\n- user: E.\n" in sitrep.text
    clause = attrs.evolve(entry(5, 1, "but it failed.", message=2), continues=True)
    assert clause.line == "- user: … but it failed."


def test_layout_keeps_its_core_while_the_budget_shrinks() -> None:
    chosen = tuple(entry(3 + i, 0, f"Fact number {i} about the Lisbon office.", message=i) for i in range(30))
    needs = tuple(EST.count(e.line) + 1 for e in chosen)
    selection = Selection(3, 40, chosen, needs)
    core = sum(needs[:20]) + 60
    wide = layout(selection, core, core + 400, EST)
    narrow = layout(selection, core, core + 50, EST)
    assert wide is not None and narrow is not None
    assert wide.core == narrow.core >= 18 and len(wide.entries) > len(narrow.entries)
    assert MORE in wide.text
    assert wide.text.split(MORE)[0] == narrow.text.split(MORE)[0]  # same core, same start
    assert layout(selection, 5, 5, EST) is None  # not even the frame fits


# -------------------------------------------------------------------------- model-written SITREP


def conversation(middle: int = 30) -> list[Message]:
    msgs: list[Message] = [user("We are migrating the inventory service."), assistant("Understood.")]
    msgs += [user("Keep the old API working."), assistant("Will do.")]
    for i in range(middle):
        msgs += [user(f"Replica inv-{i:03d}.eu-west-1.internal has {100 + i} GB left."), assistant("Noted. " * 30)]
    msgs.append(user("What is the plan?"))
    return msgs


def scripted(request: SummaryRequest) -> str:
    """Stands in for the local model: a summary that says which turns it saw."""
    assert "[t" in request.transcript and "{max_tokens}" not in request.prompt()
    return f"  Replicas of turns {request.first}-{request.last} are all healthy.  "


def test_the_model_sitrep_is_planned_accepted_and_used_with_extractive_entries_after_it() -> None:
    msgs = conversation()
    budget = Budget(1500, 0)
    before = compact(msgs, budget=budget, sitrep="model")
    assert before.sitrep is not None and before.sitrep.kind == "extractive"  # nothing stored yet
    request = plan_summary(msgs, before)
    assert request is not None and request.previous is None and request.first == 3
    summary = accept_summary(request, scripted(request))
    assert summary.text == f"Replicas of turns 3-{request.last} are all healthy."
    assert plan_summary(msgs, before, [summary]) is None  # up to date
    after = compact(msgs, budget=budget, sitrep="model", summaries=[summary])
    assert after.sitrep is not None and after.sitrep.kind in ("model", "mixed")
    assert summary.text in after.sitrep.text and after.sitrep.model_turns == (3, summary.last)
    assert after.layers["total"] <= 1500
    # More turns: the summary covers a prefix of the middle, extractive entries the rest.
    longer = [*msgs[:-1], *conversation(12)[4:]]
    mixed = compact(longer, budget=budget, sitrep="model", summaries=[summary])
    assert mixed.sitrep is not None and mixed.sitrep.kind == "mixed"
    assert all(e.turn > summary.last for e in mixed.sitrep.entries)
    step = plan_summary(longer, mixed, [summary])
    assert step is not None and step.previous == summary.text and step.covered == summary.last
    assert f"Previous SITREP (turns 3–{summary.last})" in step.prompt()


def test_modes_and_stale_or_oversized_summaries_fall_back_to_extractive() -> None:
    msgs = conversation()
    budget = Budget(1500, 0)
    base = compact(msgs, budget=budget)
    request = plan_summary(msgs, base)
    assert request is not None
    summary = accept_summary(request, scripted(request))
    assert compact(msgs, budget=budget, sitrep="extractive", summaries=[summary]) == base
    assert compact(msgs, budget=budget, sitrep="auto", summaries=[summary]).sitrep.kind != "extractive"  # type: ignore[union-attr]
    short = ModelSitrep(3, 4, "Only the first two middle turns.", summary.chain)
    assert compact(msgs, budget=budget, sitrep="auto", summaries=[short]) == base  # too little of the middle
    edited = copy.deepcopy(msgs)
    edited[6] = user("An edited turn changes the history the summary was written from.")
    stale = compact(edited, budget=budget, sitrep="model", summaries=[summary])
    assert stale == compact(edited, budget=budget)
    huge = ModelSitrep(3, summary.last, "word " * 5000, summary.chain)
    assert compact(msgs, budget=budget, sitrep="model", summaries=[huge]) == base


def test_a_long_backlog_is_summarised_in_chunks_and_a_long_answer_is_clipped() -> None:
    msgs = conversation(40)
    result = compact(msgs, budget=Budget(1500, 0))
    first = plan_summary(msgs, result, max_chunk_tokens=300)
    assert first is not None and first.last < result.sources["sitrep"][-1]
    done = accept_summary(first, "word " * 2000)
    assert EST.count(done.text) <= first.max_tokens
    second = plan_summary(msgs, result, [done], max_chunk_tokens=300)
    assert second is not None and second.covered == done.last and second.last > done.last
    with pytest.raises(TypeError):
        accept_summary(first, None)  # type: ignore[arg-type]
    assert plan_summary(msgs[:3], compact(msgs[:3], budget=Budget(10_000, 0))) is None  # nothing to cover


def test_summaries_and_requests_are_plain_data() -> None:
    msgs = conversation()
    request = plan_summary(msgs, compact(msgs, budget=Budget(1500, 0)))
    assert request is not None
    assert SummaryRequest.from_dict(request.to_dict()) == request
    summary = accept_summary(request, "All healthy.")
    assert ModelSitrep.from_dict(summary.to_dict()) == summary
    for bad in ({"first": 0, "last": 4, "text": "x", "chain": "ab"}, {"first": 3, "last": 4, "text": "x"}, {}):
        with pytest.raises(ValueError):
            ModelSitrep.from_dict(bad)
    with pytest.raises(ValueError):
        SummaryRequest.from_dict({"first": 3})
    assert render_turns(segment(msgs)[2:3]).startswith("[t3]\nuser: Replica inv-000")


def test_a_warm_cache_and_a_summary_together_change_nothing() -> None:
    msgs = conversation()
    budget = Budget(1500, 0)
    request = plan_summary(msgs, compact(msgs, budget=budget))
    assert request is not None
    summary = accept_summary(request, "All healthy.")
    cache = CompactionCache()
    for history in (msgs, [*msgs[:-1], *conversation(3)[4:]], msgs):
        warm = compact(history, budget=budget, cache=cache, sitrep="model", summaries=[summary])
        assert warm == compact(history, budget=budget, sitrep="model", summaries=[summary])
