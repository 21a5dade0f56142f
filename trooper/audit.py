"""Audit events and logging: structlog JSON lines, or a readable console when attached to a terminal.

Audit records hold ids, routes, reasons, counts and fingerprints — never message content and never
credentials (DESIGN I6); :func:`scrub` is the last line of defence for the latter.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

_SECRET_KEYS: Final = frozenset({"x-api-key", "authorization", "api_key", "apikey", "token", "password"})


def scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor that masks any field whose name says it holds a credential."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def configure_logging(level: str = "info") -> None:
    """JSON lines to stderr (console rendering when stderr is a terminal)."""
    renderer: Any = (structlog.dev.ConsoleRenderer() if sys.stderr.isatty()
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
