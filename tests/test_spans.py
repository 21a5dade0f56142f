"""Content matching's spans: what is distinctive, what is always found, and what never fires.

The span index is the second line of the privacy promise: it must find local text wherever it shows
up (a shared distinctive span of :data:`~trooper.spans.SPAN` characters, or any shared run of
:data:`~trooper.spans.LONG` characters, dense scripts weighted), and must never fire on everyday
phrasing. Those guarantees are properties of the hashing and winnowing, so they are checked as
properties; the classification of distinctive tokens is checked on examples of each kind; the
fingerprint set is checked against a plain Python set.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trooper.keyset import as_array, member
from trooper.spans import (
    DENSE_WEIGHT,
    LONG,
    SPAN,
    distinctive_atoms,
    fingerprints_of,
    folded_fingerprints,
    local_fingerprints,
    pack,
    query_fingerprints,
    sorted_fingerprints,
    unpack,
    warm_up,
)
from trooper.text import fold

PROPERTY = settings(max_examples=100, deadline=None)

#: Words that are common in ordinary English: none of them is distinctive on its own.
_COMMON_TEXT = (
    "the and of to in is it that was for on are with as they be at one have this from or had by word but what some "
    "we can out other were all there when use your how said each she which do their time if will way about many "
    "then them write would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been now find any new work "
    "part take get place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line turn cause much mean before move "
    "right old too same tell does set three want air well also play small end put home read hand large even land "
    "here must big high such"
)
COMMON = _COMMON_TEXT.split()


def recognised(local: str, query: str) -> bool:
    """Whether content matching would recognise local text ``local`` inside ``query``."""
    return bool(np.intersect1d(local_fingerprints(local), query_fingerprints(query)).size)


def setup_module() -> None:
    warm_up()


# ----------------------------------------------------------------------------------- distinctiveness


@pytest.mark.parametrize(
    ("folded", "tokens"),
    [
        # numbers of three or more digits, separators included
        ("call 555 now", ["555"]),
        ("it costs 12 or 99", []),
        ("on 2024-01-05 at 10:30:15", ["2024-01-05", "10:30:15"]),
        ("1,234.56 total", ["1,234.56", "234.56"]),  # its dotted tail is an identifier too
        # words mixing letters and digits (four characters or more)
        ("the token ab12 and x9y8", ["ab12", "x9y8"]),
        ("v2 and 3d are too short", []),
        # identifiers
        ("set user_id first", ["user_id"]),
        ("mail a@b.io today", ["a@b.io"]),
        ("read /etc/hosts now", ["/etc/hosts"]),
        ("open config.py here", ["config.py"]),
        ("see https://x.io/a", ["https://x.io/a"]),
        ("path src/lib/x", ["src/lib/x"]),
        ("set ab=cd then", ["ab=cd"]),
        ("not an id: e.g. or a.b", []),
        # rare words of five or more letters
        ("ask kowalczyk about zxqvbn", ["kowalczyk", "zxqvbn"]),
        ("the house and the water", []),
        ("müller und schmidt", []),  # common in German
        # any word of twenty or more characters
        ("a supercalifragilisticexpialidocious day", ["supercalifragilisticexpialidocious"]),
        # dense scripts are not words of letters here: the long spans cover them
        ("東京都庁舎 に 行く", []),
        ("", []),
    ],
)
def test_distinctive_atoms(folded: str, tokens: list[str]) -> None:
    found = {folded[start:stop] for start, stop in distinctive_atoms(folded)}
    assert found == set(tokens)


# ---------------------------------------------------------------------------------- what is recognised


_FILLER = st.lists(st.sampled_from(COMMON), min_size=0, max_size=12).map(" ".join)
_TOKENS = st.sampled_from(["zxqvbn", "ab12cd", "user_id", "/etc/hosts", "4815162342", "kowalczyk", "a@b.io"])


@PROPERTY
@given(st.tuples(_FILLER, _TOKENS, _FILLER), st.integers(min_value=0), _FILLER, _FILLER)
def test_a_shared_distinctive_span_is_always_found(
    parts: tuple[str, str, str], shift: int, other_before: str, other_after: str
) -> None:
    before, token, after = parts
    local = fold(f"{before} {token} {after}")
    start = local.index(token)
    # any window of SPAN characters that holds the token whole
    low, high = max(0, start + len(token) - SPAN), min(start, len(local) - SPAN)
    assume(low <= high)  # else the local text is shorter than a span: nothing to share
    begin = low + shift % (high - low + 1)
    window = local[begin : begin + SPAN]
    assert token in window
    query = f"{other_before} #{window.upper()}# {other_after}"  # shared in another case, elsewhere
    assert recognised(local, query)


_FEW_WORDS = st.lists(st.sampled_from(COMMON), max_size=6).map(" ".join)  # always under 64 characters


@PROPERTY
@given(st.lists(st.sampled_from(COMMON), min_size=1, max_size=40), st.integers(min_value=0), _FEW_WORDS, _FEW_WORDS)
def test_everyday_phrasing_never_fires(words: list[str], start: int, other_before: str, other_after: str) -> None:
    """Sharing ordinary words, even a stretch of them shorter than a long span's k-gram, is not a match."""
    local = " ".join(words)
    begin = start % len(local)
    shared = local[begin : begin + 60]
    assert not recognised(local, f"{other_before}|{shared}|{other_after}")


