"""Trooper: per-turn cloud/local routing in front of the Anthropic Messages API.

The HTTP server (``trooper serve``) is a thin layer over :class:`Engine`; services can embed the
engine directly with provider objects and a store of their choosing::

    async with Engine(cloud=AnthropicProvider("https://api.anthropic.com"),
                      local=OllamaProvider("http://127.0.0.1:11434"),
                      store=SQLiteStore("trooper.sqlite3")) as engine:
        status, message, headers = await engine.create(
            {"model": ..., "max_tokens": ..., "messages": ..., "x_force_local": True}, {"x-api-key": key})

The names below are loaded on first use (PEP 562): importing a pure module such as
``trooper.turn`` or ``trooper.ledger`` does not load the HTTP clients, the server or the providers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trooper._version import __version__

#: Where each public name lives.
_EXPORTS: dict[str, str] = {
    "Config": "trooper.config",
    "ConfigError": "trooper.config",
    "load_config": "trooper.config",
    "Conversation": "trooper.conversation",
    "Health": "trooper.conversation",
    "State": "trooper.conversation",
    "Engine": "trooper.engine",
    "Incoming": "trooper.wire",
    "Outgoing": "trooper.wire",
    "TrooperError": "trooper.wire",
    "AnthropicProvider": "trooper.providers.anthropic",
    "OllamaProvider": "trooper.providers.ollama",
    "AuthError": "trooper.providers.base",
    "BadRequest": "trooper.providers.base",
    "CloudProvider": "trooper.providers.base",
    "LocalProvider": "trooper.providers.base",
    "LocalRequest": "trooper.providers.base",
    "ModelNotFound": "trooper.providers.base",
    "Overloaded": "trooper.providers.base",
    "ProviderError": "trooper.providers.base",
    "QuotaExhausted": "trooper.providers.base",
    "Unreachable": "trooper.providers.base",
    "UpstreamRequest": "trooper.providers.base",
    "LedgerEntry": "trooper.store",
    "MemoryStore": "trooper.store",
    "SQLiteStore": "trooper.store",
    "SessionStore": "trooper.store",
    "open_store": "trooper.store",
}

__all__ = [
    "AnthropicProvider",
    "AuthError",
    "BadRequest",
    "CloudProvider",
    "Config",
    "ConfigError",
    "Conversation",
    "Engine",
    "Health",
    "Incoming",
    "LedgerEntry",
    "LocalProvider",
    "LocalRequest",
    "MemoryStore",
    "ModelNotFound",
    "OllamaProvider",
    "Outgoing",
    "Overloaded",
    "ProviderError",
    "QuotaExhausted",
    "SQLiteStore",
    "SessionStore",
    "State",
    "TrooperError",
    "Unreachable",
    "UpstreamRequest",
    "__version__",
    "load_config",
    "open_store",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trooper' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from trooper.config import Config, ConfigError, load_config
    from trooper.conversation import Conversation, Health, State
    from trooper.engine import Engine
    from trooper.providers.anthropic import AnthropicProvider
    from trooper.providers.base import (
        AuthError,
        BadRequest,
        CloudProvider,
        LocalProvider,
        LocalRequest,
        ModelNotFound,
        Overloaded,
        ProviderError,
        QuotaExhausted,
        Unreachable,
        UpstreamRequest,
    )
    from trooper.providers.ollama import OllamaProvider
    from trooper.store import LedgerEntry, MemoryStore, SessionStore, SQLiteStore, open_store
    from trooper.wire import Incoming, Outgoing, TrooperError
