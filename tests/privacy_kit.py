"""What the privacy tests share: canaries, the views of what the cloud received, client re-formatting.

A canary is distinctive by design (letters and digits mixed), so content matching must catch it
anywhere. A *quiet* secret is a handful of everyday words: no content matching may recognise it
(it would collide with ordinary text), so only provenance keeps it out of the cloud — exactly what a
short local reply ("yes, the blue one") depends on.
"""

from __future__ import annotations

import copy
import random
import unicodedata
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from trooper.testing import FakeAnthropic

Messages = list[dict[str, Any]]

_QUIET_WORDS = [
    "river",
    "table",
    "green",
    "music",
    "window",
    "garden",
    "simple",
    "paper",
    "stone",
    "yellow",
    "little",
    "morning",
    "orange",
    "water",
    "summer",
    "winter",
    "silver",
    "happy",
    "bread",
    "coffee",
    "mountain",
    "forest",
    "light",
    "smile",
    "family",
    "friend",
    "letter",
    "street",
    "school",
    "evening",
    "market",
    "animal",
    "flower",
    "bottle",
    "picture",
    "kitchen",
    "sister",
    "number",
    "pocket",
    "corner",
    "doctor",
]


def canary(tag: str) -> str:
    return f"CANARY{tag}{uuid.uuid4().hex[:12]}"


def quiet(rng: random.Random) -> str:
    """Five everyday words: nothing distinctive, unique enough not to occur by chance."""
    return " ".join(rng.sample(_QUIET_WORDS, 5))


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def fold(value: str) -> str:
    """The test's own normalisation (deliberately not Trooper's): how a reader would compare texts."""
    value = unicodedata.normalize("NFKC", value).casefold().translate(_QUOTES)
    value = "".join(ch for ch in value if unicodedata.category(ch) != "Cf" and not 0xFE00 <= ord(ch) <= 0xFE0F)
    return " ".join(value.split())


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def cloud_strings(fake: FakeAnthropic, skip: Iterable[int] = ()) -> list[str]:
    """Every string of every request body the cloud received, decoded from JSON, folded."""
    out: list[str] = []
    skipped = set(skip)
    for position, request in enumerate(fake.requests):
        if not request.body or position in skipped:
            continue
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            out.append(fold(request.body.decode("utf-8", "replace")))
            continue
        out.extend(fold(text) for text in _strings(body))
        out.extend(fold(value) for _, value in request.headers)
    return out


def leaked(fake: FakeAnthropic, secrets: Iterable[str], skip: Iterable[int] = ()) -> list[str]:
    """The secrets found in what the cloud received (but the requests at ``skip``): raw bytes, or
    decoded and folded strings."""
    skipped = set(skip)
    raw = b"\n".join(request.raw() for position, request in enumerate(fake.requests) if position not in skipped)
    folded = "\n".join(cloud_strings(fake, skipped))
    squeezed = folded.replace(" ", "")
    found = []
    for secret in secrets:
        probe = fold(secret)
        if secret.encode() in raw or probe in folded or probe.replace(" ", "") in squeezed:
            found.append(secret)
    return found


def read_deltas(lines: Iterable[str], deltas: int) -> str:
    """The text of a Messages stream's SSE ``lines`` up to its ``deltas``-th text delta (or its end):
    what a client that hangs up there has received."""
    text, seen = "", 0
    for line in lines:
        if line.startswith("data: "):
            event = orjson.loads(line[6:])
            if event.get("type") == "content_block_delta" and event["delta"].get("type") == "text_delta":
                text += event["delta"]["text"]
                seen += 1
                if seen >= deltas:
                    break
    return text


def block_texts_of(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    out = []
    for block in content or []:
        if block.get("type") == "text":
            out.append(block["text"])
    return out


# -------------------------------------------------------------------------- how clients re-send history

REFORMATS = (
    "blocks",
    "strings",
    "cache_control",
    "whitespace",
    "strip_thinking",
    "nfd",
    "nfkc_width",
    "zero_width",
    "smart_quotes",
    "split_text",
    "merge_text",
    "reorder_tool_input",
)


def reformat(history: Messages, kind: str, rng: random.Random) -> Messages:
    """What real clients and editors do to the history they re-send; what it says is unchanged."""
    history = copy.deepcopy(history)
    for message in history:
        content = message["content"]
        if kind == "blocks" and isinstance(content, str):
            message["content"] = [{"type": "text", "text": content}]
        elif kind == "strings" and isinstance(content, list) and len(content) == 1 and content[0]["type"] == "text":
            message["content"] = content[0]["text"]
        elif kind == "cache_control" and isinstance(content, list) and content:
            for block in content:
                block.pop("cache_control", None)
            target = content[rng.randrange(len(content))]
            if target.get("type") in ("text", "tool_use", "tool_result"):
                target["cache_control"] = {"type": "ephemeral"}
        elif kind == "strip_thinking" and message["role"] == "assistant" and isinstance(content, list):
            kept = [block for block in content if block.get("type") not in ("thinking", "redacted_thinking")]
            message["content"] = kept or [{"type": "text", "text": "(no text)"}]
        elif kind == "merge_text" and isinstance(content, list):
            texts = [block for block in content if block.get("type") == "text"]
            if len(texts) > 1 and all(block.get("type") == "text" for block in content):
                message["content"] = [{"type": "text", "text": "".join(block["text"] for block in texts)}]
        elif kind == "split_text":
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            out = []
            for block in blocks:
                text = block.get("text") if block.get("type") == "text" else None
                if text and len(text) > 4 and "<system-reminder>" not in text:
                    cut = rng.randrange(1, len(text))
                    out += [{"type": "text", "text": text[:cut]}, {"type": "text", "text": text[cut:]}]
                else:
                    out.append(block)
            message["content"] = out
        elif kind == "reorder_tool_input" and isinstance(content, list):
            for block in content:
                if block.get("type") == "tool_use" and isinstance(block.get("input"), dict):
                    block["input"] = dict(reversed(list(block["input"].items())))
        else:
            message["content"] = _map_texts(content, kind, rng)
    return history


def _map_texts(content: Any, kind: str, rng: random.Random) -> Any:
    def change(text: str) -> str:
        if "<system-reminder>" in text:
            return text
        if kind == "whitespace":
            return "\n " + text.replace(" ", " \t ") + "  "
        if kind == "nfd":
            return unicodedata.normalize("NFD", text)
        if kind == "nfkc_width":  # fullwidth forms: NFKC maps them back
            return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" and rng.random() < 0.3 else ch for ch in text)
        if kind == "zero_width":
            return "".join(ch + ("\u200b" if rng.random() < 0.2 else "") for ch in text)
        if kind == "smart_quotes":
            return text.replace("'", "\u2019").replace('"', "\u201c")
        return text

    if isinstance(content, str):
        return change(content)
    for block in content:
        if block.get("type") == "text":
            block["text"] = change(block["text"])
    return content
