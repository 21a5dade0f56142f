"""Audit and inspection: the trail of every decision, graphs, the admin API, metrics, the CLI and
retention — and none of them ever shows a credential or message content."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from tests.conftest import QUIET, Harness, make_config
from trooper.audit import configure_logging
from trooper.store import SQLiteStore, SyncStore
from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url
from trooper.testing import fake_anthropic as script
from trooper.testing import fake_ollama as local_script
from trooper.testing.harness import FakeClock

MODEL = "claude-sonnet-4-6"
SESSION = "audited-session"
SECRET_KEY = "sk-ant-CANARYKEY-0123456789abcdef"
SECRET_TEXT = "CANARY-TEXT-vault-at-10.1.2.3"
TOKEN = "admin-token-for-tests"


@attrs.define
class Scenario:
    harness: Harness
    store_path: Path
    logs: str
    replies: list[httpx.Response]


def _post(harness: Harness, messages: list[dict[str, Any]], **headers: str) -> httpx.Response:
    return harness.http().post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 32, "messages": messages},
        headers={"x-api-key": SECRET_KEY, "anthropic-version": "2023-06-01", "X-Trooper-Session": SESSION, **headers},
        timeout=30,
    )


@pytest.fixture
def scenario(fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path) -> Iterator[Scenario]:
    """cloud turn → forced-local turn → quota fallback → recovery, with a canary key and canary text."""
    store_path = tmp_path / "trooper.sqlite3"
    config = make_config()
    config = attrs.evolve(config, server=attrs.evolve(config.server, admin_token=TOKEN))
    stream = io.StringIO()
    configure_logging("info", stream)
    clock = FakeClock()
    harness = Harness(config, SQLiteStore(store_path), fake_cloud, fake_local, clock=clock).start()
    try:
        fake_local.enqueue(
            local_script.Reply(text=f"local answer {SECRET_TEXT}"), local_script.Reply(text="fallback answer")
        )
        history: list[dict[str, Any]] = [{"role": "user", "content": "hello cloud"}]
        replies = [_post(harness, history)]
        history += [
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"where is the vault? {SECRET_TEXT}"},
        ]
        replies.append(_post(harness, history, **{"X-Force-Local": "true"}))
        fake_cloud.enqueue(script.rate_limited(retry_after=1))
        history += [
            {"role": "assistant", "content": f"local answer {SECRET_TEXT}"},
            {"role": "user", "content": "next question"},
        ]
        replies.append(_post(harness, history))
        clock.advance(1.1)  # the retry-after passes
        history += [{"role": "assistant", "content": "fallback answer"}, {"role": "user", "content": "and now?"}]
        replies.append(_post(harness, history))
        assert [r.status_code for r in replies] == [200, 200, 200, 200], [r.text for r in replies]
        harness.settle()
        yield Scenario(harness, store_path, stream.getvalue(), replies)
    finally:
        harness.stop()
        configure_logging("info", QUIET)


def test_scripted_conversation_produces_exactly_the_expected_trail(scenario: Scenario) -> None:
    assert [(r.headers["x-trooper-route"], r.headers["x-trooper-state"]) for r in scenario.replies] == [
        ("cloud", "cloud"),
        ("local", "local"),
        ("local", "quota_exhausted"),
        ("cloud", "cloud"),
    ]
    trail = scenario.harness.store.audit(SESSION)
    summary = [(e["kind"], e.get("event") or e.get("route")) for e in trail]
    assert summary == [
        ("turn", "cloud"),
        ("transition", "force_local"),
        ("turn", "local"),
        ("transition", "release"),
        ("transition", "quota_hit"),
        ("turn", "local"),
        ("transition", "cloud_recovered"),
        ("turn", "cloud"),
    ]
    transitions = [e for e in trail if e["kind"] == "transition"]
    assert [(e["source"], e["dest"]) for e in transitions] == [
        ("cloud", "local"),
        ("local", "cloud"),
        ("cloud", "quota_exhausted"),
        ("quota_exhausted", "cloud"),
    ]
    assert all(e["request_id"].startswith("req_") and e["at"] > 0 and e["reason"] for e in transitions)
    turns = [e for e in trail if e["kind"] == "turn"]
    assert [t["reason"] for t in turns] == ["default", "forced:header", "quota", "recovered"]
    assert [t["provider"] for t in turns] == ["anthropic", "ollama", "ollama", "anthropic"]
    assert turns[1]["model"] == "qwen3" and turns[0]["model"] == MODEL
    assert set(turns[1]["memory"]) >= {"anchor", "sitrep", "tail"}
    assert turns[3]["withheld_blocks"] >= 2 and turns[3]["status"] == 200
    assert all(t["duration_ms"] >= t["first_byte_ms"] >= 0 for t in turns)

    auth = {"Authorization": f"Bearer {TOKEN}"}
    graph = scenario.harness.http().get(f"/trooper/sessions/{SESSION}/graph?format=mermaid", headers=auth).text
    assert "Class cloud s_active" in graph
    assert "Class quota_exhausted s_previous" in graph and "Class local s_previous" in graph
    for edge in (
        "cloud --> local: force_local ×1",
        "local --> cloud: release ×1",
        "cloud --> quota_exhausted: quota_hit ×1",
        "quota_exhausted --> cloud: cloud_recovered ×1",
    ):
        assert edge in graph
    dot = scenario.harness.http().get(f"/trooper/sessions/{SESSION}/graph?format=dot", headers=auth)
    assert dot.status_code == 200 and "digraph" in dot.text


def test_admin_api(scenario: Scenario) -> None:
    http, auth = scenario.harness.http(), {"Authorization": f"Bearer {TOKEN}"}
    listed = http.get("/trooper/sessions", headers=auth).json()["data"]
    assert [(s["id"], s["state"], s["turns"]) for s in listed] == [(SESSION, "cloud", 4)]
    one = http.get(f"/trooper/sessions/{SESSION}", headers=auth).json()
    assert one["state"] == "cloud" and len(one["transitions"]) == 4
    health = http.get("/trooper/health", headers=auth).json()
    assert health["local"]["up"] is True and health["store"]["ok"] is True
    upstream = next(iter(health["cloud"]["upstreams"].values()))
    assert upstream["status"] == "up" and upstream["last_probe"] is not None
    metrics = http.get("/metrics", headers=auth).text
    assert 'trooper_requests_total{route="local",status="200"} 2.0' in metrics
    assert 'trooper_transitions_total{event="quota_hit"} 1.0' in metrics
    assert 'trooper_fallbacks_total{reason="quota"} 1.0' in metrics
    assert "trooper_withheld_blocks_total" in metrics and "trooper_request_duration_seconds_bucket" in metrics
    assert http.get("/trooper/sessions/nope", headers=auth).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/trooper/sessions",
        f"/trooper/sessions/{SESSION}",
        "/trooper/health",
        "/metrics",
        f"/trooper/sessions/{SESSION}/graph",
    ],
)
def test_admin_routes_need_the_token(scenario: Scenario, path: str) -> None:
    http = scenario.harness.http()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        reply = http.get(path, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "authentication_error"
    assert http.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert http.head("/").status_code == 200  # clients' liveness probe stays open


def _cli(*args: str, store: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trooper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TROOPER_STORE": str(store), "COLUMNS": "200", **env},
        check=False,
    )


def test_no_credential_or_content_in_logs_audit_admin_or_cli(scenario: Scenario) -> None:
    http, auth = scenario.harness.http(), {"Authorization": f"Bearer {TOKEN}"}
    surfaces = {"logs": scenario.logs, "audit": str(scenario.harness.store.audit(SESSION))}
    for path in (
        "/trooper/sessions",
        f"/trooper/sessions/{SESSION}",
        f"/trooper/sessions/{SESSION}/audit",
        "/trooper/health",
        "/metrics",
        f"/trooper/sessions/{SESSION}/graph",
        "/",
    ):
        surfaces[path] = http.get(path, headers=auth).text
    for args in (
        ("sessions",),
        ("session", SESSION),
        ("audit", "--session", SESSION),
        ("audit", "--session", SESSION, "--json"),
        ("graph", "--session", SESSION),
    ):
        done = _cli(*args, store=scenario.store_path)
        assert done.returncode == 0, done.stderr
        surfaces[" ".join(args)] = done.stdout + done.stderr
    assert '"event":"turn"' in scenario.logs and '"event":"transition"' in scenario.logs
    assert SESSION in surfaces["session " + SESSION]
    for name, text in surfaces.items():
        assert SECRET_KEY not in text, f"API key in {name}"
        assert SECRET_TEXT not in text, f"message text in {name}"
        assert "vault" not in text, f"message text in {name}"


def test_cli_session_output_is_readable(scenario: Scenario) -> None:
    done = _cli("session", SESSION, store=scenario.store_path)
    assert done.returncode == 0, done.stderr
    for expected in ("state cloud", "force_local", "quota_hit", "cloud_recovered", "forced:header"):
        assert expected in done.stdout
    assert (
        _cli("session", "unknown", store=scenario.store_path).stderr.strip()
        == "trooper: no stored conversation 'unknown'"
    )


def test_retention_never_drops_the_ledger(fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path) -> None:
    config = make_config()
    config = attrs.evolve(config, retention=attrs.evolve(config.retention, max_age_days=0.0))
    harness = Harness(config, SQLiteStore(tmp_path / "t.sqlite3"), fake_cloud, fake_local).start()
    try:
        fake_local.enqueue(local_script.Reply(text=f"answer {SECRET_TEXT}"))
        history: list[dict[str, Any]] = [{"role": "user", "content": f"::local {SECRET_TEXT}"}]
        assert _post(harness, history).status_code == 200
        assert harness.engine is not None
        time.sleep(0.01)
        removed = harness.run(harness.engine.admin.prune())
        assert removed["sessions"] == 1 and removed["audit"] >= 2
        assert harness.store.load_conversation(SESSION) is None and harness.store.audit(SESSION) == []
        history += [{"role": "assistant", "content": f"answer {SECRET_TEXT}"}, {"role": "user", "content": "hi"}]
        assert _post(harness, history).status_code == 200
        assert SECRET_TEXT.encode() not in fake_cloud.received_bytes()
    finally:
        harness.stop()


def test_retention_by_count_and_audit_length(tmp_path: Path) -> None:
    store = SyncStore(SQLiteStore(tmp_path / "t.sqlite3"))
    for number in range(5):
        store.write(f"s{number}", float(number), {"id": f"s{number}", "state": "cloud"}, [])
        for step in range(4):
            store.write(f"s{number}", float(step), None, [("turn", {"n": step})])
    removed = store.prune(older_than=None, max_sessions=3, max_audit_per_session=2)
    assert removed == {"sessions": 2, "audit": 8 + 6}
    assert [row["id"] for row in store.list_conversations()] == ["s4", "s3", "s2"]
    assert [entry["n"] for entry in store.audit("s4")] == [2, 3]


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    done = _cli("serve", store=tmp_path / "x.sqlite3", TROOPER_HOST="0.0.0.0")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("trooper: refusing to listen on 0.0.0.0 without an admin token")


def test_doctor(fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path) -> None:
    env = {
        "TROOPER_ANTHROPIC_BASE_URL": fake_cloud.url,
        "TROOPER_OLLAMA_BASE_URL": fake_local.url,
        "TROOPER_OLLAMA_MODEL": "qwen3",
        "TROOPER_ANTHROPIC_API_KEY": SECRET_KEY,
    }
    done = _cli("doctor", store=tmp_path / "d.sqlite3", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "context 32768 tokens" in done.stdout and "FAIL" not in done.stdout
    assert SECRET_KEY not in done.stdout + done.stderr
    missing = _cli(
        "doctor",
        store=tmp_path / "d.sqlite3",
        **{**env, "TROOPER_OLLAMA_MODEL": "nope", "TROOPER_ANTHROPIC_BASE_URL": unused_port_url()},
    )
    assert missing.returncode == 1
    assert "ollama pull nope" in missing.stdout and "cannot reach" in missing.stdout
