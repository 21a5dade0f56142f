"""``trooper graph --write DIR`` writes its three files and never replaces a file it did not write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trooper.graph import DOT_FILE, MERMAID_FILE, README_FILE, expected_diagrams, generated_by_trooper


def _trooper(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trooper", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_write_into_a_folder_with_someones_readme_refuses_and_writes_nothing(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# My project\n\nHand-written.\n", encoding="utf-8")
    done = _trooper("graph", "--write", ".", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trooper: refusing to replace README.md")
    assert readme.read_text(encoding="utf-8") == "# My project\n\nHand-written.\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # not even the other two files


def test_write_creates_then_refreshes_its_own_files(tmp_path: Path) -> None:
    target = tmp_path / "out"
    first = _trooper("graph", "--write", str(target), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in target.iterdir()) == sorted([MERMAID_FILE, DOT_FILE, README_FILE])
    assert all(generated_by_trooper(target / name) for name in (MERMAID_FILE, DOT_FILE, README_FILE))
    (target / DOT_FILE).write_text((target / DOT_FILE).read_text() + "// a stale edit\n")
    again = _trooper("graph", "--write", str(target), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (target / DOT_FILE).read_text() == expected_diagrams()[DOT_FILE]


def test_a_folder_in_the_way_is_not_replaced_either(tmp_path: Path) -> None:
    (tmp_path / MERMAID_FILE).mkdir()
    done = _trooper("graph", "--write", ".", cwd=tmp_path)
    assert done.returncode == 2 and "refusing to replace" in done.stderr


def test_help_names_exactly_what_it_writes(tmp_path: Path) -> None:
    done = _trooper("graph", "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "conversation.mmd, conversation.dot and README.md" in text
    assert "never replaced" in text
