"""The text primitives every content comparison rests on: folding, client context, and block content.

Provenance, the span index and the egress guard all compare text through :func:`trooper.text.fold`
and read blocks through :func:`~trooper.text.block_texts` / :func:`~trooper.text.block_blobs`; a gap
here is a way for local content to reach the cloud unrecognised. The tests check what the module
promises: the normal form (NFKC, case folding, typographic variants, invisible characters,
whitespace), ``<system-reminder>`` segments as client context, tool-call JSON read as the text it
means (also when it is cut anywhere, as a streamed tool call is), and binary content recognised by
its bytes alone.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trooper.text import (
    REMINDER_CLOSE,
    REMINDER_OPEN,
    after_leading_reminders,
    blob_digest,
    block_blobs,
    block_texts,
    context_only,
    decoded_strings,
    fold,
    fold_uncached,
    identity,
    partial_json_strings,
    reminders,
    strip_reminders,
)

PROPERTY = settings(max_examples=100, deadline=None)

#: Characters that render as nothing: zero-width space / joiners, soft hyphen, BOM, word joiner,
#: bidi marks and isolates, a variation selector, the combining grapheme joiner, a tag character.
INVISIBLE = "\u200b\u200c\u200d\u00ad\ufeff\u2060\u200e\u202e\u2066\ufe0f\u034f\U000e0041"


def reminder(body: str) -> str:
    return f"{REMINDER_OPEN}{body}{REMINDER_CLOSE}"


# ---------------------------------------------------------------------------------------------- fold


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Hello   World", "hello world"),
        ("  leading and trailing \n", "leading and trailing"),
        ("tabs\tand\nnewlines\r\nfold", "tabs and newlines fold"),
        ("no\u00a0break\u2003em\u3000ideographic", "no break em ideographic"),
        ("line\u2028separator", "line separator"),
        ("ＦＵＬＬ－ｗｉｄｔｈ １２３", "full-width 123"),  # NFKC
        ("ﬁle ﬂow", "file flow"),  # ligatures, NFKC
        ("Straße GROSS", "strasse gross"),  # case folding, not just lowering
        ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),  # final sigma folds like any sigma
        ("\u201cquoted\u201d and \u2018single\u2019", "\"quoted\" and 'single'"),
        ("\u00abguillemets\u00bb \u201elow\u201f", '"guillemets" "low"'),
        ("en\u2013dash em\u2014dash minus\u2212sign \u2010hy\u2011phen", "en-dash em-dash minus-sign -hy-phen"),
        ("don\u02bct it\u2019s", "don't it's"),
        ("pa\u200bss\u200cwo\u200drd", "password"),
        ("soft\u00adhyphen \ufeffbom \u2060joiner", "softhyphen bom joiner"),
        ("bidi\u202eoverride\u202c \u2066isolate\u2069", "bidioverride isolate"),
        ("tag\U000e0041\U000e007fged", "tagged"),
        ("emoji\ufe0f variation", "emoji variation"),
        ("caf\u0065\u0301 = caf\u00e9", "café = café"),  # composed either way
        ("", ""),
    ],
)
def test_fold_normal_form(text: str, folded: str) -> None:
    assert fold(text) == folded
    assert fold_uncached(text) == folded


@pytest.mark.parametrize(("variant", "ascii"), [("\u00b4", "'"), ("\u2033", '"')])
def test_fold_maps_every_typographic_variant_to_ascii(variant: str, ascii: str) -> None:
    # NFKC alone would make "it´s" "it \u0301s" (a space and a combining acute) and "″" "''".
    assert fold(f"it{variant}s") == f"it{ascii}s"


def test_an_invisible_character_cannot_split_a_letter_from_its_accent() -> None:
    # "e", ZERO WIDTH SPACE, COMBINING ACUTE: removed after NFKC, the space would leave "e\u0301"
    # decomposed while "é" folds to "\u00e9" — two texts a reader sees as one would differ.
    sneaky = "caf\u0065\u200b\u0301"
    assert fold(sneaky) == fold("caf\u00e9")
    assert fold(fold(sneaky)) == fold(sneaky)


@PROPERTY
@given(st.text(st.characters(codec="ascii")), st.lists(st.tuples(st.integers(0), st.sampled_from(INVISIBLE))))
def test_invisible_characters_do_not_change_ascii_text(text: str, insertions: list[tuple[int, str]]) -> None:
    """The ASCII fast path and the Unicode path agree: sprinkling invisibles into ASCII text changes nothing."""
    sprinkled = text
    for position, character in insertions:
        at = position % (len(sprinkled) + 1)
        sprinkled = sprinkled[:at] + character + sprinkled[at:]
    assert fold_uncached(sprinkled) == fold_uncached(text) == " ".join(text.lower().split())


@PROPERTY
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_fold_is_idempotent(text: str) -> None:
    once = fold_uncached(text)
    assert fold_uncached(once) == once
    assert fold(once) == once


@PROPERTY
@given(st.text())
def test_fold_output_has_single_spaces_and_no_edges(text: str) -> None:
    folded = fold_uncached(text)
    assert folded == folded.strip()
    assert "  " not in folded
    assert not any(character.isspace() and character != " " for character in folded)


@PROPERTY
@given(st.lists(st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1), min_size=1))
def test_identity_ignores_wrapping(words: list[str]) -> None:
    """Re-wrapping, re-indenting or re-joining the same words keeps the identity."""
    assert identity(" ".join(words)) == identity("\n    ".join(words)) == identity("".join(words))
    assert " " not in identity(" ".join(words))


def test_identity_is_fold_without_spaces() -> None:
    assert identity("  The  “Plan”\n\tfor\u200b Q3 ") == 'the"plan"forq3'
    assert identity("two words") != identity("two sords")


def test_fold_is_memoised_but_equal_to_uncached() -> None:
    text = "Some Re-sent HISTORY text " * 10
    assert fold(text) is fold(text)
    assert fold(text) == fold_uncached(text)


# ------------------------------------------------------------------------------------ client context


def test_reminders_are_found_and_stripped_in_order() -> None:
    text = f"before {reminder('one')} middle {reminder('two')} after"
    assert reminders(text) == [reminder("one"), reminder("two")]
    assert fold(strip_reminders(text)) == "before middle after"


def test_an_unclosed_reminder_runs_to_the_end() -> None:
    text = f"prompt {REMINDER_OPEN}context never closed\nstill context"
    assert reminders(text) == [f"{REMINDER_OPEN}context never closed\nstill context"]
    assert strip_reminders(text).strip() == "prompt"


def test_text_without_reminders_is_returned_as_it_is() -> None:
    text = "plain prompt about </system-reminder> tags"
    assert strip_reminders(text) is text
    assert reminders(text) == []
    assert after_leading_reminders(text) == ("", text)


def test_leading_reminders_are_separated_from_the_prompt() -> None:
    lead = f"  {reminder('a')}\n{reminder('b')}\n\n"
    assert after_leading_reminders(lead + "::local what now?") == (lead, "::local what now?")


def test_a_reminder_after_the_prompt_is_not_leading() -> None:
    text = f"the prompt {reminder('context')}"
    assert after_leading_reminders(text) == ("", text)


def test_only_reminders_leaves_an_empty_prompt() -> None:
    text = f"{reminder('a')}{REMINDER_OPEN}unclosed"
    assert after_leading_reminders(text) == (text, "")


_SEGMENTS = st.lists(
    st.one_of(
        st.text(st.sampled_from("ab <>/\n")),
        st.text(st.sampled_from("xy \n")).map(reminder),
        st.just(REMINDER_OPEN),
        st.just(REMINDER_CLOSE),
    ),
    max_size=6,
).map("".join)


@PROPERTY
@given(_SEGMENTS)
def test_reminder_helpers_agree(text: str) -> None:
    lead, rest = after_leading_reminders(text)
    assert lead + rest == text
    assert all(segment.startswith(REMINDER_OPEN) for segment in reminders(text))
    assert REMINDER_OPEN not in strip_reminders(text)
    if lead:
        assert lead.lstrip().startswith(REMINDER_OPEN)
        assert not rest.startswith((" ", "\n"))
        assert not rest.startswith(REMINDER_OPEN)


# ----------------------------------------------------------------------------------- decoded strings


def test_decoded_strings_are_the_string_and_number_leaves_in_order() -> None:
    value = {"command": "ls -la\ncat /etc/hosts", "n": [1, 2.5, True, None, {"deep": "x"}], "flag": False}
    assert list(decoded_strings(value)) == ["ls -la\ncat /etc/hosts", "1", "2.5", "x"]
    assert list(decoded_strings(None)) == []
    assert list(decoded_strings(object())) == []


def test_a_tool_call_is_read_as_the_script_it_carries() -> None:
    """A script written with ``\\n`` escapes is matched as the script, not as "nhost"."""
    block = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "cd /srv\nhost -t a x.io"}}
    assert list(block_texts(block)) == ["cd /srv\nhost -t a x.io"]
    assert "cd /srv host" in fold(next(block_texts(block)))


# ------------------------------------------------------------------------------ partial JSON strings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"command": "ls -la", "timeout": 30}', ["ls -la", "30"]),
        ('{"a": "x", "n": -12.5e3, "t": true, "f": false, "z": null}', ["x", "-12.5e3"]),
        ('["one", ["two", {"k": "three"}]]', ["one", "two", "three"]),
        ('{"text": "line\\none \\"quoted\\" \\u00e9"}', ['line\none "quoted" é']),
        ('{"empty": "", "x": "y"}', ["y"]),
        # cut anywhere: what arrived counts, keys do not
        ('{"comm', ["comm"]),  # an unfinished string is counted (it may be a value)
        ('{"command"', ["command"]),
        ('{"command": ', []),
        ('{"command": "echo hel', ["echo hel"]),
        ('{"command": "a\\', ["a"]),  # cut after a backslash
        ('{"command": "a\\u00', ["a"]),  # cut inside a \\u escape
        ('{"command": "a\\u00e9', ["aé"]),
        ('{"n": 12', ["12"]),
        ('{"n": 12.', ["12"]),
        ('{"n": tru', []),
        ('{"a": "\\q"}', ["\\q"]),  # an invalid escape is kept as written
        ("", []),
    ],
)
def test_partial_json_strings_examples(text: str, expected: list[str]) -> None:
    assert partial_json_strings(text) == expected


_KEYS = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
_LEAVES = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"])),
    st.integers(-(10**15), 10**15),
    st.booleans(),
    st.none(),
)
_LISTS = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=4), max_leaves=10)
_DOCUMENTS = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=10,
)
#: How a tool call's JSON may be written: compact with raw UTF-8, ASCII-only escapes, indented.
_ENCODINGS = st.sampled_from(
    [lambda v: orjson.dumps(v).decode(), json.dumps, lambda v: json.dumps(v, indent=2, ensure_ascii=False)]
)


def _leaves(value: Any) -> list[str]:
    return [item for item in decoded_strings(value) if item]


@PROPERTY
@given(_DOCUMENTS, _ENCODINGS)
def test_a_whole_document_gives_its_leaves(value: Any, encode: Any) -> None:
    assert partial_json_strings(encode(value)) == _leaves(value)


@PROPERTY
@given(_DOCUMENTS, _ENCODINGS)
def test_every_prefix_keeps_what_came_before_the_cut(value: Any, encode: Any) -> None:
    """Cut anywhere, no error; every leaf before the one that was cut is decoded exactly."""
    text = encode(value)
    whole = _leaves(value)
    for end in range(len(text) + 1):
        found = partial_json_strings(text[:end])
        assert all(isinstance(item, str) and item for item in found)
        assert found[:-1] == whole[: max(len(found) - 1, 0)]


@PROPERTY
@given(_LISTS)
def test_the_leaf_being_cut_counts_up_to_the_cut(value: Any) -> None:
    """Without object keys (which an unfinished string could be), the last leaf is a prefix of its whole."""
    text = orjson.dumps(value).decode()
    whole = _leaves(value)
    for end in range(len(text) + 1):
        found = partial_json_strings(text[:end])
        assert len(found) <= len(whole)
        if found:
            assert whole[len(found) - 1].startswith(found[-1])


def test_a_cut_between_surrogate_escapes_counts_up_to_the_cut() -> None:
    # json.dumps writes a non-BMP character as a surrogate pair of \\u escapes: a cut between them
    # leaves a lone high surrogate, which is dropped like any unfinished escape.
    text = json.dumps({"text": "line one\nthen \U0001f600"})
    cut = text[: text.index("\\ude00")]
    assert partial_json_strings(cut) == ["line one\nthen "]


# -------------------------------------------------------------------------------------- block texts


@pytest.mark.parametrize(
    ("block", "texts"),
    [
        ("a bare string", ["a bare string"]),
        ({"type": "text", "text": "hello"}, ["hello"]),
        ({"type": "text"}, [""]),
        ({"type": "thinking", "thinking": "hmm", "signature": "sig"}, ["hmm"]),
        ({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": "q"}}, ["q"]),
        ({"type": "tool_use", "id": "t", "name": "n"}, [""]),
        ({"type": "tool_result", "tool_use_id": "t", "content": "output"}, ["output"]),
        (
            {
                "type": "tool_result",
                "tool_use_id": "t",
                "content": [
                    {"type": "text", "text": "first"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                    {"type": "text", "text": "second"},
                ],
            },
            ["first", "second"],
        ),
        ({"type": "tool_result", "tool_use_id": "t"}, []),
        (
            {"type": "search_result", "title": "Title", "source": "u", "content": [{"type": "text", "text": "c"}]},
            ["Title", "c"],
        ),
        (
            {"type": "document", "title": "T", "context": "C", "source": {"type": "text", "data": "body"}},
            ["T", "C", "body"],
        ),
        ({"type": "document", "source": {"type": "content", "content": "inline"}}, ["", "", "inline"]),
        (
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "part"}]}},
            ["", "", "part"],
        ),
        ({"type": "document", "source": {"type": "content"}}, ["", ""]),
        ({"type": "document", "source": {"type": "base64", "data": "JVBERi0="}}, ["", ""]),
        ({"type": "document", "source": "not a mapping"}, ["", ""]),
        ({"type": "image", "source": {"type": "base64", "data": "AAAA"}}, []),
        ({"type": "redacted_thinking", "data": "opaque"}, []),
        (
            {"type": "future_block", "note": "read me", "nested": {"list": ["x", 1]}, "cache_control": {"k": "v"}},
            ["read me\nx\n1"],
        ),
        (42, []),
        (None, []),
    ],
)
def test_block_texts(block: Any, texts: list[str]) -> None:
    assert list(block_texts(block)) == texts


# -------------------------------------------------------------------------------------- block blobs


def _image(source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "image", "source": source, **extra}


def test_equal_bytes_give_equal_digests_whatever_else_the_block_says() -> None:
    plain = list(block_blobs(_image({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})))
    rewrapped = list(
        block_blobs(
            _image(
                {"type": "base64", "media_type": "image/jpeg", "data": " iVBOR\nw0KGgo=\n"},
                cache_control={"type": "ephemeral"},
            )
        )
    )
    as_document = list(block_blobs({"type": "document", "source": {"type": "base64", "data": "iVBORw0KGgo="}}))
    assert plain == rewrapped == as_document
    assert len(plain) == 1
    other = list(block_blobs(_image({"type": "base64", "data": "iVBORw0KGgp="})))
    assert other != plain


def test_urls_and_file_ids_have_their_own_digests() -> None:
    url = list(block_blobs(_image({"type": "url", "url": " https://x.io/a.png "})))
    assert url == list(block_blobs(_image({"type": "url", "url": "https://x.io/a.png"})))
    file = list(block_blobs({"type": "document", "source": {"type": "file", "file_id": "file_123"}}))
    as_base64 = list(block_blobs(_image({"type": "base64", "data": "file_123"})))
    assert len({*url, *file, *as_base64}) == 3  # the same string as a URL, a file id and data differs


def test_nested_blobs_are_found() -> None:
    image = _image({"type": "base64", "data": "AAAA"})
    expected = list(block_blobs(image))
    result = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}, image]}
    document = {"type": "document", "source": {"type": "content", "content": [image, {"type": "text", "text": "y"}]}}
    assert list(block_blobs(result)) == expected
    assert list(block_blobs(document)) == expected


@pytest.mark.parametrize(
    "block",
    [
        "a string",
        {"type": "text", "text": "AAAA"},
        {"type": "image"},
        {"type": "image", "source": "AAAA"},
        {"type": "image", "source": {"type": "unknown", "data": "AAAA"}},
        {"type": "document", "source": {"type": "content", "content": "inline text"}},
        {"type": "tool_result", "tool_use_id": "t", "content": "text only"},
    ],
)
def test_blocks_without_binary_content_have_no_blobs(block: Any) -> None:
    assert list(block_blobs(block)) == []


def test_blob_digest_separates_its_parts() -> None:
    assert blob_digest("ab", "c") != blob_digest("a", "bc")
    assert blob_digest("x") == blob_digest("x")
    assert len(blob_digest("lone \ud800 surrogate")) == 32


# ------------------------------------------------------------------------------------- context only


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"type": "text", "text": reminder("date: today")}, True),
        ({"type": "text", "text": f" {reminder('a')}\n{reminder('b')} "}, True),
        ({"type": "text", "text": f"{reminder('a')} and a question"}, False),
        ({"type": "text", "text": "just words"}, False),
        ({"type": "text", "text": ""}, False),
        ({"type": "tool_result", "content": reminder("a")}, False),
        (reminder("a bare string"), False),
    ],
)
def test_context_only(block: Any, expected: bool) -> None:
    assert context_only(block) is expected
