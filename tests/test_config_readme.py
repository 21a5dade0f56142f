"""The README's configuration table lists exactly the settings the config classes have.

The table is written by hand (its "meaning" column is prose), so this test is what keeps it true: a
field added to a section fails here until its row exists, with its variable and its default, and a
row for a setting that was removed fails too.
"""

from __future__ import annotations

import re
from pathlib import Path

from trooper.config import Setting, settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _rows() -> dict[str, list[str]]:
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        name = re.fullmatch(r"`([a-z_]+\.[a-z_]+)`", cells[0])
        assert name is not None, f"a row must name one setting: {line}"
        assert name.group(1) not in rows, f"{name.group(1)} has two rows"
        rows[name.group(1)] = cells
    return rows


def _default(setting: Setting) -> str | None:
    """How the table spells a default, or None where it describes it in words (unset, a path)."""
    value = setting.default
    if value is None or (isinstance(value, str) and Path(value).is_absolute()):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_every_setting_has_a_row_with_its_variable_and_default() -> None:
    rows = _rows()
    for setting in settings():
        assert setting.name in rows, f"README's configuration table has no row for {setting.name}"
        _, env, default, meaning = rows[setting.name]
        assert f"`{setting.env}`" in env, f"{setting.name}: the row must name {setting.env}"
        for alias in setting.aliases:
            assert f"`{alias}`" in env, f"{setting.name}: the row must name its alias {alias}"
        expected = _default(setting)
        if expected is None:
            assert "unset" in default or "<" in default, f"{setting.name}: say in words what the default is"
        else:
            assert f"`{expected}`" in default, f"{setting.name}: the default is {expected}, the README says {default}"
        assert meaning, f"{setting.name}: say what it means"


def test_the_table_names_no_setting_that_does_not_exist() -> None:
    names = {setting.name for setting in settings()}
    assert sorted(set(_rows()) - names) == []
