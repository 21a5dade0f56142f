"""Audit events and logging: structlog JSON lines, or a readable console when attached to a terminal.

Audit records hold ids, routes, reasons, counts and fingerprints — never message content and never
credentials (DESIGN I6); :func:`scrub` is the last line of defence for the latter.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import orjson
import structlog

_SECRET_KEYS: Final = frozenset({"x-api-key", "authorization", "api_key", "apikey", "token", "password"})


def scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor that masks any field whose name says it holds a credential."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines to ``stream`` (stderr by default; a readable console when it is a terminal).

    Loggers are not cached on first use, so re-configuring (tests, embedders) reaches every module.
    """
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if out.isatty() else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
