"""Which conversation a request belongs to: explicit headers, Claude Code's ids, and the derived id.

Session identity scopes short lineages and the memory, so it must be predictable: an explicit header
wins and is checked (a malformed one is a 400 naming it), Claude Code's header and metadata are used
when well formed and skipped otherwise, and the derived id stays the same for every request of one
conversation — through new messages and through the ``<system-reminder>`` blocks a client changes
between requests — while telling apart conversations that start differently.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.identity import CLAUDE_CODE_HEADER, EXPLICIT_HEADERS, derived, from_metadata, session_id
from trooper.wire import LowerHeaders, TrooperError

PROPERTY = settings(max_examples=100, deadline=None)

UUID = "3f2b8c1e-9d4a-4b7e-8f00-1234567890ab"


def body(first: Any = "hello there", system: Any = "You are helpful.", **fields: Any) -> dict[str, Any]:
    return {"model": "claude-test", "system": system, "messages": [{"role": "user", "content": first}], **fields}


def reminder(text: str) -> dict[str, str]:
    return {"type": "text", "text": f"<system-reminder>{text}</system-reminder>"}


# ------------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize("name", EXPLICIT_HEADERS)
def test_an_explicit_header_wins(name: str) -> None:
    headers = [(name.upper(), "  my-session_1:a@b.c  "), (CLAUDE_CODE_HEADER, "cc-session")]
    metadata = {"metadata": {"user_id": orjson.dumps({"session_id": "meta"}).decode()}}
    assert session_id(headers, body(**metadata)) == ("my-session_1:a@b.c", name)


def test_the_first_explicit_header_wins_over_the_second() -> None:
    headers = {"X-Session-Id": "second", "X-Trooper-Session": "first"}
    assert session_id(headers, body()) == ("first", "x-trooper-session")
    assert session_id(LowerHeaders.of(headers), body()) == ("first", "x-trooper-session")


@pytest.mark.parametrize("value", ["", "   ", "has space", "semi;colon", "x" * 129, "ünïcode"])
@pytest.mark.parametrize("name", EXPLICIT_HEADERS)
def test_a_malformed_explicit_header_is_a_400_naming_it(name: str, value: str) -> None:
    with pytest.raises(TrooperError) as raised:
        session_id({name: value}, body())
    assert raised.value.status == 400
    assert name in raised.value.message


def test_the_longest_valid_id_is_accepted() -> None:
    assert session_id({"x-trooper-session": "x" * 128}, body()) == ("x" * 128, "x-trooper-session")


def test_claude_codes_header_is_used_when_well_formed_and_skipped_otherwise() -> None:
    assert session_id({CLAUDE_CODE_HEADER: f" {UUID} "}, body()) == (UUID, CLAUDE_CODE_HEADER)
    legacy = body(metadata={"user_id": f"user_abc_account_def_session_{UUID}"})
    assert session_id({CLAUDE_CODE_HEADER: "not valid!"}, legacy) == (UUID, "metadata.user_id")
    assert session_id({CLAUDE_CODE_HEADER: "not valid!"}, body()) == (derived(body()), "derived")


# ------------------------------------------------------------------------------------------ metadata


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"user_id": orjson.dumps({"device_id": "d", "session_id": UUID}).decode()}, UUID),
        ({"user_id": f"user_0123abcd_account__session_{UUID}"}, UUID),
        ({"user_id": "user_0123abcd_session_short-id"}, "short-id"),
        ({"user_id": orjson.dumps({"session_id": "bad id"}).decode()}, None),
        ({"user_id": orjson.dumps({"session_id": 12}).decode()}, None),
        ({"user_id": orjson.dumps({"device_id": "d"}).decode()}, None),
        ({"user_id": orjson.dumps(["session_id", UUID]).decode()}, None),
        ({"user_id": "{not json"}, None),
        ({"user_id": "user_0123abcd_account_no_session"}, None),
        ({"user_id": f"user_x_session_{UUID}_trailing words"}, None),
        ({"user_id": f"user_x_session_{'a' * 129}"}, None),
        ({"user_id": ""}, None),
        ({"user_id": 42}, None),
        ({}, None),
        ("not an object", None),
        (None, None),
    ],
)
def test_from_metadata(metadata: Any, expected: str | None) -> None:
    assert from_metadata({"metadata": metadata}) == expected
    assert session_id([], {**body(), "metadata": metadata}) == (
        (expected, "metadata.user_id") if expected else (derived(body()), "derived")
    )


# ------------------------------------------------------------------------------------------- derived


def test_a_derived_id_has_its_documented_shape() -> None:
    value = derived(body())
    assert value.startswith("sess_")
    assert len(value) == len("sess_") + 20
    assert session_id([], body()) == (value, "derived")


def test_a_derived_id_is_stable_through_the_conversation() -> None:
    opening = body()
    later = {
        **opening,
        "messages": [
            *opening["messages"],
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "another question"},
        ],
    }
    assert derived(later) == derived(opening)


@PROPERTY
@given(
    st.text(min_size=1).filter(lambda text: not text.lstrip().startswith("<system-reminder>")),
    st.lists(st.text(), max_size=3),
    st.lists(st.text(), max_size=3),
    st.sampled_from(["string", "list"]),
)
def test_a_derived_id_is_stable_under_reminder_blocks(
    prompt: str, before: list[str], after: list[str], system_form: str
) -> None:
    """Reminder blocks around the first prompt (they change between requests) do not change the id."""
    system: Any = "You are a coding agent." if system_form == "string" else [{"type": "text", "text": "You are"}]
    plain = body([{"type": "text", "text": prompt}], system)
    with_context = body(
        [
            *map(reminder, before),
            {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
            {"type": "text", "text": prompt},
            *map(reminder, after),
        ],
        system,
    )
    indented = body(
        [{"type": "text", "text": "  \n" + reminder("x")["text"]}, {"type": "text", "text": prompt}], system
    )
    assert derived(with_context) == derived(plain) == derived(indented)


def test_the_first_user_message_is_found_after_other_messages() -> None:
    opening = body()
    assert derived({**opening, "messages": [{"role": "system", "content": "note"}, *opening["messages"]]}) == derived(
        opening
    )
    assert derived({**opening, "messages": ["junk", *opening["messages"]]}) == derived(opening)


@pytest.mark.parametrize(
    "other",
    [
        body(first="a different opening"),
        body(system="Another system prompt."),
        body(system=None),
        body(first=[{"type": "text", "text": "a different opening"}]),
    ],
)
def test_different_openings_give_different_ids(other: dict[str, Any]) -> None:
    assert derived(other) != derived(body())


def test_system_prompt_and_first_text_are_kept_apart() -> None:
    assert derived(body(first="b", system="a")) != derived(body(first="", system="ab"))


def test_system_blocks_are_read_for_their_text() -> None:
    as_list = body(system=[{"type": "text", "text": "You are ", "cache_control": {"type": "ephemeral"}}, "junk"])
    assert derived(as_list) == derived(body(system="You are "))


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"messages": "not a list"},
        {"messages": [{"role": "assistant", "content": "prefill only"}]},
        body(first=None),
        body(first=[{"type": "image", "source": {"type": "base64", "data": "AAAA"}}]),
        body(first=[reminder("only context")]),
    ],
)
def test_requests_without_a_first_text_still_get_a_stable_id(request_body: dict[str, Any]) -> None:
    value = derived(request_body)
    assert value.startswith("sess_")
    assert derived(request_body) == value
    assert session_id([], request_body) == (value, "derived")


def test_requests_without_any_first_text_share_an_id() -> None:
    """With no system prompt and no first text there is nothing to tell conversations apart."""
    assert derived({}) == derived({"messages": "not a list"}) == derived(body(first=None, system=None))


def test_a_long_text_is_identified_by_its_length_head_and_tail() -> None:
    """The documented trade-off: long texts are hashed by length and edges, not whole."""
    head, tail = "h" * 3000, "t" * 3000
    one = body(first=head + "middle one" + tail)
    two = body(first=head + "middle two" + tail)
    assert derived(one) == derived(two)  # same length, head and tail
    assert derived(body(first=head + "middle three" + tail)) != derived(one)  # length differs
    assert derived(body(first="H" + head[1:] + "middle one" + tail)) != derived(one)  # head differs
    assert derived(body(first=head + "middle one" + tail[:-1] + "T")) != derived(one)  # tail differs
    long_system = "s" * 5000
    assert derived(body(system=long_system)) != derived(body(system=long_system + "s"))