_LATIN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789 .,;"), min_size=0, max_size=80).map(fold)
_RUN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz "), min_size=LONG, max_size=LONG + 60).map(fold)


@PROPERTY
@given(_LATIN, _RUN, _LATIN, st.tuples(_LATIN, _LATIN))
def test_any_shared_run_of_long_characters_is_found(before: str, run: str, after: str, other: tuple[str, str]) -> None:
    assume(len(run) >= LONG)  # folding whitespace may have made it shorter
    other_before, other_after = other
    assert recognised(f"{before}#{run}#{after}", f"{other_before}|{run}|{other_after}")


#: Han and kana in "words" of at most ten characters, so that nothing in them is distinctive: only
#: their weight can make a shared run long enough.
_DENSE_WORD = st.text(
    st.one_of(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        st.characters(min_codepoint=0x3041, max_codepoint=0x3096),
    ),
    min_size=1,
    max_size=10,
)
_DENSE = st.lists(_DENSE_WORD, min_size=1, max_size=3).map("、".join)


@PROPERTY
@given(_DENSE, st.lists(_DENSE_WORD, min_size=5, max_size=12).map("、".join), _DENSE)
def test_a_dense_script_needs_fewer_characters(before: str, run: str, after: str) -> None:
    """A Han or kana character counts as :data:`DENSE_WEIGHT` characters toward a long span."""
    dense = len(run) - run.count("、")
    assume(dense * DENSE_WEIGHT + run.count("、") >= LONG)
    local = f"{before}。{run}。{after}"
    assert distinctive_atoms(fold(local)) == []
    assert recognised(local, f"{after}。{run}。{before}")


def test_a_short_shared_dense_run_is_not_enough() -> None:
    run = "展望室から、富士山が見える日は、少ない"  # 19 characters: 57 weighted, under LONG
    assert len(run) * DENSE_WEIGHT < LONG
    assert not recognised(f"今日は晴れ。{run}", f"{run}と聞いた")


def test_everyday_japanese_phrasing_never_fires() -> None:
    # "ご確認のほどよろしくお願いいたします" ("please kindly confirm", 18 characters) closes countless
    # business e-mails; written without punctuation it is part of a long run of word characters,
    # which must not count as one long "word". The English equivalent does not fire either (see
    # test_everyday_phrasing_never_fires).
    local = "明日の会議の資料をご確認のほどよろしくお願いいたします"
    query = "先日お送りした見積書をご確認のほどよろしくお願いいたします"
    assert not recognised(local, query)
    # A number or a Latin identifier inside Japanese text is still a token.
    assert recognised("お客様の案件番号PRJ2291の見積書です", "お客様の案件番号PRJ2291の件ですが")


@PROPERTY
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=300))
def test_the_same_hashes_on_both_sides(text: str) -> None:
    """What is indexed for a local text is among what is looked up for the same text."""
    local = local_fingerprints(text)
    assert np.isin(local, query_fingerprints(text)).all()
    assert np.array_equal(local, folded_fingerprints(fold(text)))
    assert np.array_equal(local, np.unique(local))


@PROPERTY
@given(st.lists(st.sampled_from([*COMMON[:30], "kowalczyk", "ab12cd", "4815162342"]), min_size=1, max_size=60))
def test_fingerprints_survive_rewrapping_and_case(words: list[str]) -> None:
    text = " ".join(words)
    rewrapped = "\n  ".join(word.upper() if number % 3 == 0 else word for number, word in enumerate(words))
    assert np.array_equal(local_fingerprints(text), local_fingerprints(rewrapped))
    assert np.array_equal(sorted_fingerprints(text), sorted_fingerprints(rewrapped))


def test_query_fingerprints_are_shared_and_read_only() -> None:
    text = "a system prompt that comes back with every request, 2024-01-05"
    assert query_fingerprints(text) is query_fingerprints(text)
    assert not query_fingerprints(text).flags.writeable
    assert not sorted_fingerprints(text).flags.writeable
    assert np.array_equal(sorted_fingerprints(text), np.unique(query_fingerprints(text)))


def test_fingerprints_of_several_texts() -> None:
    texts = ["first text about ab12cd", "", "second text, 4815162342"]
    union = fingerprints_of(texts)
    assert np.array_equal(union, np.unique(np.concatenate([query_fingerprints(t) for t in texts if t])))
    assert fingerprints_of([]).size == 0
    assert fingerprints_of(["", ""]).size == 0
    assert local_fingerprints("").size == 0
    assert local_fingerprints("short").size == 0  # shorter than a span


# ----------------------------------------------------------------------------------- fingerprint sets


def test_member() -> None:
    haystack = as_array([3, 5, 9])
    assert member(haystack, as_array([1, 3, 4, 9, 10, 2**64 - 1])).tolist() == [False, True, False, True, False, False]
    assert member(as_array([]), as_array([1, 2])).tolist() == [False, False]
    assert member(haystack, as_array([])).tolist() == []


def test_pack_and_unpack() -> None:
    values = as_array([0, 1, 2**64 - 1, 0x0102030405060708])
    data = pack(values)
    assert len(data) == 8 * len(values)
    assert data[24:] == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # little-endian
    assert unpack(data).dtype == np.uint64
    assert np.array_equal(unpack(data), values)
    assert unpack(b"").size == 0
