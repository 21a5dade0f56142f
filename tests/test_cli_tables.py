"""The CLI's tables at 80 columns: verdicts always shown, ids never cut, nothing wider than the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from tests.conftest import API_KEY, Harness, make_config
from trooper.store import SQLiteStore, SyncStore
from trooper.tables import Column, print_table
from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url

SESSION = f"{uuid.uuid4()}-with-a-long-suffix"  # 54 characters: longer than a Claude Code session id


def _cli(*args: str, columns: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trooper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": str(columns), "TROOPER_CONFIG": os.devnull, **env},
        check=False,
    )


def _post(harness: Harness, messages: list[dict[str, str]]) -> httpx.Response:
    return harness.http().post(
        "/v1/messages",
        json={"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": messages},
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "X-Trooper-Session": SESSION},
    )


@pytest.fixture(scope="module")
def store_path(
    tmp_path_factory: pytest.TempPathFactory, _cloud_server: FakeAnthropic, _local_server: FakeOllama
) -> Path:
    """A store holding one conversation that went cloud → local → cloud (two transitions with request ids)."""
    path = tmp_path_factory.mktemp("tables") / "trooper.sqlite3"
    harness = Harness(make_config(), SQLiteStore(path), _cloud_server.url, _local_server.url).start()
    try:
        history = [{"role": "user", "content": "hello"}]
        assert _post(harness, history).status_code == 200
        history += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "::local a local question"}]
        assert _post(harness, history).status_code == 200
        history += [{"role": "assistant", "content": "local ok"}, {"role": "user", "content": "back to the cloud"}]
        assert _post(harness, history).status_code == 200
        harness.settle()
    finally:
        harness.stop()
        _cloud_server.reset()
        _local_server.reset()
    return path


def _fits(text: str, width: int = 80) -> None:
    for line in text.splitlines():
        if SESSION not in line:  # only an id longer than the terminal may run past it, whole
            assert len(line) <= width, f"{len(line)} columns: {line!r}"


def test_sessions_at_80_columns_show_whole_ids(store_path: Path) -> None:
    done = _cli("sessions", columns=80, TROOPER_STORE=str(store_path))
    assert done.returncode == 0, done.stderr
    assert SESSION in done.stdout
    assert "cloud" in done.stdout
    _fits(done.stdout)


def test_session_at_80_columns_shows_whole_request_ids(store_path: Path) -> None:
    done = _cli("session", SESSION, columns=80, TROOPER_STORE=str(store_path))
    assert done.returncode == 0, done.stderr
    trail = SyncStore(SQLiteStore(store_path)).audit(SESSION)
    request_ids = [e["request_id"] for e in trail if e["kind"] == "transition"]
    assert len(request_ids) >= 2
    for request_id in request_ids:
        assert request_id in done.stdout
    for word in ("force_local", "release", "forced:marker"):
        assert word in done.stdout
    _fits(done.stdout)


def test_audit_at_80_columns_fits(store_path: Path) -> None:
    done = _cli("audit", "--session", SESSION, columns=80, TROOPER_STORE=str(store_path))
    assert done.returncode == 0, done.stderr
    assert "force_local" in done.stdout and "withheld" in done.stdout
    _fits(done.stdout)


def test_doctor_at_80_columns_shows_every_verdict(
    fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path
) -> None:
    env = {
        "TROOPER_ANTHROPIC_BASE_URL": fake_cloud.url,
        "TROOPER_OLLAMA_BASE_URL": unused_port_url(),
        "TROOPER_STORE": str(tmp_path / "d.sqlite3"),
    }
    done = _cli("doctor", columns=80, **env)
    assert done.returncode == 1
    table = done.stdout.split("checks", 1)[1]
    rows = {}
    for line in table.splitlines():
        cells = line.replace("│", " ").split()
        if cells and cells[0] in {"serve", "store", "cloud", "local"}:
            rows[cells[0]] = cells
    assert rows["serve"][1] == "ok" and rows["store"][1] == "ok" and rows["cloud"][1] == "ok"
    assert rows["local"][:3] == ["local", "provider", "FAIL"]
    assert "…" not in table
    _fits(table)


def test_a_table_too_wide_for_a_rule_becomes_blocks_without_cutting_ids() -> None:
    console = Console(width=80, record=True, color_system=None)
    long_id = "x" * 70
    print_table(
        console, "t", [Column("id", keep=True), Column("state"), Column("detail")], [[long_id, "cloud", "a b c"]]
    )
    text = console.export_text()
    assert long_id in text and "state: cloud" in text
    console = Console(width=80, record=True, color_system=None)
    print_table(console, "t", [Column("id", keep=True), Column("state")], [["abc", "cloud"]])
    assert "┃ id" in console.export_text()  # a table when it fits


def test_a_block_row_breaks_between_fields_never_inside_one() -> None:
    console = Console(width=80, record=True, color_system=None)
    columns = [Column("time"), Column("event"), Column("from"), Column("to"), Column("reason"), Column("id", keep=True)]
    row = [
        "2026-12-01 23:40:20",
        "cloud_recovered",
        "quota_exhausted",
        "cloud",
        "recovered",
        "req_01fH8z6iMlCaLSHTqQzj5nhl",
    ]
    print_table(console, "transitions", columns, [row])
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert not any(line.rstrip().endswith(":") for line in lines)  # a label stays with its value
    assert "reason: recovered" in text
