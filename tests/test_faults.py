"""The fault matrix: every upstream failure × stream/non-stream × local up / local down / forced-local.

Each row goes through the proxy with the SDK as the client and asserts what the client saw (status
or exception), the route taken, the conversation's state afterwards and the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import attrs
import pytest

from tests.conftest import Harness, make_config
from trooper.conversation import conversation_from_dict
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url
from trooper.testing import fake_anthropic as script
from trooper.testing import fake_ollama as local_script
from trooper.testing.harness import FakeClock

MODEL = "claude-sonnet-4-6"
SESSION = "fault-matrix"


@attrs.frozen
class Fault:
    name: str
    script: Callable[[], Any] | None  # None: the cloud's port is closed
    kind: str  # quota | overload | unreachable | client | reset | garbage
    status: int  # what the client gets when nothing can answer instead


FAULTS = [
    Fault("429 retry-after", lambda: script.rate_limited(retry_after=30), "quota", 429),
    Fault("spend limit", script.spend_limit_reached, "quota", 429),
    Fault("unified rejected", script.unified_quota_rejected, "quota", 429),
    Fault("credit balance 400", script.credit_balance_too_low, "quota", 400),
    Fault("529 overloaded", script.overloaded, "overload", 529),
    Fault("500", script.server_error, "overload", 500),
    Fault("401", script.unauthorized, "client", 401),
    Fault("connection refused", None, "unreachable", 502),
    Fault("timeout before headers", script.hang, "unreachable", 502),
    Fault(
        "reset mid-stream", lambda: script.text("one two three four five six seven").then_drop(after=4), "reset", 502
    ),
    Fault("malformed SSE", lambda: script.text("one two three four").then_garbage(after=4), "garbage", 200),
]


@pytest.fixture
def matrix_harness(
    fake_cloud: FakeAnthropic, fake_local: FakeOllama, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def build(fault: Fault, local_up: bool, in_process: bool = True) -> Harness:
        config = make_config()
        config = attrs.evolve(
            config, anthropic=attrs.evolve(config.anthropic, first_byte_timeout=0.5, overload_backoff=0.01)
        )
        cloud: FakeAnthropic | str = unused_port_url() if fault.script is None else fake_cloud
        local: FakeOllama | str = fake_local if local_up else unused_port_url()
        harness = Harness(config, MemoryStore(), cloud, local, in_process=in_process).start()
        made.append(harness)
        if fault.script is not None:
            fake_cloud.default = lambda _request: fault.script()  # type: ignore[misc]
        return harness

    yield build
    for harness in made:
        harness.stop()


def _events(harness: Harness) -> list[str]:
    return [
        entry.get("event", entry["kind"]) if entry["kind"] == "transition" else entry["kind"]
        for entry in harness.store.audit(SESSION)
        if entry["kind"] != "turn"
    ]


def _state(harness: Harness) -> str:
    data = harness.store.load_conversation(SESSION)
    assert data is not None
    return conversation_from_dict(data).state


def _call(harness: Harness, stream: bool, forced: bool) -> tuple[int, dict[str, str], bytes, Exception | None]:
    """One request through the SDK: status, headers, body bytes and the exception the SDK raised, if any."""
    client = harness.client(default_headers={"X-Trooper-Session": SESSION})
    extra = {"extra_body": {"x_force_local": True}} if forced else {}
    try:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello"}], stream=stream, **extra
        )
    except anthropic.APIStatusError as exc:
        return exc.status_code, dict(exc.response.headers), exc.response.content, exc
    except anthropic.APIConnectionError as exc:
        return 0, {}, b"", exc
    body = raw.http_response.read()
    failure: Exception | None = None
    try:
        parsed = raw.parse()
        if stream:
            for _ in parsed:  # type: ignore[union-attr]
                pass
    except Exception as exc:  # the SDK's verdict on what it received
        failure = exc
    return raw.status_code, dict(raw.headers), body, failure


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("mode", ["local-up", "local-down", "forced-local"])
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault_matrix(
    matrix_harness: Callable[..., Harness], fake_cloud: FakeAnthropic, fault: Fault, mode: str, stream: bool
) -> None:
    _check_row(matrix_harness(fault, mode != "local-down"), fake_cloud, fault, mode, stream)


#: Rows replayed through real sockets: where timing and connection handling differ from in-process.
SOCKET_ROWS = [
    (FAULTS[0], "local-up", True),
    (FAULTS[7], "local-down", False),
    (FAULTS[8], "local-up", True),
    (FAULTS[9], "local-up", True),
    (FAULTS[10], "local-up", True),
]


@pytest.mark.parametrize(
    ("fault", "mode", "stream"), SOCKET_ROWS, ids=[f"{f.name}-{m}-{'sse' if s else 'json'}" for f, m, s in SOCKET_ROWS]
)
def test_fault_matrix_over_sockets(
    matrix_harness: Callable[..., Harness], fake_cloud: FakeAnthropic, fault: Fault, mode: str, stream: bool
) -> None:
    """A smoke test of the matrix through a Trooper on a loopback socket, not in-process."""
    _check_row(matrix_harness(fault, mode != "local-down", in_process=False), fake_cloud, fault, mode, stream)


def _check_row(harness: Harness, fake_cloud: FakeAnthropic, fault: Fault, mode: str, stream: bool) -> None:
    status, headers, body, failure = _call(harness, stream, forced=mode == "forced-local")

    if mode == "forced-local":
        assert (status, failure) == (200, None)
        assert headers["x-trooper-route"] == "local"
        assert _state(harness) == "local"
        assert _events(harness) == ["force_local"]
        assert fake_cloud.requests == []
        return

    local_up = mode == "local-up"
    kind = fault.kind
    if kind == "reset" and stream:
        kind = "reset-after-first-byte"
    if kind in ("quota", "overload", "unreachable", "reset"):
        state = "quota_exhausted" if kind == "quota" else "offline"
        event = "quota_hit" if kind == "quota" else "connection_lost"
        if local_up:
            assert (status, failure) == (200, None), body
            assert headers["x-trooper-route"] == "local"
            assert headers["x-trooper-reason"] == ("quota" if kind == "quota" else "offline")
            assert _events(harness) == [event]
        else:
            assert status == fault.status
            assert failure is not None
            assert b'"type":"error"' in body.replace(b" ", b"")
            assert _events(harness) == [event, "local_failed"]
        assert _state(harness) == state
        if kind == "overload":
            assert len(fake_cloud.requests) == 3  # retried twice with back-off, then fell back
    elif kind == "client":
        assert status == 401
        assert isinstance(failure, anthropic.AuthenticationError)
        assert _state(harness) == "cloud"
        assert _events(harness) == []
    elif kind == "reset-after-first-byte":
        assert status == 200
        assert headers["x-trooper-route"] == "cloud"
        assert failure is not None
        assert b"event: error" in body
        assert _state(harness) == "cloud"
    elif kind == "garbage":
        assert status == 200
        assert headers["x-trooper-route"] == "cloud"
        assert script.DEFAULT_GARBAGE in body  # relayed verbatim: Trooper does not rewrite the cloud's bytes
        assert _state(harness) == "cloud"
    # Whatever happened, the next ordinary request is served normally.
    fake_cloud.default = None
    assert httpx_ok(harness)


def httpx_ok(harness: Harness) -> bool:

    return bool(harness.http().get("/").status_code == 200)


def test_recovery_end_to_end(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    """quota hit → local turns → retry-after passes → probe → the next turn goes to the cloud."""
    clock = FakeClock()
    harness = Harness(make_config(), MemoryStore(), fake_cloud, fake_local, clock=clock).start()
    try:
        client = harness.client(default_headers={"X-Trooper-Session": SESSION})
        fake_cloud.enqueue(script.rate_limited(retry_after=1))
        history: list[dict[str, Any]] = [{"role": "user", "content": "first"}]
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=history)
        assert (raw.headers["x-trooper-route"], raw.headers["x-trooper-state"]) == ("local", "quota_exhausted")
        history += [
            {"role": "assistant", "content": raw.parse().content[0].text},  # type: ignore[union-attr]
            {"role": "user", "content": "second"},
        ]
        before = len(fake_cloud.requests)
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=history)
        assert raw.headers["x-trooper-route"] == "local"
        assert len(fake_cloud.requests) == before  # no doomed cloud call while the quota is known gone
        # Another conversation of the same credential follows at its next turn.
        other = harness.client(default_headers={"X-Trooper-Session": "another"})
        raw_other = other.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]
        )
        assert raw_other.headers["x-trooper-state"] == "quota_exhausted"
        clock.advance(1.1)  # the retry-after passes
        history += [
            {"role": "assistant", "content": raw.parse().content[0].text},  # type: ignore[union-attr]
            {"role": "user", "content": "third"},
        ]
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=history)
        assert (raw.headers["x-trooper-route"], raw.headers["x-trooper-state"]) == ("cloud", "cloud")
        probe, turn = fake_cloud.requests[-2:]
        assert probe.path == "/v1/messages/count_tokens" and turn.path == "/v1/messages"
        events = [e["event"] for e in harness.store.audit(SESSION) if e["kind"] == "transition"]
        assert events == ["quota_hit", "local_turn", "cloud_recovered"]
        sent = turn.json()
        texts = str(sent["messages"])
        assert "first" not in texts and "second" not in texts  # fallback turns are local content
        assert "third" in texts
    finally:
        harness.stop()


def test_fallback_content_is_shareable_when_configured(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    config = make_config(share_fallback_after_recovery=True)
    harness = Harness(config, MemoryStore(), fake_cloud, fake_local).start()
    try:
        client = harness.client(default_headers={"X-Trooper-Session": SESSION})
        fake_cloud.enqueue(script.overloaded(), script.overloaded(), script.overloaded())
        fake_local.enqueue(local_script.Reply(text="fallback answer"), local_script.Reply(text="forced answer"))
        config_retry = harness.engine.config.anthropic  # type: ignore[union-attr]
        assert config_retry.overload_retries == 2
        first = client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "fallback prompt"}]
        )
        history: list[dict[str, Any]] = [
            {"role": "user", "content": "fallback prompt"},
            {"role": "assistant", "content": first.content[0].text},  # type: ignore[union-attr]
            {"role": "user", "content": "::local forced prompt"},
        ]
        forced = client.messages.create(model=MODEL, max_tokens=8, messages=history)
        history += [
            {"role": "assistant", "content": forced.content[0].text},  # type: ignore[union-attr]
            {"role": "user", "content": "back to the cloud"},
        ]
        harness.cloud_recovered()
        client.messages.create(model=MODEL, max_tokens=8, messages=history)
        sent = str(fake_cloud.last_json()["messages"])
        assert "fallback prompt" in sent and "fallback answer" in sent
        assert "forced prompt" not in sent and "forced answer" not in sent
    finally:
        harness.stop()


def test_a_hanging_probe_never_holds_up_a_local_turn(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    """The recovery probe is shared, bounded, and never awaited by a turn that runs locally anyway."""
    config = make_config()
    config = attrs.evolve(config, anthropic=attrs.evolve(config.anthropic, probe_timeout=0.5))
    clock = FakeClock()
    harness = Harness(config, MemoryStore(), fake_cloud, fake_local, clock=clock).start()
    try:
        client = harness.client(default_headers={"X-Trooper-Session": SESSION, "X-Canary-Header": "CANARY-HDR"})
        fake_cloud.enqueue(script.rate_limited(retry_after=1))
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "first"}])
        clock.advance(1.1)
        fake_cloud.count_tokens_default = script.hang()
        started = time.monotonic()
        forced = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "::local private"}]
        )
        assert forced.headers["x-trooper-route"] == "local"
        assert time.monotonic() - started < 0.4  # did not wait for the hanging probe
        started = time.monotonic()
        other = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "could be cloud"}]
        )
        assert time.monotonic() - started < 2.5  # waited at most the probe timeout
        assert other.headers["x-trooper-route"] == "local"
        probes = [r for r in fake_cloud.requests if r.path == "/v1/messages/count_tokens"]
        assert len(probes) == 1  # one probe in flight, shared
        assert probes[0].header("x-canary-header") is None  # the probe carries only credentials
    finally:
        harness.stop()
