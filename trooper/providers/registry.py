"""Provider discovery through the ``trooper.providers`` entry-point group.

Discovery happens once, at start-up: ``importlib.metadata.entry_points`` scans every installed
distribution, which is too slow for a request path. A plugin that fails to import is logged and
skipped — one broken plugin must never take the proxy down. Built-in providers register through the
same group (see ``pyproject.toml``), so they are found exactly like third-party ones. Embedders and
tests skip discovery and pass provider objects to the engine directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

if TYPE_CHECKING:
    from trooper.config import Config
    from trooper.providers.base import Provider

GROUP: Final = "trooper.providers"

log = structlog.get_logger("trooper.providers")


class ProviderFactory(Protocol):
    """What an entry point must resolve to: something with ``from_config(config) -> Provider``."""

    def from_config(self, config: Config) -> Provider: ...


def discover(eps: Iterable[EntryPoint] | None = None) -> dict[str, ProviderFactory]:
    """Load every provider factory in the group; broken ones are logged and skipped."""
    found: dict[str, ProviderFactory] = {}
    for ep in entry_points(group=GROUP) if eps is None else eps:
        try:
            factory: Any = ep.load()
        except Exception as exc:  # a plugin may fail in any way; the host must not
            log.warning("provider_plugin_failed", plugin=ep.name, target=ep.value, error=repr(exc))
            continue
        if not callable(getattr(factory, "from_config", None)):
            log.warning(
                "provider_plugin_invalid",
                plugin=ep.name,
                target=ep.value,
                error="entry point has no from_config(config)",
            )
            continue
        if ep.name in found:
            log.warning("provider_plugin_duplicate", plugin=ep.name, target=ep.value)
            continue
        found[ep.name] = factory
    return found


def build(name: str, config: Config, factories: Mapping[str, ProviderFactory]) -> Provider:
    """Instantiate provider ``name``; an unknown name is a configuration error naming the choices."""
    from trooper.config import ConfigError

    try:
        factory = factories[name]
    except KeyError:
        known = ", ".join(sorted(factories)) or "none"
        raise ConfigError(f"unknown provider {name!r} (installed: {known})") from None
    return factory.from_config(config)
