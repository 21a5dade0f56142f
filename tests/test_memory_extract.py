"""Memory: what a turn is made of for the SITREP — units, terms, speakers, dates, tool calls."""

from __future__ import annotations

import datetime as dt
from typing import Any

from trooper.memory import UnitKind, extract_turn
from trooper.memory._dates import SessionDate
from trooper.memory.extract import (
    CONTINUES,
    DECISION,
    DONE,
    FAILED,
    FIRST_PERSON,
    IDENT_BOOST,
    OPAQUE_BOOST,
    OPEN,
    PROPER_BOOST,
    QUESTION,
    compress,
    content_terms,
    split_sentences,
    visible_terms,
)

Message = dict[str, Any]


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def texts(messages: list[Message]) -> list[str]:
    return [u.text for u in extract_turn(messages).units]


# ------------------------------------------------------------------------------------ units


def test_units_are_sentences_of_their_message_attributed_to_its_role() -> None:
    extract = extract_turn([user("We moved the cluster to Frankfurt. Latency dropped to 40 ms."), assistant("Good.")])
    assert [(u.role, u.speaker, u.text) for u in extract.units] == [
        ("user", "user", "We moved the cluster to Frankfurt."),
        ("user", "user", "Latency dropped to 40 ms."),
    ]
    assert all(u.kind is UnitKind.SAID and u.message == 0 for u in extract.units)
    assert [u.seq for u in extract.units] == [0, 1]


def test_phatic_lines_and_code_make_no_units() -> None:
    assert texts([user("Hey! How are you?"), assistant("Thanks, sounds great!")]) == []
    fenced = "Here it is:\n```python\nrate_limit = compute_limit(client_id)\n```\nThe limit is now 300 per minute."
    assert texts([assistant(fenced)]) == ["The limit is now 300 per minute."]
    assert texts([assistant("const total = items.reduce((a, b) => a + b, 0);")]) == []
    assert texts([assistant("#### `models.py`\nJob Separation:\nThe cache holds 300 entries.")]) == [
        "The cache holds 300 entries."
    ]  # headings and labels are not statements


def test_long_sentences_are_cut_at_clause_boundaries() -> None:
    sentence = (
        "I spent most of last week rewriting the billing exporter for the finance team, "
        "but the nightly job still times out after forty minutes whenever the ledger has more than a "
        "million rows to reconcile."
    )
    extract = extract_turn([user(sentence)])
    units = [u.text for u in extract.units]
    assert len(units) == 2
    assert units[0].startswith("I spent most") and units[1].startswith("but the nightly job")
    assert [bool(u.flags & CONTINUES) for u in extract.units] == [False, True]
    run_on = " ".join(f"word{i}" for i in range(100))
    assert [len(t.split()) for t in texts([user(run_on)])] == [45, 45, 10]


def test_compression_drops_only_fillers_and_opening_interjections() -> None:
    assert compress("Oh, I really love this pasta.") == "I love this pasta."
    assert compress("Well, honestly it was quite a long day.") == "It was a long day."
    assert compress("I have just 2 hours left.") == "I have just 2 hours left."  # "just" = "only"
    assert compress("Absolutely!") == "Absolutely!"  # nothing would be left
    # A discourse marker goes only when punctuation sets it apart: otherwise it is part of what is said.
    assert compress("So far I've read a chapter.") == "So far I've read a chapter."
    assert compress("So, we moved to Berlin.") == "We moved to Berlin."
    assert compress("Well done on the exam!") == "Well done on the exam!"
    assert compress("**Task:** ship it") == "Task: ship it"
    assert texts([user("Haha, we actually went to Lisbon in May.")]) == ["We went to Lisbon in May."]


def test_sentence_splitter_respects_abbreviations_and_bullets() -> None:
    assert split_sentences("Use a queue, e.g. Kafka. Then retry.") == ["Use a queue, e.g. Kafka.", "Then retry."]
    assert split_sentences("- **first** item\n2. second item") == ["first item", "second item"]


def test_content_terms_keep_compounds_amounts_and_drop_stop_words_and_clitics() -> None:
    terms = content_terms("Paola's replica db-1.eu-west-1.internal costs $27,651 and 12 GB; don't ask, it's fine.")
    assert "paola" in terms and "db-1.eu-west-1.internal" in terms and "internal" in terms
    assert "$27,651" in terms and "12 gb" in terms
    assert not {"don", "it", "the", "and", "fine", "s"} & set(terms)
    assert content_terms("Thanks, that sounds great!") == []
    assert "86 %" in content_terms("the tests cover 86% of it")


def test_boosts_favour_names_and_identifiers_and_discount_opaque_ids_in_tool_output() -> None:
    said = extract_turn([user("Maria Delgado pinned ACME_EMBER_TIMEOUT to 30 seconds.")]).units[0]
    boost = dict(zip(said.terms, said.boosts, strict=True))
    assert boost["delgado"] == PROPER_BOOST and boost["acme_ember_timeout"] == IDENT_BOOST and boost["pinned"] == 1.0
    prose_hash = extract_turn([user("The regression came in with commit b24ae7136 yesterday.")]).units[0]
    assert dict(zip(prose_hash.terms, prose_hash.boosts, strict=True))["b24ae7136"] == 1.0  # a reference
    tool = [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "see https://x.io/req/9f3a2b7c41"}],
        },
    ]
    output = next(u for u in extract_turn(tool).units if u.kind is UnitKind.OUTPUT)
    assert OPAQUE_BOOST in output.boosts


