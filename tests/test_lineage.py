"""Provenance by position: the lineage keys of a conversation and how a request's messages are classified.

:func:`trooper.lineage.walk` is the first line of the privacy promise, so its rules are checked one by
one against a small in-memory ledger index (the :class:`~trooper.lineage.Provenance` protocol): an
assistant message is local by its position whatever the client re-sends there, and the chain goes on
from that position; a user message is local by its content at its position, whole or block by block;
a tool result is local by its call's id; client context (system messages, reminders, thinking) is no
part of any identity; short lineages are bound to their session. Keys must be stable across
processes, since the ledger outlives them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.lineage import (
    DISTINCT_PREFIX,
    MESSAGE,
    ROOT,
    Lineage,
    block_identity,
    context_items,
    context_key,
    key,
    message_identity,
    prompt_key,
    reply_key,
    scoped,
    seen_key,
    strong,
    text_identity,
    tool_key,
    tool_key_of,
    walk,
)
from trooper.text import blob_digest, identity

PROPERTY = settings(max_examples=100, deadline=None)
SESSION = "session-a"
MARKER = "::local"


@attrs.define
class Index:
    """What the ledger's index answers, as plain sets (a :class:`~trooper.lineage.Provenance`)."""

    replies: set[int] = attrs.Factory(set)
    prompts: set[int] = attrs.Factory(set)
    tools: set[str] = attrs.Factory(set)
    seen_keys: set[int] = attrs.Factory(set)
    seen_replies: set[int] = attrs.Factory(set)
    any_sightings: bool | None = None

    def local_reply(self, value: int, session: str) -> bool:
        return value in self.replies or scoped(value, session) in self.replies

    def local_prompt(self, value: int, session: str) -> bool:
        return value in self.prompts or scoped(value, session) in self.prompts

    def local_tool(self, tool_use_id: str) -> bool:
        return tool_use_id in self.tools

    def seen(self, value: int) -> bool:
        return value in self.seen_keys

    def seen_reply(self, value: int) -> bool:
        return value in self.seen_replies

    @property
    def sightings(self) -> bool:
        if self.any_sightings is not None:
            return self.any_sightings
        return bool(self.seen_keys or self.seen_replies)


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": blocks[0] if len(blocks) == 1 and isinstance(blocks[0], str) else list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": blocks[0] if len(blocks) == 1 and isinstance(blocks[0], str) else list(blocks),
    }


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def reminder(value: str) -> str:
    return f"<system-reminder>{value}</system-reminder>"


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
NOTE = {"role": "system", "content": "environment: linux"}


def lineage_of(messages: list[Any], index: Index | None = None, **options: Any) -> Lineage:
    return walk(messages, index or Index(), session=options.pop("session", SESSION), **options)


def classes(lineage: Lineage) -> list[tuple[int, str]]:
    return [(step.index, step.cls) for step in lineage.steps]


# ---------------------------------------------------------------------------------------------- keys


def test_keys_depend_on_every_part_and_its_order() -> None:
    assert key("a", "b") == key("a", "b")
    assert key("a", "b") != key("b", "a")
    assert key("ab") != key("a", "b")
    assert key(1) != key("1")
    assert key("trooper-lineage-v1") == ROOT


def test_the_kinds_of_key_never_meet() -> None:
    values = {
        reply_key(ROOT),
        prompt_key(ROOT, "x"),
        seen_key(ROOT, "x"),
        context_key(ROOT, "Y", "x"),
        tool_key("x"),
        scoped(ROOT, "s1"),
        scoped(ROOT, "s2"),
        ROOT,
    }
    assert len(values) == 8
    assert tool_key_of("toolu_1") == tool_key("toolu_1")


@PROPERTY
@given(st.lists(st.one_of(st.integers(0, 2**64 - 1), st.text()), max_size=6))
def test_keys_are_64_bit(parts: list[int | str]) -> None:
    assert 0 <= key(*parts) < 2**64


def test_keys_are_the_same_in_another_process() -> None:
    """The ledger outlives the process: keys cannot depend on hash randomisation or memo state."""
    program = (
        "from trooper.lineage import ROOT, key, prompt_key, reply_key, tool_key\n"
        "print(ROOT, reply_key(ROOT), prompt_key(ROOT, 'héllo'), tool_key('toolu_1'), key(7, 'x', 'é' * 100))\n"
    )
    here = f"{ROOT} {reply_key(ROOT)} {prompt_key(ROOT, 'héllo')} {tool_key('toolu_1')} {key(7, 'x', 'é' * 100)}"
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == here


