"""Token estimation without a tokenizer download.

Why an estimate: no tokenizer may be fetched at run time (``tiktoken`` needs the network, Anthropic's
tokenizer is not public), and the one number that matters — does the local request fit the local model's
window — must err on the high side, because undercounting makes Ollama silently truncate the prompt.

The estimate is per content kind, calibrated from measured characters-per-token figures
(Claude ≤ 4.6: prose 3.97, code 3.51; Opus 4.7+: 2.85, 2.81) and set conservatively between them:
prose chars/3.5, code chars/3.0. Two things tokenise much worse than their kind suggests and are
counted apart: digits (Qwen and several local tokenizers split every digit, so identifiers, hashes and
dates cost about a token per digit) and non-ASCII characters (about a token each). A safety margin
(10 % by default) is applied on top.

JSON is counted by its parts, not at one ratio: its punctuation in runs (``{"``, ``":"``, ``","``, a
space and a quote are each about one token; a longer run, one per three characters), a token per line
break (indentation tokenises apart), and everything else — keys and string values — as the prose or
code it is. Why: one ratio for all JSON must suit its punctuation-dense kind (records, arrays
of numbers), and then charges a tool's schema, mostly description strings, as if it were punctuation
throughout — the tools of a coding agent would seem to need far more of a small window than they do.
Tool definitions and tool inputs are always counted so (:meth:`CalibratedEstimator.count_json`); a
plain text only when it reads as JSON (:func:`classify`).

:class:`TokenEstimator` is the pluggable seam: an exact tokenizer can be dropped in by subclassing
:class:`TextEstimator` and implementing :meth:`TextEstimator.count` only.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from trooper.memory.turns import json_text

__all__ = [
    "BLOCK_OVERHEAD",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "CalibratedEstimator",
    "CallableEstimator",
    "ContentKind",
    "TextEstimator",
    "TextStats",
    "TokenEstimator",
    "classify",
]

#: Role markers and message framing in a chat template (``<|im_start|>user\n`` … ``<|im_end|>``).
MESSAGE_OVERHEAD: Final = 4
#: Framing of one content block (block separators, tool-call wrappers).
BLOCK_OVERHEAD: Final = 3
#: An image costs at most about 1,600 tokens on Claude (1.15 megapixels / 750); local vision models are
#: in the same range. Dimensions are not known without decoding, so the maximum is assumed.
IMAGE_TOKENS: Final = 1600
#: Framing of one tool definition (name, description and schema wrappers).
TOOL_OVERHEAD: Final = 8


class ContentKind(enum.Enum):
    """The kind of a text, which decides its characters-per-token ratio."""

    PROSE = "prose"
    CODE = "code"
    JSON = "json"


_DIGITS: Final = b"0123456789"
#: Up to three characters of a run of JSON punctuation, maybe after a space: about one token, since
#: tokenizers learn ``{"``, ``":"``, ``","``, `` "`` and their like as single tokens.
_JSON_PUNCTUATION: Final = re.compile(r' ?[{}\[\]":,]{1,3}')
_ASCII: Final = bytes(range(128))
_JSON_CHARS: Final = b'":,'
_CODE_CHARS: Final = b"{}()[];=<>_|\\"


class TextStats:
    """Character counts of a text, from its UTF-8 bytes.

    ``bytes.translate`` deleting a set of bytes runs at memory speed, several times faster than one
    ``str.count`` per character.
    """

    __slots__ = ("code", "colons", "digits", "head", "json", "n", "non_ascii", "quotes")

    def __init__(self, text: str = "") -> None:
        data = text.encode("utf-8", "surrogatepass")
        size = len(data)
        self.n = len(text)
        self.head = text.lstrip()[:1]
        self.digits = size - len(data.translate(None, _DIGITS))
        self.non_ascii = 0 if text.isascii() else self.n - (size - len(data.translate(None, _ASCII)))
        self.json = size - len(data.translate(None, _JSON_CHARS))
        self.quotes = data.count(b'"')
        self.colons = data.count(b":")
        self.code = size - len(data.translate(None, _CODE_CHARS))

    def kind_index(self) -> int:
        """0 prose, 1 code, 2 JSON (an int: it indexes the per-kind ratios on every count)."""
        n = self.n
        if n == 0:
            return 0
        if self.head in ("{", "[") and self.json >= 0.06 * n:
            return 2
        if self.code >= 0.03 * n or (self.quotes >= 0.05 * n and self.colons >= 0.02 * n):
            return 1
        return 0

    def kind(self) -> ContentKind:
        return _KINDS[self.kind_index()]


_KINDS: Final = (ContentKind.PROSE, ContentKind.CODE, ContentKind.JSON)


def classify(text: str) -> ContentKind:
    """Guess whether ``text`` is prose, code or JSON from its punctuation density.

    Why punctuation: it is what tokenises badly (each bracket, quote and operator tends to be its own
    token), so its density predicts chars-per-token better than any syntax check, and counting it is a
    few passes at memory speed.
    """
    return TextStats(text).kind()


@runtime_checkable
class TokenEstimator(Protocol):
    """Counts tokens of texts, messages, system prompts and tool definitions.

    Counts must be *additive* over messages (the compactor sums per-message counts and caches them per
    turn), must not depend on ``cache_control`` markers or on a string content being spelled as a single
    text block (turn fingerprints ignore both), and should err high. ``key`` identifies everything a
    count depends on; it must change whenever counts would change (for example after calibration),
    because cached counts are keyed by it.
    """

    @property
    def key(self) -> Hashable:
        """A hashable identity of the counting rule (cache key component)."""
        ...

    def count(self, text: str) -> int:
        """Tokens in a plain text."""
        ...

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one Messages API message, framing included."""
        ...

    def count_system(self, system: str | Sequence[Mapping[str, Any]] | None) -> int:
        """Tokens of a ``system`` field (string or text blocks)."""
        ...

    def count_tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Tokens of a ``tools`` list."""
        ...


class TextEstimator:
    """Base class that derives message, system and tool counts from :meth:`count`.

    Subclass it and implement ``count`` (and ``key``) to plug in an exact tokenizer; the structure of
    messages is walked here once for every estimator. A string content and a single text block count
    the same, and ``cache_control`` never counts, so the compactor's normalised turn fingerprints stay
    valid cache keys for counts.
    """

    @property
    def key(self) -> Hashable:
        return (type(self).__qualname__, id(self))

    def count(self, text: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def count_json(self, value: Any) -> int:
        """Tokens of a JSON value as the model would see it serialised."""
        return self.count(json_text(value))

    def count_message(self, message: Mapping[str, Any]) -> int:
        content = message.get("content")
        return MESSAGE_OVERHEAD + self.count_content(content)

    def count_content(self, content: Any) -> int:
        """Tokens of a ``content`` field: a string or a list of blocks."""
        if isinstance(content, str):
            return BLOCK_OVERHEAD + self.count(content)
        if not isinstance(content, list | tuple):
            return 0 if content is None else self.count_json(content)
        return sum(self.count_block(block) for block in content)

    def count_block(self, block: Any) -> int:
        """Tokens of one content block; unknown block types count as their JSON."""
        if not isinstance(block, Mapping):
            return BLOCK_OVERHEAD + self.count_json(block)
        kind = block.get("type")
        if kind == "text":
            return BLOCK_OVERHEAD + self.count(_str(block.get("text")))
        if kind in {"tool_use", "server_tool_use"}:
            return (
                BLOCK_OVERHEAD
                + self.count(_str(block.get("name")))
                + self.count(_str(block.get("id")))
                + self.count_json(block.get("input", {}))
            )
        if kind == "tool_result":
            return (
                BLOCK_OVERHEAD
                + self.count(_str(block.get("tool_use_id")))
                + self.count_content(block.get("content", ""))
                + (2 if block.get("is_error") else 0)
            )
        if kind == "thinking":
            # The signature is opaque to every model; only the reasoning text is tokens.
            return BLOCK_OVERHEAD + self.count(_str(block.get("thinking")))
        if kind == "redacted_thinking":
            return BLOCK_OVERHEAD + self.count(_str(block.get("data")))
        if kind == "image":
            return BLOCK_OVERHEAD + IMAGE_TOKENS
        if kind == "document":
            return BLOCK_OVERHEAD + self._count_document(block)
        clean = {k: v for k, v in block.items() if k != "cache_control"}
        return BLOCK_OVERHEAD + self.count_json(clean)

    def _count_document(self, block: Mapping[str, Any]) -> int:
        source = block.get("source")
        extra = self.count(_str(block.get("title"))) + self.count(_str(block.get("context")))
        if not isinstance(source, Mapping):
            return extra
        stype = source.get("type")
        if stype == "text":
            return extra + self.count(_str(source.get("data")))
        if stype == "content":
            return extra + self.count_content(source.get("content"))
        if stype == "base64":
            # A PDF's text is a fraction of its bytes; a quarter token per byte is a generous bound
            # for text-bearing PDFs, and page images (if the model renders them) are bounded by it too.
            return extra + max(IMAGE_TOKENS, len(_str(source.get("data"))) * 3 // 16)
        return extra + self.count_json(source)

    def count_system(self, system: str | Sequence[Mapping[str, Any]] | None) -> int:
        if system is None:
            return 0
        if isinstance(system, str):
            return MESSAGE_OVERHEAD + self.count(system) if system else 0
        return MESSAGE_OVERHEAD + sum(self.count_block(b) for b in system)

    def count_tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        if not tools:
            return 0
        total = 0
        for tool in tools:
            clean = {k: v for k, v in tool.items() if k != "cache_control"}
            total += TOOL_OVERHEAD + self.count_json(clean)
        return total


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


class CallableEstimator(TextEstimator):
    """Wraps an exact counting function (``len(tokenizer.encode(text))``) as an estimator.

    ``name`` must identify the tokenizer: it is the cache key, so two estimators with the same name must
    count identically.
    """

    def __init__(self, count: Callable[[str], int], name: str) -> None:
        self._count = count
        self._name = name

    @property
    def key(self) -> Hashable:
        return ("callable", self._name)

    def count(self, text: str) -> int:
        return int(self._count(text)) if text else 0


class CalibratedEstimator(TextEstimator):
    """The default estimator: per-kind chars-per-token ratios, digit and non-ASCII surcharges, a margin.

    ``calibrate(estimated, actual)`` folds an exact figure (the cloud's ``usage.input_tokens`` for a
    request this estimator counted as ``estimated``) into a per-conversation scale by an exponential
    moving average. The scale is clamped: it may rise as far as ``max_scale`` (newer tokenizers count
    30–45 % more than the base ratios) but never fall below ``min_scale`` (0.8 by default), so one odd
    sample can never make the estimate optimistic by more than a bounded factor. It is quantised to steps
    of 1/40 (rounded up), which keeps :attr:`key` — and with it every cached count — stable once the
    average settles.
    """

    def __init__(
        self,
        *,
        prose: float = 3.5,
        code: float = 3.0,
        margin: float = 0.10,
        digit_tokens: float = 1.0,
        non_ascii_tokens: float = 1.0,
        alpha: float = 0.25,
        min_scale: float = 0.8,
        max_scale: float = 2.0,
        scale: float = 1.0,
    ) -> None:
        if min(prose, code) <= 0:
            raise ValueError("chars-per-token ratios must be positive")
        if margin < 0 or not 0 < alpha <= 1 or not 0 < min_scale <= 1 <= max_scale:
            raise ValueError("invalid margin, alpha or scale bounds")
        self._ratios = (prose, code)  # by TextStats.kind_index(); JSON is counted by its parts
        self._margin = margin
        self._digit = digit_tokens
        self._non_ascii = non_ascii_tokens
        self._alpha = alpha
        self._min_scale = min_scale
        self._max_scale = max_scale
        self._ema = min(max(scale, min_scale), max_scale)
        self._set_factor()

    def _set_factor(self) -> None:
        self._scale = math.ceil(self._ema * 40 - 1e-9) / 40
        self._factor = self._scale * (1.0 + self._margin)
        self._key = (
            "calibrated",
            self._ratios[0],
            self._ratios[1],
            "json-by-parts",
            self._margin,
            self._digit,
            self._non_ascii,
            self._scale,
        )

    @property
    def key(self) -> Hashable:
        return self._key

    @property
    def scale(self) -> float:
        """The current (quantised) calibration scale; 1.0 means the base ratios."""
        return self._scale

    @property
    def margin(self) -> float:
        return self._margin

    def calibrate(self, estimated: int, actual: int) -> float:
        """Learn from an exact count; returns the new scale.

        ``estimated`` must be this estimator's count of the same request ``actual`` measured (system,
        tools and messages). Tiny samples are ignored: fixed framing dominates them and says nothing
        about the ratio. The margin stays on top of the learned scale.
        """
        if estimated < 64 or actual <= 0:
            return self._scale
        observed = actual * self._factor / estimated
        self._ema += self._alpha * (observed - self._ema)
        self._ema = min(max(self._ema, self._min_scale), self._max_scale)
        self._set_factor()
        return self._scale

    def kind(self, text: str) -> ContentKind:
        return classify(text)

    def raw(self, text: str) -> float:
        """Unscaled, margin-free token estimate of ``text``."""
        if not text:
            return 0.0
        if "```" in text:
            # Fenced code inside prose: odd segments are code.
            total = 0.0
            for i, part in enumerate(text.split("```")):
                total += self._raw_segment(part, ContentKind.CODE if i % 2 else None) + (1 if i else 0)
            return total
        return self._raw_segment(text, None)

    def _raw_segment(self, text: str, kind: ContentKind | None) -> float:
        if not text:
            return 0.0
        stats = TextStats(text)
        index = stats.kind_index() if kind is None else _KINDS.index(kind)
        if index == 2:
            return self._raw_json(text, stats)
        ratio = self._ratios[index]
        plain = stats.n - stats.digits - stats.non_ascii
        return plain / ratio + stats.digits * self._digit + stats.non_ascii * self._non_ascii

    def _raw_json(self, text: str, stats: TextStats) -> float:
        """JSON by its parts (see the module docstring): punctuation runs, line breaks, the rest as text."""
        rest, chunks = _JSON_PUNCTUATION.subn("", text)
        punctuation = len(text) - len(rest)
        structure = chunks + text.count("\n")
        content = max(0, stats.n - punctuation - stats.digits - stats.non_ascii)
        # Brackets are structure; what else reads as code (operators, underscores) is in the strings.
        brackets = text.count("{") + text.count("}") + text.count("[") + text.count("]")
        ratio = self._ratios[1] if stats.code - brackets >= 0.03 * content else self._ratios[0]
        return structure + content / ratio + stats.digits * self._digit + stats.non_ascii * self._non_ascii

    def count_json(self, value: Any) -> int:
        """Tokens of a JSON value: always by its parts, since it is JSON whatever its strings hold."""
        text = json_text(value)
        if not text:
            return 0
        return math.ceil(self._raw_json(text, TextStats(text)) * self._factor)

    def count(self, text: str) -> int:
        if not text:
            return 0
        return math.ceil(self.raw(text) * self._factor)
