"""The files a deployer copies from the repository work as they are."""

from __future__ import annotations

import re
from pathlib import Path

from trooper.config import Config, load_config, settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "trooper.toml"


def test_the_example_config_loads_and_keeps_the_defaults() -> None:
    config = load_config(EXAMPLE, environ={})
    defaults = Config()
    for setting in settings():
        if setting.name == "store.path":
            continue  # commented out in the example: the default depends on the machine
        section = setting.section
        assert getattr(getattr(config, section), setting.field) == getattr(getattr(defaults, section), setting.field)


def test_the_example_config_shows_every_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    sections = {
        match.group(1): match.group(2) for match in re.finditer(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    }
    for setting in settings():
        assert setting.section in sections, f"examples/trooper.toml has no [{setting.section}]"
        assert re.search(rf"^#? ?{setting.field} = ", sections[setting.section], re.M), (
            f"examples/trooper.toml does not show {setting.name}"
        )
