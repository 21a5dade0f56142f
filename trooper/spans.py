"""Distinctive spans of local content: what content matching may recognise, and how it is indexed.

Content matching is the second line of the privacy promise (provenance is the first, see
:mod:`trooper.lineage`): it recognises local text that shows up somewhere provenance cannot vouch
for — pasted into a new prompt, written into a file and read back by a cloud tool, quoted by a side
request. It must never fire on everyday phrasing that a local reply happens to share with an
unrelated prompt, so it only recognises spans that could not plausibly collide:

* **distinctive**: any :data:`SPAN` characters (of the folded text, see :func:`trooper.text.fold`)
  that hold a distinctive token — a number of three or more digits, a word mixing letters and
  digits, an identifier (``user_id``, ``a@b.io``, ``/etc/hosts``, ``config.py``, ``https://…``),
  a word of five or more letters that is rare in ordinary language, or any word of twenty or more
  characters (words of the scripts written without spaces are not words here, see
  :func:`distinctive_atoms`);
* **long**: any :data:`LONG` characters at all, where a character of a script written without
  spaces (Han, kana, Hangul) counts :data:`DENSE_WEIGHT` times, because it carries about a word.

Both are hashed character k-grams, so they work for any script and survive re-wrapping. Distinctive
spans are indexed at every position (a shared span of :data:`SPAN` characters is always found);
long spans are winnowed — each window of :data:`LONG_WINDOW` consecutive k-grams keeps its minimum
hash — which guarantees that any shared run of :data:`LONG` characters is found while storing only a
few percent of the k-grams. The same hashes are computed on both sides, so recognising a span is
set membership; no local text is stored, only 64-bit fingerprints.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt

from trooper._memo import Memo
from trooper.keyset import U64, sorted_unique
from trooper.text import fold

#: Characters a distinctive span needs before it is recognised.
SPAN: Final = 16
#: Characters (dense scripts weighted) that make any shared run recognisable.
LONG: Final = 128
LONG_GRAM: Final = 64
LONG_WINDOW: Final = LONG - LONG_GRAM + 1
#: How much one character of a script without spaces counts toward :data:`LONG`.
DENSE_WEIGHT: Final = 3
#: A word of at least this many letters is distinctive when it is rare in ordinary language.
RARE_WORD_LETTERS: Final = 5
#: A word of at least this many characters is distinctive, rare or not.
LONG_WORD: Final = 20

_SEED_SPAN: Final = np.uint64(0x9E3779B97F4A7C15)
_SEED_LONG: Final = np.uint64(0xC2B2AE3D27D4EB4F)
_BASE: Final = np.uint64(0x100000001B3)
_BASE_INV: Final = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_EMPTY: Final[U64] = np.empty(0, dtype=np.uint64)


# ------------------------------------------------------------------------------------------- hashing


def _codes(text: str) -> U64:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)


_POWERS: list[U64] = [_EMPTY, _EMPTY]


def _powers(size: int) -> tuple[U64, U64]:
    """``BASE**i`` and ``BASE**-i`` for ``i < size`` (mod 2**64); grown by doubling, kept for reuse."""
    if len(_POWERS[0]) < size:
        grown = max(size, 2 * len(_POWERS[0]), 4096)
        with np.errstate(over="ignore"):
            _POWERS[0] = np.cumprod(np.full(grown, _BASE, dtype=np.uint64), dtype=np.uint64) * _BASE_INV
            _POWERS[1] = np.cumprod(np.full(grown, _BASE_INV, dtype=np.uint64), dtype=np.uint64) * _BASE
    return _POWERS[0], _POWERS[1]


def _kgram_hashes(codes: U64, k: int, seed: np.uint64) -> U64:
    """A 64-bit hash of every run of ``k`` consecutive code points, in O(n) whatever ``k`` is.

    A polynomial hash mod 2**64 over an odd base (so the base is invertible): with prefix sums of
    ``c[j] * BASE**-j``, the hash of a run is a difference of two prefix sums times a power. A
    splitmix64 finaliser then spreads the bits, so minima (winnowing) are well distributed.
    """
    count = len(codes) - k + 1
    if count <= 0:
        return _EMPTY
    up, down = _powers(len(codes) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum(codes * down[: len(codes)], dtype=np.uint64, out=prefix[1:])
        hashes = (prefix[k:] - prefix[:count]) * up[k - 1 : k - 1 + count]
        hashes ^= seed
        hashes ^= hashes >> np.uint64(30)
        hashes *= _MIX1
        hashes ^= hashes >> np.uint64(27)
        hashes *= _MIX2
        hashes ^= hashes >> np.uint64(31)
    return hashes


def _sliding_min(values: U64, window: int) -> U64:
    """The minimum of every ``window`` consecutive values, in O(n) (van Herk / Gil-Werman)."""
    count = len(values) - window + 1
    if count <= 0:
        return _EMPTY
    blocks = -(-len(values) // window)
    padded = np.full(blocks * window, np.iinfo(np.uint64).max, dtype=np.uint64)
    padded[: len(values)] = values
    shaped = padded.reshape(blocks, window)
    prefix = np.minimum.accumulate(shaped, axis=1).ravel()
    suffix = np.minimum.accumulate(shaped[:, ::-1], axis=1)[:, ::-1].ravel()
    return np.minimum(suffix[:count], prefix[window - 1 : window - 1 + count])


def _dense(codes: U64) -> npt.NDArray[np.bool_]:
    return (
        ((codes >= 0x3040) & (codes <= 0x30FF))  # kana
        | ((codes >= 0x3400) & (codes <= 0x4DBF))
        | ((codes >= 0x4E00) & (codes <= 0x9FFF))
        | ((codes >= 0xAC00) & (codes <= 0xD7AF))  # Hangul syllables
        | ((codes >= 0xF900) & (codes <= 0xFAFF))
        | ((codes >= 0x20000) & (codes <= 0x3FFFF))
    )


def _weighted(codes: U64) -> U64:
    """``codes`` with each dense-script character repeated :data:`DENSE_WEIGHT` times."""
    dense = _dense(codes)
    if not dense.any():
        return codes
    return np.repeat(codes, np.where(dense, DENSE_WEIGHT, 1))


def _long_selected(codes: U64) -> U64:
    """The winnowed long-span fingerprints of a text (the same selection on both sides)."""
    weighted = _weighted(codes)
    hashes = _kgram_hashes(weighted, LONG_GRAM, _SEED_LONG)
    if len(hashes) < LONG_WINDOW:
        return _EMPTY
    minima = _sliding_min(hashes, LONG_WINDOW)
    # Neighbouring windows mostly share their minimum: keep each run once.
    return minima[np.concatenate(([True], minima[1:] != minima[:-1]))]


# ------------------------------------------------------------------------------------ distinctiveness

_NUMBER: Final = re.compile(r"\d+(?:[.,:/\-]\d+)*")
_MIXED_OR_LONG: Final = re.compile(rf"\w*\d\w*|\w{{{LONG_WORD},}}")
_CODEISH: Final = re.compile(r"[\w./\\@:=#$%~+\-]*[./\\@:=#$%~+_][\w./\\@:=#$%~+\-]*")
_LETTERS: Final = re.compile(rf"[^\W\d_]{{{RARE_WORD_LETTERS},}}")
_IDENT_MARK: Final = re.compile(r"[\w][_@\\=#$%~+][\w]|://")
_DOTTED: Final = re.compile(r"[^\W_]{2,}(?:[.:][^\W_]+)+")


@functools.cache
def _vocabulary() -> frozenset[str]:
    """Words common in ordinary text (English, German, French, Spanish), folded.

    From wordfreq's small lists: a word absent from them occurs less than about once per million
    words, so a span holding one (a surname, a project code name, a rare term) will not collide
    with everyday phrasing. Loaded on first use; only recording local content needs it.
    """
    import wordfreq

    words: set[str] = set()
    for language in ("en", "de", "fr", "es"):
        for word in wordfreq.get_frequency_dict(language, wordlist="small"):
            if len(word) >= RARE_WORD_LETTERS:
                words.add(unicodedata.normalize("NFKC", word).casefold())
    for name in dir(wordfreq):  # its parsed lists are large and cached; keep only the words
        cached = getattr(wordfreq, name)
        if callable(getattr(cached, "cache_clear", None)):
            cached.cache_clear()
    return frozenset(words)


def warm_up() -> None:
    """Load the vocabulary ahead of the first local turn that needs it."""
    _vocabulary()


def _identifier(token: str) -> bool:
    token = token.strip(".,:;-+")
    if len(token) < 4:
        return False
    if _IDENT_MARK.search(token):
        return True
    if token.count("/") >= 2 or (token.startswith("/") and len(token) >= 4 and token[1:2].isalnum()):
        return True
    return bool(_DOTTED.fullmatch(token)) and len(token) >= 6


#: Characters of the scripts written without spaces (Han, kana, Hangul): the ranges of :func:`_dense`.
_DENSE_CHARACTER: Final = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff]"
)


def distinctive_atoms(folded: str) -> list[tuple[int, int]]:
    """Character ranges of the distinctive tokens of a folded text (see the module docstring).

    Words are what spaces and punctuation delimit, which a script written without spaces does not
    have: there a whole sentence would be one long "word". So the word rules read the text with
    dense-script characters as separators (a Latin identifier or a number inside Japanese text is
    still a token), and dense text itself is recognised by the long-span rule, where each of its
    characters weighs more.
    """
    atoms: list[tuple[int, int]] = []
    for found in _NUMBER.finditer(folded):
        if sum(ch.isdigit() for ch in found.group()) >= 3:
            atoms.append(found.span())
    if not folded.isascii():
        folded = _DENSE_CHARACTER.sub(" ", folded)  # one character for one: the ranges stay true
    for found in _MIXED_OR_LONG.finditer(folded):
        word = found.group()
        if len(word) >= LONG_WORD or (len(word) >= 4 and any(ch.isalpha() for ch in word)):
            atoms.append(found.span())
    for found in _CODEISH.finditer(folded):
        if _identifier(found.group()):
            atoms.append(found.span())
    common: frozenset[str] | None = None
    for found in _LETTERS.finditer(folded):
        word = found.group()
        common = common if common is not None else _vocabulary()
        if word not in common:
            atoms.append(found.span())
    return atoms


def _distinctive_starts(folded: str, count: int) -> npt.NDArray[np.bool_]:
    """Which :data:`SPAN`-character windows of ``folded`` hold a distinctive token.

    A window holds a token when it contains it whole; a token longer than a window is held by every
    window that covers at least half a window of it.
    """
    marks = np.zeros(count + 1, dtype=np.int32)
    half = SPAN // 2
    for start, stop in distinctive_atoms(folded):
        if stop - start <= SPAN:
            low, high = stop - SPAN, start
        else:
            low, high = start - half, stop - half
        low, high = max(low, 0), min(high, count - 1)
        if low <= high:
            marks[low] += 1
            marks[high + 1] -= 1
    return np.cumsum(marks[:count]) > 0


# ---------------------------------------------------------------------------------------- fingerprints


def local_fingerprints(text: str) -> U64:
    """What to index for a local text: its distinctive spans and its winnowed long spans."""
    return folded_fingerprints(fold(text))


def folded_fingerprints(folded: str) -> U64:
    """:func:`local_fingerprints` of a text that is already folded (or a stretch of one)."""
    codes = _codes(folded)
    hashes = _kgram_hashes(codes, SPAN, _SEED_SPAN)
    parts = [_long_selected(codes)]
    if len(hashes):
        parts.append(hashes[_distinctive_starts(folded, len(hashes))])
    return sorted_unique(np.concatenate(parts))


def _query_fingerprints(text: str) -> U64:
    """What to look up for a text that may be sent: every span, and the long spans' winnowed ones.

    A query looks up all of its :data:`SPAN`-character windows (the index only holds distinctive
    ones, so only a distinctive shared span can match), plus its winnowed long spans. Memoised:
    system prompts, tool descriptions and client context are re-sent on every request.
    """
    codes = _codes(fold(text))
    result = np.concatenate([_kgram_hashes(codes, SPAN, _SEED_SPAN), _long_selected(codes)])
    result.setflags(write=False)
    return result


#: :func:`_query_fingerprints`, memoised for about a million characters of text.
query_fingerprints = Memo(_query_fingerprints, budget=1 << 20, weigh=len)


def _sorted_fingerprints(text: str) -> U64:
    result = sorted_unique(query_fingerprints(text))
    result.setflags(write=False)
    return result


#: :func:`query_fingerprints`, sorted and deduplicated, for membership tests against a text.
sorted_fingerprints = Memo(_sorted_fingerprints, budget=1 << 20, weigh=len)


def fingerprints_of(texts: Iterable[str]) -> U64:
    """Every span fingerprint of several texts, as one sorted array (what the cloud already has)."""
    parts = [query_fingerprints(text) for text in texts if text]
    return sorted_unique(np.concatenate(parts)) if parts else _EMPTY


def pack(values: U64) -> bytes:
    """Fingerprints as bytes for the store (little-endian, eight bytes each)."""
    return np.asarray(values, dtype="<u8").tobytes()


def unpack(data: bytes) -> U64:
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


__all__ = [
    "DENSE_WEIGHT",
    "LONG",
    "SPAN",
    "distinctive_atoms",
    "fingerprints_of",
    "folded_fingerprints",
    "local_fingerprints",
    "pack",
    "query_fingerprints",
    "sorted_fingerprints",
    "unpack",
    "warm_up",
]
