"""Configuration: defaults, file + environment overlay, and one clear line for every bad setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trooper.config import DEFAULT_ANTHROPIC_BASE_URL, ConfigError, load_config, redacted


def test_embedded_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.server.host == "127.0.0.1"
    assert config.anthropic.base_url == DEFAULT_ANTHROPIC_BASE_URL
    assert config.anthropic.api_key is None
    assert config.ollama.base_url == "http://127.0.0.1:11434"
    assert config.store.path.endswith("trooper.sqlite3")
    assert config.server.max_body_bytes == 32 * 1024 * 1024


def test_environment_overlays_the_file(tmp_path: Path) -> None:
    file = tmp_path / "trooper.toml"
    file.write_text('[server]\nport = 9000\n[ollama]\nmodel = "llama3"\n')
    env = {
        "TROOPER_HOST": "0.0.0.0",
        "TROOPER_PORT": "9100",
        "TROOPER_ANTHROPIC_BASE_URL": "http://127.0.0.1:1234",
        "TROOPER_ANTHROPIC_API_KEY": "sk-ant-secret",
        "TROOPER_OLLAMA_BASE_URL": "http://127.0.0.1:5555",
        "TROOPER_OLLAMA_MODEL": "qwen3-coder",
        "TROOPER_STORE": str(tmp_path / "s.sqlite3"),
        "TROOPER_LOCALITY_WITHHELD_NOTICE": "false",
    }
    config = load_config(file, env)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9100)
    assert config.anthropic.base_url == "http://127.0.0.1:1234"
    assert config.anthropic.api_key == "sk-ant-secret"
    assert config.ollama.model == "qwen3-coder"
    assert config.store.path == str(tmp_path / "s.sqlite3")
    assert config.locality.withheld_notice is False
    assert "sk-ant-secret" not in repr(config)
    assert redacted(config)["anthropic"]["api_key"] == "***"


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("", {"TROOPER_PORT": "abc"}, "server.port"),
        ("", {"TROOPER_ANTHROPIC_BASE_URL": "ftp://nowhere"}, "anthropic.base_url"),
        ("", {"TROOPER_OLLAMA_BASE_URL": "not a url"}, "ollama.base_url"),
        ("", {"TROOPER_SERVER_COLOUR": "red"}, "server.colour"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("[server]\nport = 'x'\n", {}, "server.port"),
        ("[bogus]\nx = 1\n", {}, "bogus"),
        ("[server]\nbogus = 1\n", {}, "bogus"),
        ("[locality]\negress_action = 'zap'\n", {}, "locality.egress_action"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, toml: str, env: dict[str, str], expected: str) -> None:
    file = tmp_path / "trooper.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(file, env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_cli_reports_a_bad_setting_in_one_line_without_traceback(tmp_path: Path) -> None:
    env = {"PATH": "", "HOME": str(tmp_path), "TROOPER_PORT": "not-a-port"}
    done = subprocess.run(
        [sys.executable, "-m", "trooper", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["trooper: bad setting server.port (from TROOPER_PORT): expected an integer, got 'not-a-port'"]
