"""Trooper: per-turn cloud/local routing in front of the Anthropic Messages API.

The HTTP server (``trooper serve``) is a thin layer over :class:`Engine`; services can embed the
engine directly with provider objects and a store of their choosing::

    engine = Engine(cloud=AnthropicProvider("https://api.anthropic.com"),
                    local=OllamaProvider("http://127.0.0.1:11434"), store=SQLiteStore("trooper.sqlite3"))
    status, message, headers = await engine.create({"model": ..., "max_tokens": ..., "messages": ...,
                                                    "x_force_local": True}, {"x-api-key": key})
"""

from trooper.config import Config, ConfigError, load_config
from trooper.conversation import Conversation, Health, State
from trooper.engine import Engine, Incoming, Outgoing
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
from trooper.wire import TrooperError

__version__ = "0.1.0"

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
