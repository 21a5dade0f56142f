"""Provider discovery through the ``trooper.providers`` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import structlog

from trooper.config import Config, ConfigError
from trooper.providers.anthropic import AnthropicProvider
from trooper.providers.registry import GROUP, build, discover


def test_builtins_are_found_through_the_installed_entry_points() -> None:
    factories = discover()
    assert factories["anthropic"] is AnthropicProvider
    assert "ollama" in factories


def test_a_broken_plugin_is_logged_and_skipped() -> None:
    eps = [
        EntryPoint(name="broken", value="trooper_no_such_module:Provider", group=GROUP),
        EntryPoint(name="not_a_factory", value="trooper.wire:encode_sse", group=GROUP),
        EntryPoint(name="anthropic", value="trooper.providers.anthropic:AnthropicProvider", group=GROUP),
    ]
    with structlog.testing.capture_logs() as logs:
        factories = discover(eps)
    assert list(factories) == ["anthropic"]
    events = {entry["event"]: entry for entry in logs}
    assert events["provider_plugin_failed"]["plugin"] == "broken"
    assert events["provider_plugin_invalid"]["plugin"] == "not_a_factory"


def test_build_names_the_installed_choices_for_an_unknown_provider() -> None:
    with pytest.raises(ConfigError, match=r"unknown provider 'nope' \(installed: anthropic, ollama\)"):
        build("nope", Config(), discover())
