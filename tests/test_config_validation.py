"""Every setting is checked at start-up, and a bad one is one line in Trooper's words naming it.

The checks are generic over the config classes, so these tests walk :func:`trooper.config.settings`:
a field added later is covered (round trip from TOML and from its variable, a wrong type refused)
without a new test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trooper.config import ConfigError, Setting, load_config, settings

#: Words that would mean a library's message reached the user instead of Trooper's.
LIBRARY_WORDING = ("typing.", "Literal[", "cattrs", "Extra fields", "constructor", "ClassValidationError", "Traceback")


def _load(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> Any:
    file = tmp_path / "trooper.toml"
    file.write_text(toml, encoding="utf-8")
    return load_config(file, env or {})


def _refused(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, toml, env)
    message = str(info.value)
    assert "\n" not in message
    for words in LIBRARY_WORDING:
        assert words not in message, message
    return message


# ------------------------------------------------------------------------------ one test per type

TOML_CASES = [
    # (type, toml, expected message)
    ("str", "[ollama]\nmodel = 5\n", "bad setting ollama.model: expected a string, got 5"),
    ("int", "[ollama]\ncontext_length = 'abc'\n", "bad setting ollama.context_length: expected an integer, got 'abc'"),
    ("int", "[server]\nport = 1.5\n", "bad setting server.port: expected an integer, got 1.5"),
    ("int", "[server]\nport = true\n", "bad setting server.port: expected an integer, got true"),
    (
        "float",
        "[anthropic]\nidle_timeout = 'soon'\n",
        "bad setting anthropic.idle_timeout: expected a number, got 'soon'",
    ),
    ("bool", "[locality]\nwithheld_notice = 'maybe'\n", "bad setting locality.withheld_notice: expected true or false"),
    ("optional", "[ollama]\ncontext_length = -5\n", "bad setting ollama.context_length: must be positive, got -5"),
    ("optional", "[retention]\nmax_sessions = 0\n", "bad setting retention.max_sessions: must be positive, got 0"),
    (
        "Literal",
        "[server]\nlog_level = 'loud'\n",
        "bad setting server.log_level: expected one of 'debug', 'info', 'warning', 'error', 'critical', got 'loud'",
    ),
    (
        "URL",
        "[anthropic]\nbase_url = 'https://api.anthropic.com/v1'\n",
        "bad setting anthropic.base_url: must not end in /v1",
    ),
    ("URL", "[ollama]\nbase_url = 'http://127.0.0.1:11434/v1'\n", "bad setting ollama.base_url: must not end in /v1"),
    ("URL", "[ollama]\nbase_url = 'localhost:11434'\n", "bad setting ollama.base_url: must be an http(s) URL"),
    ("size", "[server]\nmax_body_bytes = 0\n", "bad setting server.max_body_bytes: must be positive, got 0"),
    ("timeout", "[ollama]\nconnect_timeout = -1\n", "bad setting ollama.connect_timeout: must be positive, got -1"),
    ("marker", "[locality]\nmarker = ''\n", "bad setting locality.marker: must not be empty"),
]


@pytest.mark.parametrize(("kind", "toml", "expected"), TOML_CASES, ids=[case[0] for case in TOML_CASES])
def test_a_bad_value_in_the_file_is_named(tmp_path: Path, kind: str, toml: str, expected: str) -> None:
    assert _refused(tmp_path, toml).startswith(expected)


ENV_CASES = [
    ("str", {"TROOPER_OLLAMA_MODEL": "  "}, "bad setting ollama.model (from TROOPER_OLLAMA_MODEL): must not be empty"),
    (
        "int",
        {"TROOPER_OLLAMA_CONTEXT_LENGTH": "abc"},
        "bad setting ollama.context_length (from TROOPER_OLLAMA_CONTEXT_LENGTH): expected an integer, got 'abc'",
    ),
    ("alias", {"TROOPER_PORT": "abc"}, "bad setting server.port (from TROOPER_PORT): expected an integer, got 'abc'"),
    (
        "float",
        {"TROOPER_ANTHROPIC_FIRST_BYTE_TIMEOUT": "nan"},
        "bad setting anthropic.first_byte_timeout (from TROOPER_ANTHROPIC_FIRST_BYTE_TIMEOUT): expected a number",
    ),
    (
        "bool",
        {"TROOPER_SERVER_EPHEMERAL": "sure"},
        "bad setting server.ephemeral (from TROOPER_SERVER_EPHEMERAL): expected true or false, got 'sure'",
    ),
    (
        "optional",
        {"TROOPER_OLLAMA_CONTEXT_LENGTH": "-5"},
        "bad setting ollama.context_length (from TROOPER_OLLAMA_CONTEXT_LENGTH): must be positive, got -5",
    ),
    (
        "Literal",
        {"TROOPER_SERVER_LOG_LEVEL": "loud"},
        "bad setting server.log_level (from TROOPER_SERVER_LOG_LEVEL): expected one of 'debug', 'info',",
    ),
    (
        "URL",
        {"TROOPER_ANTHROPIC_BASE_URL": "https://api.anthropic.com/v1/"},
        "bad setting anthropic.base_url (from TROOPER_ANTHROPIC_BASE_URL): must not end in /v1: Trooper appends "
        "/v1/messages itself (use 'https://api.anthropic.com')",
    ),
]


@pytest.mark.parametrize(("kind", "env", "expected"), ENV_CASES, ids=[case[0] for case in ENV_CASES])
def test_a_bad_variable_is_named_with_its_variable(
    tmp_path: Path, kind: str, env: dict[str, str], expected: str
) -> None:
    assert _refused(tmp_path, env=env).startswith(expected)


def test_values_of_every_type_are_read_from_file_and_environment(tmp_path: Path) -> None:
    toml = (
        "[server]\nlog_level = 'WARNING'\nephemeral = true\n"
        "[ollama]\nmodel = 'llama3.1'\ncontext_length = 16384\nconnect_timeout = 2\n"
        "[locality]\negress_action = 'redact'\n"
    )
    config = _load(tmp_path, toml)
    assert config.server.log_level == "warning" and config.server.ephemeral is True
    assert (config.ollama.model, config.ollama.context_length, config.ollama.connect_timeout) == (
        "llama3.1",
        16384,
        2.0,
    )
    assert config.locality.egress_action == "redact"
    env = {
        "TROOPER_SERVER_LOG_LEVEL": "error",
        "TROOPER_SERVER_EPHEMERAL": "0",
        "TROOPER_OLLAMA_CONTEXT_LENGTH": "",  # an empty variable unsets an optional setting
        "TROOPER_OLLAMA_IDLE_TIMEOUT": "12.5",
        "TROOPER_LOCALITY_EGRESS_ACTION": "Warn",
        "TROOPER_ADMIN_TOKEN": "",
    }
    config = _load(tmp_path, toml, env)
    assert config.server.log_level == "error" and config.server.ephemeral is False
    assert config.ollama.context_length is None and config.ollama.idle_timeout == 12.5
    assert config.locality.egress_action == "warn"
    assert config.server.admin_token is None


# ------------------------------------------------------------------------------ unknown names


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[server]\nprot = 1\n", {}, "unknown setting server.prot; did you mean server.port?"),
        ("[server]\nmodel = 'x'\n", {}, "unknown setting server.model; did you mean ollama.model?"),
        ("[sever]\nport = 1\n", {}, "unknown setting sever; did you mean [server]?"),
        (
            "",
            {"TROOPER_SERVER_PROT": "1"},
            "unknown setting server.prot (from TROOPER_SERVER_PROT); did you mean TROOPER_SERVER_PORT?",
        ),
        ("", {"TROOPER_OLAMA_MODEL": "x"}, "unknown setting TROOPER_OLAMA_MODEL; did you mean TROOPER_OLLAMA_MODEL?"),
        ("server = 3\n", {}, "bad setting server: expected a table ([server]), got 3"),
    ],
)
def test_unknown_names_get_a_suggestion(tmp_path: Path, toml: str, env: dict[str, str], expected: str) -> None:
    assert _refused(tmp_path, toml, env) == expected


def test_variables_that_are_not_settings_are_left_alone(tmp_path: Path) -> None:
    env = {"TROOPER_CONFIG": str(tmp_path / "x.toml"), "TROOPER_REQUIRE_CLAUDE_CODE": "1", "TROOPER_CLAUDE_CODE": "/x"}
    assert _load(tmp_path, env=env).server.port == 8787


# ------------------------------------------------------------------------------ every setting, generically


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


@pytest.mark.parametrize("setting", settings(), ids=lambda setting: setting.name)
def test_every_setting_reads_its_default_back_and_refuses_a_wrong_type(tmp_path: Path, setting: Setting) -> None:
    assert setting.expects  # every field's type is one the loader knows
    if setting.default is not None:
        toml = f"[{setting.section}]\n{setting.field} = {_toml_value(setting.default)}\n"
        config = _load(tmp_path, toml)
        assert getattr(getattr(config, setting.section), setting.field) == setting.default
        raw = setting.default if isinstance(setting.default, str) else str(setting.default)
        config = _load(tmp_path, env={setting.env: raw})
        assert getattr(getattr(config, setting.section), setting.field) == setting.default
    # A table is never a valid scalar, whatever the field's type.
    message = _refused(tmp_path, f"[{setting.section}]\n{setting.field} = {{ nested = 1 }}\n")
    expects = setting.expects.removesuffix(" (or nothing, to unset it)")
    assert message == f"bad setting {setting.name}: expected {expects}, got a table"


def test_the_cli_stops_on_a_bad_log_level_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TROOPER_SERVER_LOG_LEVEL": "loud"}
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
    assert done.stderr.strip().splitlines() == [
        "trooper: bad setting server.log_level (from TROOPER_SERVER_LOG_LEVEL): expected one of 'debug', 'info', "
        "'warning', 'error', 'critical', got 'loud'"
    ]
