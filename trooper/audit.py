"""Audit events and logging: structlog JSON lines, or a readable console when attached to a terminal.

Audit records hold ids, routes, reasons, counts and fingerprints — never message content and never
credentials; :func:`scrub` is the last line of defence for the latter.

A logged exception carries its type, message and stack (file, line, function of every frame), so an
internal error can be diagnosed from a log file; it never carries the frames' local variables, which
hold request bodies and credentials, and its message is masked for credentials and cut short.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

_SECRET_KEYS: Final = frozenset({"x-api-key", "authorization", "api_key", "apikey", "token", "password"})
#: Credential shapes masked inside exception messages: Anthropic keys, bearer tokens, ``key=value`` pairs.
_SECRET_TEXT: Final = (
    (re.compile(r"sk-ant-[A-Za-z0-9_\-]+"), "sk-ant-***"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]+=*"), r"\1***"),
    (re.compile(r"""(?i)((?:api[_-]?key|token|password|authorization)["']?\s*[=:]\s*["']?)[^\s"',]+"""), r"\1***"),
)
#: Longest exception message kept: enough to diagnose, too short to carry a conversation.
MAX_EXCEPTION_MESSAGE: Final = 300
LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor that masks any field whose name says it holds a credential."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def _mask(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text if len(text) <= MAX_EXCEPTION_MESSAGE else text[: MAX_EXCEPTION_MESSAGE - 1] + "…"


_to_dicts = ExceptionDictTransformer(show_locals=False, max_frames=30)


def exception_fields(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: ``exc_info`` becomes ``exception`` — type, message and frames, no locals.

    structlog's own :func:`~structlog.processors.dict_tracebacks` would keep every frame's locals;
    without this processor the JSON renderer wrote ``"exc_info": true`` and lost the stack.
    """
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return event
    stack = _to_dicts(exc_info)
    for entry in stack:
        entry["exc_value"] = _mask(str(entry.get("exc_value", "")))
        entry.pop("exc_notes", None)
        for frame in entry.get("frames", ()):
            frame.pop("locals", None)
    event["exception"] = stack
    return event


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines to ``stream`` (stderr by default; a readable console when it is a terminal).

    Loggers are not cached on first use, so re-configuring (tests, embedders) reaches every module.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    out = stream if stream is not None else sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub,
    ]
    if out.isatty():
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
        processors.append(structlog.dev.ConsoleRenderer(exception_formatter=formatter))
    else:
        processors += [exception_fields, structlog.processors.JSONRenderer(serializer=_dumps)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
