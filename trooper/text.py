"""The one normalisation used for matching, and what a content block says as text or as a blob.

Everything that compares content — the lineage of a conversation, the distinctive-span index, the
egress guard — goes through :func:`fold`, so a client cannot slip local text past the ledger by
re-sending it in another form: Unicode NFKC and case folding, typographic quotes and dashes mapped
to ASCII, zero-width and other format characters removed, whitespace runs folded to one space.

A block's *text* is what a reader would see: a tool call's input is JSON-decoded (a script written
with ``\\n`` escapes is matched as the script, not as ``nhost``), results and documents are read
through their nested blocks, and binary content (images, PDFs, file references) is reduced to a
*blob* digest so it can be recognised by its bytes.

Client context — ``<system-reminder>`` segments that clients such as Claude Code put inside user
text — is separated here too, because it is the client's standing context, not the user's words.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson

from trooper._memo import Memo

REMINDER_OPEN: Final = "<system-reminder>"
REMINDER_CLOSE: Final = "</system-reminder>"
_REMINDER: Final = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)
_LEADING_REMINDERS: Final = re.compile(r"\A(?:\s*<system-reminder>.*?(?:</system-reminder>|\Z))+\s*", re.DOTALL)

#: Typographic variants a client (or an editor) may substitute; NFKC leaves them alone.
_TYPOGRAPHIC: Final = {
    **dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032\u00b4\u02bc"), "'"),
    **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"), '"'),
    **dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"), "-"),
}


@functools.cache
def _table() -> dict[int, str | None]:
    """Every format character (category Cf: zero-width spaces and joiners, bidi marks, soft hyphens,
    tag characters…) and the variation selectors, which render as nothing and can be sprinkled into
    any text; plus the typographic map. Built on first use: only non-ASCII text needs it."""
    table: dict[int, str | None] = {}
    for code in (*range(0x20000), *range(0xE0000, 0xE0080)):
        if unicodedata.category(chr(code)) == "Cf":
            table[code] = None
    for code in (*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x180B, 0x180C, 0x180D, 0x180F, 0x034F):
        table[code] = None
    table.update(_TYPOGRAPHIC)
    return table


def fold_uncached(text: str) -> str:
    """The matching form of ``text``: NFKC, case folded, invisible characters removed, whitespace folded.

    ASCII text skips the Unicode steps (it is already in NFKC and has nothing to drop).
    """
    if text.isascii():
        return " ".join(text.lower().split())
    table = _table()
    # The table first: an invisible character between a letter and its combining mark must not keep
    # NFKC from composing them, and NFKC would decompose some typographic marks (´ ″) before the
    # table could map them. Then again after: NFKC and case folding can produce what the table maps.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text.translate(table)).casefold())
    return " ".join(folded.translate(table).split())


#: :func:`fold`, memoised: clients re-send the same history on every request.
fold = Memo(fold_uncached, budget=4 << 20, weigh=len)


def identity(text: str) -> str:
    """:func:`fold` without any whitespace: what decides whether two messages are the same message.

    Re-wrapping, re-indenting or splitting a text into several blocks changes whitespace only, so a
    message keeps its identity through all of them.
    """
    return fold(text).replace(" ", "")


def strip_reminders(text: str) -> str:
    """``text`` without its ``<system-reminder>`` segments (the client's context, not the user's words)."""
    if REMINDER_OPEN not in text:
        return text
    return _REMINDER.sub(" ", text)


def reminders(text: str) -> list[str]:
    """The ``<system-reminder>`` segments of ``text``, in order."""
    if REMINDER_OPEN not in text:
        return []
    return _REMINDER.findall(text)


def after_leading_reminders(text: str) -> tuple[str, str]:
    """``(leading reminders, rest)``: where a prompt really starts when a client put context first."""
    if REMINDER_OPEN not in text:
        return "", text
    found = _LEADING_REMINDERS.match(text)
    if found is None:
        return "", text
    return text[: found.end()], text[found.end() :]


# --------------------------------------------------------------------------------------- block content


def blob_digest(*parts: str) -> str:
    """A digest for binary content: equal bytes give equal digests, whatever else the block says."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def decoded_strings(value: Any) -> Iterator[str]:
    """The string and number leaves of decoded JSON, in order (a tool call's input as text)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        yield str(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from decoded_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from decoded_strings(item)


_JSON_STRING: Final = re.compile(r'"((?:[^"\\]|\\.)*)("?)', re.DOTALL)
_JSON_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def partial_json_strings(text: str) -> list[str]:
    """The value strings (and numbers) of JSON that may be cut anywhere, decoded.

    A streamed tool call arrives as pieces of JSON; what reached the client must be ledgered as the
    text it means, before the JSON is complete. Object keys are skipped; an unfinished string or
    escape at the end counts up to where it was cut.
    """
    out: list[str] = []
    position = 0
    for found in _JSON_STRING.finditer(text):
        out.extend(_JSON_NUMBER.findall(_outside_strings(text[position : found.start()])))
        position = found.end()
        body, closed = found.group(1), bool(found.group(2))
        rest = text[found.end() :].lstrip()
        if closed and rest.startswith(":"):
            continue  # a key
        out.append(_decode_json_string(body))
    out.extend(_JSON_NUMBER.findall(_outside_strings(text[position:])))
    return [item for item in out if item]


def _outside_strings(chunk: str) -> str:
    return chunk.replace("true", " ").replace("false", " ").replace("null", " ")


_UNFINISHED_ESCAPE: Final = re.compile(r"(?:\\u[dD][89abAB][0-9a-fA-F]{2})?(?:\\(?:u[0-9a-fA-F]{0,3})?)?$")


def _decode_json_string(body: str) -> str:
    try:
        decoded = orjson.loads(f'"{body}"')
    except orjson.JSONDecodeError:
        # Cut inside an escape (``\\u00`` or a lone backslash), or between the two escapes of a
        # surrogate pair: drop what is unfinished.
        trimmed = _UNFINISHED_ESCAPE.sub("", body)
        try:
            decoded = orjson.loads(f'"{trimmed}"')
        except orjson.JSONDecodeError:
            return trimmed
    return decoded if isinstance(decoded, str) else ""


def block_texts(block: Any) -> Iterator[str]:
    """Every text a block carries, for matching (nested results and documents included)."""
    if isinstance(block, str):
        yield block
        return
    if not isinstance(block, Mapping):
        return
    kind = block.get("type")
    if kind == "text":
        yield str(block.get("text", ""))
    elif kind == "thinking":
        yield str(block.get("thinking", ""))
    elif kind in ("tool_use", "server_tool_use"):
        yield "\n".join(decoded_strings(block.get("input")))
    elif kind in ("tool_result", "search_result"):
        if kind == "search_result":
            yield str(block.get("title", ""))
        content = block.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                yield from block_texts(part)
    elif kind == "document":
        yield str(block.get("title") or "")
        yield str(block.get("context") or "")
        source = block.get("source")
        if isinstance(source, Mapping):
            if source.get("type") == "text":
                yield str(source.get("data", ""))
            elif source.get("type") == "content":
                content = source.get("content")
                if isinstance(content, str):
                    yield content
                elif isinstance(content, list):
                    for part in content:
                        yield from block_texts(part)
    elif kind in ("image", "redacted_thinking"):
        return
    else:  # a block type this version does not know: read every string it holds
        yield "\n".join(decoded_strings({k: v for k, v in block.items() if k not in ("type", "cache_control")}))


def block_blobs(block: Any) -> Iterator[str]:
    """Digests of the binary content a block carries (images, base64 documents, URLs, file ids)."""
    if not isinstance(block, Mapping):
        return
    kind = block.get("type")
    if kind in ("image", "document"):
        source = block.get("source")
        if isinstance(source, Mapping):
            if source.get("type") == "base64":
                yield blob_digest("base64", "".join(str(source.get("data", "")).split()))
            elif source.get("type") == "url":
                yield blob_digest("url", str(source.get("url", "")).strip())
            elif source.get("type") == "file":
                yield blob_digest("file", str(source.get("file_id", "")).strip())
            elif source.get("type") == "content" and isinstance(source.get("content"), list):
                for part in source["content"]:
                    yield from block_blobs(part)
    elif kind == "tool_result" and isinstance(block.get("content"), list):
        for part in block["content"]:
            yield from block_blobs(part)


def context_only(block: Any) -> bool:
    """A text block that holds nothing but client context (``<system-reminder>`` segments)."""
    # Asked of every block of every request: a plain dict skips the slower ABC check.
    if type(block) is not dict and not isinstance(block, Mapping):
        return False
    if block.get("type") != "text":
        return False
    text = block.get("text", "")
    text = text if type(text) is str else str(text)
    return REMINDER_OPEN in text and not strip_reminders(text).strip()


__all__ = [
    "REMINDER_CLOSE",
    "REMINDER_OPEN",
    "after_leading_reminders",
    "blob_digest",
    "block_blobs",
    "block_texts",
    "context_only",
    "decoded_strings",
    "fold",
    "fold_uncached",
    "identity",
    "partial_json_strings",
    "reminders",
    "strip_reminders",
]