def test_strong_lineages() -> None:
    assert not strong(DISTINCT_PREFIX - 1, False)
    assert strong(DISTINCT_PREFIX, False)
    assert strong(0, True)


# ---------------------------------------------------------------------------------------- identities


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("Hello  World", "helloworld"),
        (text("Hello \u201cWorld\u201d"), 'hello"world"'),
        (text(f"{reminder('ctx')} the words"), "thewords"),
        (text(reminder("only context")), None),
        (text(""), None),
        ("", None),
        ({"type": "thinking", "thinking": "hmm", "signature": "s"}, None),
        ({"type": "redacted_thinking", "data": "x"}, None),
        ({"no": "type"}, "\x00oNone"),
        (42, None),
        ({"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}, "\x00utoolu_1"),
        ({"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}, "\x00rtoolu_1"),
        (IMAGE, "\x00b" + blob_digest("base64", "iVBORw0KGgo=")),
        (
            {"type": "document", "title": "T", "source": {"type": "text", "data": "d"}},
            "\x00d" + blob_digest("T", str({"type": "text", "data": "d"})),
        ),
        ({"type": "container_upload", "file_id": "f"}, "\x00ocontainer_upload"),
    ],
)
def test_block_identity(block: Any, expected: str | None) -> None:
    assert block_identity(block) == expected


def test_message_identity_joins_text_and_keeps_other_blocks_apart() -> None:
    assert message_identity([text("one two"), text(" three")]) == ("onetwothree", 11)
    assert message_identity(["one", {"type": "thinking", "thinking": "x"}, "two"]) == ("onetwo", 6)
    separated, weight = message_identity([text("one"), IMAGE, text("two")])
    assert separated != message_identity([text("one"), text("two"), IMAGE])[0]
    assert weight == 6
    assert message_identity([IMAGE]) == (block_identity(IMAGE), 0)
    assert message_identity([]) == ("", 0)


_WORDS = st.lists(st.text(st.characters(categories=["L", "N", "P"]), min_size=1, max_size=8), min_size=1, max_size=12)


@PROPERTY
@given(_WORDS, st.lists(st.integers(min_value=0), max_size=4), st.sampled_from([" ", "\n", "\n\n  ", "\t"]))
def test_a_message_keeps_its_identity_when_its_text_is_split_or_rewrapped(
    words: list[str], cuts: list[int], gap: str
) -> None:
    original = " ".join(words)
    rewrapped = gap.join(words)
    points = sorted({cut % (len(rewrapped) + 1) for cut in cuts})
    pieces = [rewrapped[a:b] for a, b in zip([0, *points], [*points, len(rewrapped)], strict=True)]
    split = [text(piece) for piece in pieces]
    assert message_identity(split) == message_identity([text(original)]) == message_identity([original])
    assert text_identity(original) == identity(original)


# ---------------------------------------------------------------------------------------------- walk


CONVERSATION = [
    user("Where is the config for the staging cluster?"),
    assistant("It is in deploy/staging.yaml."),
    NOTE,
    user("And the production one?"),
    assistant("Sure,"),  # a prefill
]


def test_a_conversation_nobody_has_seen() -> None:
    lineage = lineage_of(CONVERSATION)
    assert classes(lineage) == [(0, "unseen"), (1, "unseen"), (3, "new"), (4, "new")]
    assert lineage.new_start == 3
    assert lineage.step(2) is None  # a system message is context, not a step
    assert lineage.step(3) is lineage.by_index()[3]
    assert lineage.first == lineage.steps[0].after
    assert lineage.end == lineage.steps[-1].after
    assert lineage.reply_before == lineage.steps[-1].before  # the reply continues the prefill
    assert not lineage.end_marked
    for earlier, later in zip(lineage.steps, lineage.steps[1:], strict=False):
        assert later.before == earlier.after
    assert lineage.steps[0].before == ROOT
    weights = [len(text_identity(m["content"])) for m in CONVERSATION if m["role"] != "system"]
    assert [step.weight for step in lineage.steps] == [sum(weights[: n + 1]) for n in range(len(weights))]
    assert lineage.end_weight == sum(weights)


def test_without_a_prefill_the_reply_stands_at_the_end() -> None:
    lineage = lineage_of(CONVERSATION[:4])
    assert lineage.reply_before == lineage.end


def test_a_request_without_a_user_message_is_all_history() -> None:
    lineage = lineage_of([assistant("a"), NOTE, assistant("b")])
    assert lineage.new_start == 3
    assert classes(lineage) == [(0, "unseen"), (2, "unseen")]
    assert lineage.reply_before == lineage.end


def test_an_empty_request() -> None:
    assert lineage_of([]) == Lineage((), ROOT, 0, False, 0, ROOT)


def test_the_lineage_never_depends_on_the_session() -> None:
    one, two = lineage_of(CONVERSATION, session="one"), lineage_of(CONVERSATION, session="two")
    assert [(s.before, s.after) for s in one.steps] == [(s.before, s.after) for s in two.steps]


# ------------------------------------------------------------------------------------ local replies


def _local_reply_at(messages: list[Any], position: int, *, session: str | None = None) -> Index:
    step = lineage_of(messages).step(position)
    assert step is not None
    value = reply_key(step.before)
    return Index(replies={scoped(value, session) if session else value})


@pytest.mark.parametrize(
    "resent",
    [
        assistant("It is in deploy/staging.yaml."),
        assistant("It is in"),  # an interrupted stream
        assistant("It\u2019s in deploy/staging.yaml \u2014 edited by the user."),
        assistant(text("It is in "), text("deploy/staging.yaml."), {"type": "thinking", "thinking": "x"}),
        assistant(text("totally different"), {"type": "tool_use", "id": "toolu_9", "name": "x", "input": {}}),
    ],
)
def test_a_local_reply_is_local_whatever_is_resent_at_its_place(resent: dict[str, Any]) -> None:
    index = _local_reply_at(CONVERSATION, 1)
    original = lineage_of(CONVERSATION, index)
    messages = [CONVERSATION[0], resent, *CONVERSATION[2:]]
    lineage = lineage_of(messages, index)
    step = lineage.steps[1]
    assert step.cls == "local" and step.fully_local
    assert step.local_blocks == frozenset(range(len(resent["content"]) if isinstance(resent["content"], list) else 1))
    # what follows the local reply is placed the same, whatever the reply now says
    assert [(s.before, s.after) for s in lineage.steps[2:]] == [(s.before, s.after) for s in original.steps[2:]]
    assert lineage.end == original.end


def test_a_short_lineage_is_local_only_in_its_own_session() -> None:
    index = _local_reply_at(CONVERSATION, 1, session="owner")
    assert lineage_of(CONVERSATION, index, session="owner").steps[1].cls == "local"
    assert lineage_of(CONVERSATION, index, session="stranger").steps[1].cls == "unseen"


def test_a_reply_at_another_position_is_not_local() -> None:
    index = _local_reply_at(CONVERSATION, 1)
    moved = [user("a different opening"), *CONVERSATION[1:]]
    assert lineage_of(moved, index).steps[1].cls == "unseen"


# ------------------------------------------------------------------------------------ local prompts


LOCAL_PROMPT = user(text("::local summarise the notes in"), text(" notes/q3-plan.md"))
LOCAL_TURN = [user("hi"), assistant("hello"), LOCAL_PROMPT]


def _local_prompt(messages: list[Any], position: int, *, whole: bool = True, blocks: bool = False) -> Index:
    """The keys a local turn records for the user message at ``position``."""
    step = lineage_of(messages).step(position)
    assert step is not None
    index = Index()
    if whole:
        index.prompts.add(prompt_key(step.before, MESSAGE + step.identity))
    if blocks:
        for block in messages[position]["content"]:
            part = block_identity(block)
            if part is not None:
                index.prompts.add(prompt_key(step.before, part))
    return index


def test_a_local_prompt_is_recognised_whole_also_when_its_blocks_change() -> None:
    index = _local_prompt(LOCAL_TURN, 2)
    merged = user(text("::local summarise the notes in notes/q3-plan.md"))
    later = [*LOCAL_TURN[:2], merged, assistant("The plan..."), user("thanks")]
    lineage = lineage_of(later, index, marker=MARKER)
    assert classes(lineage) == [(0, "unseen"), (1, "unseen"), (2, "local"), (3, "unseen"), (4, "new")]
    assert lineage.steps[2].marked and lineage.steps[4].marked and lineage.end_marked
    assert not lineage.steps[1].marked


def test_a_local_prompt_merged_with_the_next_one_is_local_block_by_block() -> None:
    """Claude Code after an interrupt: the local prompt comes back in one message with the next prompt."""
    index = _local_prompt(LOCAL_TURN, 2, whole=False, blocks=True)
    merged = user(*LOCAL_PROMPT["content"], text("and then push it"))
    lineage = lineage_of([*LOCAL_TURN[:2], merged], index, marker=MARKER)
    step = lineage.steps[2]
    assert step.local_blocks == {0, 1}
    assert step.cls == "new"  # not every block is local: the rest is for the egress guard
    assert step.marked


def test_the_marker_counts_only_on_a_local_prompt_and_only_with_a_marker() -> None:
    index = _local_prompt(LOCAL_TURN, 2)
    assert not lineage_of(LOCAL_TURN, index).end_marked  # no marker given
    assert not lineage_of(LOCAL_TURN, Index(), marker=MARKER).end_marked  # not local
    after_context = user(text(f"{reminder('date')}\n  ::local summarise the notes in"), text(" notes/q3-plan.md"))
    marked = [*LOCAL_TURN[:2], after_context]
    assert lineage_of(marked, index, marker=MARKER).end_marked  # reminders do not change the identity


def test_an_image_in_the_new_message_is_not_local_by_position() -> None:
    """Only text is recognised by position in the new message; an image there is new content."""
    with_image = [*LOCAL_TURN[:2], user(text("look at this"), IMAGE)]
    index = _local_prompt(with_image, 2, whole=False, blocks=True)
    assert lineage_of(with_image, index).steps[2].local_blocks == {0}
    history = [*with_image, assistant("I see"), user("next")]
    assert lineage_of(history, index).steps[2].local_blocks == {0, 1}
    assert lineage_of(history, index).steps[2].cls == "local"


def test_context_blocks_are_neither_counted_nor_local() -> None:
    index = _local_prompt(LOCAL_TURN, 2)
    with_context = user(text(reminder("today is monday")), *LOCAL_PROMPT["content"], text(""))
    lineage = lineage_of([*LOCAL_TURN[:2], with_context], index)
    step = lineage.steps[2]
    assert step.context_blocks == {0}
    assert step.local_blocks == {1, 2}
    assert step.cls == "local"
    only_context = lineage_of([*LOCAL_TURN[:2], user(text(reminder("x")))], index).steps[2]
    assert only_context.context_blocks == {0} and only_context.cls == "new" and not only_context.local_blocks


# --------------------------------------------------------------------------------------- local tools


TOOL_LOOP = [
    user("check the disk"),
    assistant(text("running"), {"type": "tool_use", "id": "toolu_local", "name": "bash", "input": {"c": "df"}}),
    user({"type": "tool_result", "tool_use_id": "toolu_local", "content": "/dev/sda1 91%"}),
]


def test_a_tool_result_is_local_by_its_calls_id_wherever_it_stands() -> None:
    index = Index(tools={"toolu_local"})
    lineage = lineage_of(TOOL_LOOP, index)
    assert lineage.steps[1].local_blocks == {1} and lineage.steps[1].cls == "unseen"
    assert lineage.steps[2].local_blocks == {0} and lineage.steps[2].cls == "local"
    elsewhere = [user("unrelated"), TOOL_LOOP[2]]
    assert lineage_of(elsewhere, index).steps[1].cls == "local"
    assert lineage_of(TOOL_LOOP, Index(tools={"toolu_other"})).steps[2].cls == "new"


# -------------------------------------------------------------------------------------------- seen


@attrs.define
class _Always(Index):
    """An index that says "seen" to every question (and nothing is local)."""

    def seen(self, value: int) -> bool:
        return True

    def seen_reply(self, value: int) -> bool:
        return True


def test_what_the_cloud_received_at_a_position_is_seen() -> None:
    plain = lineage_of(CONVERSATION)
    first, reply = plain.steps[0], plain.steps[1]
    index = Index(seen_keys={seen_key(first.before, first.identity)}, seen_replies={reply_key(reply.before)})
    assert classes(lineage_of(CONVERSATION, index)) == [(0, "seen"), (1, "seen"), (3, "new"), (4, "new")]
    by_content = Index(seen_keys={seen_key(reply.before, reply.identity)})
    assert lineage_of(CONVERSATION, by_content).steps[1].cls == "seen"


def test_nothing_is_seen_before_any_sighting_is_recorded() -> None:
    """With no sighting on record the walk does not ask: an index that would say "seen" is not heard."""
    never_sighted = _Always(any_sightings=False)
    assert classes(lineage_of(CONVERSATION, never_sighted)) == [(0, "unseen"), (1, "unseen"), (3, "new"), (4, "new")]
    assert classes(lineage_of(CONVERSATION, _Always(any_sightings=True))) == [
        (0, "seen"),
        (1, "seen"),
        (3, "new"),  # the request's new part is new, whatever the cloud saw
        (4, "new"),
    ]


# ------------------------------------------------------------------------------------ client context


_CONTEXT = st.sampled_from(
    [
        ("system", NOTE),
        ("system", {"role": "system", "content": [text("another note"), IMAGE]}),
        ("reminder", reminder("the date changed")),
        ("reminder", f"  {reminder('files changed')}\n"),
        ("thinking", {"type": "thinking", "thinking": "let me think", "signature": "sig"}),
    ]
)


def _with_context(messages: list[Any], additions: list[tuple[int, tuple[str, Any]]]) -> list[Any]:
    out = [dict(message, content=list(message["content"])) for message in messages]
    for where, (kind, item) in additions:
        if kind == "system":
            out.insert(where % (len(out) + 1), item)
            continue
        turns = [m for m in out if m["role"] != "system"]
        target = turns[where % len(turns)]
        if kind == "reminder" and target["role"] == "user":
            target["content"].insert(where % (len(target["content"]) + 1), text(item))
        elif kind == "thinking" and target["role"] == "assistant":
            target["content"].insert(0, item)
    return out


BASE = [
    user(text("Where is the config for the staging cluster?")),
    assistant(text("It is in deploy/staging.yaml.")),
    user(text("And the production one?")),
]


@PROPERTY
@given(st.lists(st.tuples(st.integers(min_value=0), _CONTEXT), max_size=6))
def test_client_context_is_no_part_of_any_identity(additions: list[tuple[int, tuple[str, Any]]]) -> None:
    """System messages, reminders and thinking blocks come and go: the lineage keys do not move."""
    plain = lineage_of(BASE)
    noisy = lineage_of(_with_context(BASE, additions))
    assert [(s.role, s.before, s.after, s.identity, s.weight) for s in noisy.steps] == [
        (s.role, s.before, s.after, s.identity, s.weight) for s in plain.steps
    ]
    assert (noisy.end, noisy.end_weight, noisy.first) == (plain.end, plain.end_weight, plain.first)


def test_context_items_anchor_each_piece_of_context() -> None:
    messages = [
        NOTE,
        user(text("first prompt"), text(reminder("r1") + " and " + reminder("r2")), IMAGE),
        {"role": "system", "content": [text("note two"), text("  "), IMAGE]},
        assistant(text("answer"), {"type": "tool_use", "id": "t", "name": "n", "input": {}}),
        user("last"),
    ]
    body = {"system": [text("You are helpful."), text("   "), "junk", text("Be brief.")]}
    lineage = lineage_of(messages)
    first = lineage.step(1)
    assert first is not None
    assert list(context_items(body, messages, lineage)) == [
        ("system.0", lineage.first, "Y", "You are helpful."),
        ("system.3", lineage.first, "Y", "Be brief."),
        ("messages.0.content.0", ROOT, "S", "environment: linux"),
        ("messages.1.content.1", first.after, "M", reminder("r1")),
        ("messages.1.content.1", first.after, "M", reminder("r2")),
        ("messages.2.content.0", first.after, "S", "note two"),
    ]


def test_context_items_of_a_system_string() -> None:
    lineage = lineage_of(BASE)
    assert list(context_items({"system": "Be brief."}, BASE, lineage)) == [("system", lineage.first, "Y", "Be brief.")]
    assert list(context_items({"system": "  "}, BASE, lineage)) == []
    assert list(context_items({}, BASE, lineage)) == []
    string_reminder = [{"role": "user", "content": [f"hi {reminder('r')}"]}]  # a bare string block
    one = lineage_of(string_reminder)
    assert list(context_items({}, string_reminder, one)) == [("messages.0.content.0", one.end, "M", reminder("r"))]


def test_the_same_context_in_another_conversation_has_another_anchor() -> None:
    other = [user(text("An unrelated question")), *BASE[1:]]
    system = {"system": "You are helpful."}
    ours = list(context_items(system, BASE, lineage_of(BASE)))
    theirs = list(context_items(system, other, lineage_of(other)))
    assert [item[2:] for item in ours] == [item[2:] for item in theirs]
    assert ours[0][1] != theirs[0][1]
