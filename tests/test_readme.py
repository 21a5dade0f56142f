"""The README stays true: its diagram is the machine's, its commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

from trooper.graph import render

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_shows_the_current_state_diagram() -> None:
    assert "```mermaid\n" + render("mermaid") + "```" in README


def test_quickstart_is_two_commands_and_ci_runs_the_test_one() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("\n", 1)[1].strip() for block in quickstart.split("```sh")[1:]]
    commands = [command.split("```", 1)[0].strip() for command in commands]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/trooper serve",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --quiet -e '.[dev]'" in ci and ".venv/bin/python -m pytest -q" in ci