def test_cues_mark_questions_first_person_decisions_and_work_done_or_open() -> None:
    flags = {
        u.text: u.flags
        for u in extract_turn(
            [
                user(
                    "Can you check the exporter? I fixed the retry loop. We still need to migrate the ledger. "
                    "Let's go with Postgres instead of Kafka."
                )
            ]
        ).units
    }
    assert flags["Can you check the exporter?"] & QUESTION
    assert flags["I fixed the retry loop."] & DONE and flags["I fixed the retry loop."] & FIRST_PERSON
    assert flags["We still need to migrate the ledger."] & OPEN
    assert flags["Let's go with Postgres instead of Kafka."] & DECISION
    clause = extract_turn(
        [
            user(
                "I am building a budget tracker in Flask with SQLite and Chart.js for the charts, "
                "and I want the first sprint to end on March 29, so can you help me plan it?"
            )
        ]
    ).units
    assert not clause[0].flags & QUESTION and clause[-1].flags & QUESTION  # only the asking clause


# ----------------------------------------------------------------------- transcripts and dates


def test_transcript_lines_name_their_speakers_and_start_sessions() -> None:
    log = (
        "[10.01.2024, 21:44:26] Paola: For my mom's birthday last Friday we made macarons.\n"
        "Kevin: Nice! I cooked lasagna a week ago.\n"
        "It was my first time.\n"
        "Paola: Did it turn out well?"
    )
    extract = extract_turn([user(log)])
    assert extract.dates == (SessionDate(dt.date(2024, 1, 10), "10.01.2024"),)
    assert extract.dates[0].heading() == "10.01.2024 (Wednesday 10 January 2024)"
    got = [(u.speaker, u.text, u.relative, u.dated) for u in extract.units]
    assert got == [
        ("Paola", "For my mom's birthday last Friday we made macarons.", "last Friday", 0),
        ("Kevin", "I cooked lasagna a week ago.", "a week ago", 0),
        ("Kevin", "It was my first time.", "", 0),
        ("Paola", "Did it turn out well?", "", 0),
    ]
    plain = extract_turn([user("Note: the deploy is at noon.\nEverything else is unchanged.")]).units
    assert [u.speaker for u in plain] == ["user", "user"]  # one labelled line is not a transcript


# ------------------------------------------------------------------------------------ tools


def tool_turn(output: str, *, error: bool = False, command: str = "pytest -q") -> list[Message]:
    result: Message = {"type": "tool_result", "tool_use_id": "t1", "content": output}
    if error:
        result["is_error"] = True
    return [
        user("Run the tests."),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": command}}],
        },
        {"role": "user", "content": [result]},
        assistant("They ran."),
    ]


def test_a_tool_call_is_its_key_argument_and_the_line_saying_how_it_went() -> None:
    ok = next(u for u in extract_turn(tool_turn("72 passed in 3.1s")).units if u.kind is UnitKind.TOOL)
    assert (ok.speaker, ok.text, ok.outcome) == ("assistant ran Bash", "pytest -q", "72 passed in 3.1s")
    assert ok.flags & DONE and ok.message == 1
    failed = next(
        u
        for u in extract_turn(tool_turn("collected 3\nE   ImportError: no module x\n", error=True)).units
        if u.kind is UnitKind.TOOL
    )
    assert failed.flags & FAILED and failed.outcome == "E   ImportError: no module x"
    log = "\n".join(f"2025-01-0{i}T10:00:00Z INFO req_{i}abc GET /api 200 {i}ms" for i in range(1, 6))
    routine = next(u for u in extract_turn(tool_turn(log, command="kubectl logs api")).units if u.kind is UnitKind.TOOL)
    assert routine.outcome == ""  # the first row of a log says nothing about how the call went
    pending = extract_turn([user("go"), tool_turn("x")[1]]).units
    assert [u.outcome for u in pending if u.kind is UnitKind.TOOL] == [""]


def test_tool_output_odd_line_wins_over_routine_lines() -> None:
    lines = [f"pod-{i} 1/1 Running 0 5m" for i in range(6)]
    lines.insert(3, "deploy ok: checkout build v2.4.1 promoted to production")
    outputs = [
        u
        for u in extract_turn(tool_turn("\n".join(lines), command="kubectl get pods")).units
        if u.kind is UnitKind.OUTPUT
    ]
    assert outputs[0].text == "deploy ok: checkout build v2.4.1 promoted to production"
    assert outputs[0].prior == 1.0 and all(u.speaker == "tool" for u in outputs)
    orphan = extract_turn(
        [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "see v1.2.3"}]}]
    )
    assert [u.text for u in orphan.units] == ["see v1.2.3"]


def test_visible_terms_cover_code_and_tool_output_and_df_counts_units() -> None:
    turn = [user("Check `settings.py`."), *tool_turn("DEBUG = False\nALLOWED_HOSTS = ['shop.acme.io']")[1:]]
    assert {"shop.acme.io", "debug", "allowed_hosts"} <= visible_terms(turn)
    extract = extract_turn([user("Redis is slow. Redis is down.")])
    assert dict(extract.df)["redis"] == 2
    assert extract.chars == (("user", 29, 1),)
