"""``trooper demo`` and ``trooper fake``: seeing Trooper work with no key, no network and no Ollama."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import anthropic
import httpx
from click.testing import CliRunner
from rich.console import Console

from tests.conftest import QUIET
from trooper import demo
from trooper.audit import configure_logging
from trooper.cli import main
from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url

EXPECTED_ROUTES = [("cloud", "default"), ("local", "forced:marker"), ("cloud", "default"), ("local", "quota")]
EXPECTED_ROUTES.append(("cloud", "recovered"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TROOPER_", "ANTHROPIC_"))}
    return {**env, "TROOPER_CONFIG": os.devnull, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}


def test_the_demo_plays_its_script_in_process(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None)
    with demo.running(fake_cloud, fake_local) as stack:
        outcome = demo.play(stack, console)
    assert [(turn.route, turn.reason) for turn in outcome.turns] == EXPECTED_ROUTES
    assert outcome.leaked == () and outcome.ok
    received = fake_cloud.received_bytes()
    assert received and all(canary.encode() not in received for canary in demo.CANARIES)
    # The cloud turn after the local one shows what the cloud got in its place, whatever the wording.
    after_local = outcome.turns[2].cloud_saw
    assert after_local[-1][0] == "user" and after_local[-1][1].endswith("Thanks. How should we back it up?")
    assert all(demo.CANARIES[0] not in text and demo.CANARIES[1] not in text for _, text in after_local)
    assert {"force_local", "quota_hit", "cloud_recovered"} <= {e.get("event") for e in outcome.audit}
    assert "stateDiagram-v2" in outcome.graph and "Class cloud s_active" in outcome.graph
    demo.report(outcome, console)
    assert "check: ok" in out.getvalue()


def test_the_demo_command_exits_0_with_the_expected_routes(fake_cloud: FakeAnthropic) -> None:
    """``trooper demo`` as a command, in this process (the subprocess test below runs it with --serve)."""
    try:
        done = CliRunner().invoke(main, ["demo"], env={"COLUMNS": "100"})
    finally:
        configure_logging("info", QUIET)  # the command configured logging for its own run
    assert done.exit_code == 0, done.output
    assert re.findall(r"route:\s+(\w+)\s+reason:\s+(\S+)", done.output) == EXPECTED_ROUTES
    assert re.search(r"^check: ok: none of the 3 local canaries", done.output, re.M)


class _Lines:
    """Reads a subprocess's stdout lines in a thread, so a test can wait for one with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} in {self.seen}")


def _start(*args: str) -> tuple[subprocess.Popen[str], _Lines]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trooper", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    return proc, _Lines(proc)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_trooper_demo_end_to_end_then_serving() -> None:
    """The demo as a user runs it: its script, its final check, then the stack kept up for a client."""
    proc, lines = _start("demo", "--serve")
    try:
        url = lines.until(r"^ANTHROPIC_BASE_URL=(http://127\.0\.0\.1:\d+)$").group(1)
        output = "\n".join(lines.seen)
        assert re.findall(r"route:\s+(\w+)\s+reason:\s+(\S+)", output) == EXPECTED_ROUTES
        assert "stateDiagram-v2" in output and "audit trail of demo-session" in output
        assert re.search(r"^check: ok: none of the 3 local canaries", output, re.M)
        client = anthropic.Anthropic(base_url=url, api_key=demo.DEMO_KEY, max_retries=0, timeout=10)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "::local hi there"}]
        )
        assert raw.headers["x-trooper-route"] == "local"
        cloud = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "and the cloud?"}]
        )
        assert cloud.content[0].type == "text" and "messages=1" in cloud.content[0].text
    finally:
        code = _stop(proc)
    assert code == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_trooper_fake_runs_each_fake_on_a_port() -> None:
    started = []
    for kind, path in (("anthropic", "/v1/models"), ("ollama", "/api/tags")):
        port = int(unused_port_url().rsplit(":", 1)[1])
        started.append((kind, path, port, *_start("fake", kind, "--port", str(port))))
    try:
        for kind, path, port, _, lines in started:
            url = lines.until(rf"^fake {kind} listening on (http://127\.0\.0\.1:{port})$").group(1)
            assert httpx.get(url + path, timeout=5).status_code == 200
    finally:
        codes = [_stop(proc) for *_, proc, _ in started]
    assert codes == [0, 0]


def test_trooper_fake_on_a_busy_port_is_one_line(fake_cloud: FakeAnthropic) -> None:
    port = fake_cloud.url.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "trooper", "fake", "anthropic", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"trooper: cannot listen on 127.0.0.1:{port}: address already in use"]


def test_the_fakes_take_a_port() -> None:
    port = int(unused_port_url().rsplit(":", 1)[1])
    with FakeOllama(port=port) as local:
        assert local.url == f"http://127.0.0.1:{port}"
    port = int(unused_port_url().rsplit(":", 1)[1])
    with FakeAnthropic(port=port) as cloud:
        assert cloud.url == f"http://127.0.0.1:{port}"
