"""``trooper serve`` as a user starts it: a busy port, unreachable upstreams, the in-memory store."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from trooper.testing import FakeAnthropic, FakeOllama, unused_port_url


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROOPER_")}
    env.update({"TROOPER_CONFIG": os.devnull, "TROOPER_STORE": str(tmp_path / "trooper.sqlite3"), **settings})
    return env


class Serving:
    """A ``trooper serve`` subprocess whose stderr lines are read as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trooper", "serve", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 20) -> str:
        """The first stderr line (read so far or to come) matching ``pattern``."""
        for line in self.lines:
            if re.search(pattern, line):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}")

    @property
    def url(self) -> str:
        match = re.search(r"listening on (http://\S+)", self.until("listening on"))
        assert match is not None
        return match.group(1)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for process in started:
        process.kill()


def test_a_busy_port_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "trooper", "serve", "--port", str(port)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trooper: cannot listen on 127.0.0.1:{port}: address already in use")
    assert "listening" not in done.stderr
    assert not (tmp_path / "trooper.sqlite3").exists()  # nothing was opened before the port was ours


def test_unreachable_upstreams_are_reported_and_serving_goes_on(tmp_path: Path, serving: list[Serving]) -> None:
    cloud, local = unused_port_url(), unused_port_url()
    env = _env(
        tmp_path,
        TROOPER_ANTHROPIC_BASE_URL=cloud,
        TROOPER_OLLAMA_BASE_URL=local,
        TROOPER_STORE="memory",
        TROOPER_SERVER_EPHEMERAL="1",  # the acknowledgement through the environment
    )
    process = Serving(["--port", "0"], env)
    serving.append(process)
    url = process.url
    cloud_line = process.until(r"^\s+(ok|FAIL)\s+cloud:")
    local_line = process.until(r"^\s+(ok|FAIL)\s+local provider:")
    assert cloud_line.split()[0] == "FAIL" and f"cannot reach {cloud}" in cloud_line and "fall back" in cloud_line
    assert local_line.split()[0] == "FAIL" and f"cannot reach Ollama at {local}" in local_line
    assert httpx.head(url + "/", timeout=5).status_code == 200  # still serving
    assert process.interrupt() == 0


def test_reachable_upstreams_and_a_missing_model_are_reported(
    fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path, serving: list[Serving]
) -> None:
    env = _env(tmp_path, TROOPER_ANTHROPIC_BASE_URL=fake_cloud.url, TROOPER_OLLAMA_BASE_URL=fake_local.url)
    process = Serving(
        ["--port", "0", "--ephemeral"], {**env, "TROOPER_STORE": "memory", "TROOPER_OLLAMA_MODEL": "nope"}
    )
    serving.append(process)
    assert process.until(r"^\s+(ok|FAIL)\s+cloud:").split()[0] == "ok"
    assert process.until(r"^\s+(ok|FAIL)\s+local provider:").split()[0] == "ok"
    model = process.until(r"^\s+(ok|FAIL)\s+local model:")
    assert model.split()[0] == "FAIL" and "ollama pull nope" in model
    assert process.interrupt() == 0


@pytest.mark.parametrize("settings", [{}, {"TROOPER_SERVER_EPHEMERAL": "false"}])
def test_serve_refuses_the_memory_store_unless_told(tmp_path: Path, settings: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trooper", "serve", "--port", "0"],
        env=_env(tmp_path, TROOPER_STORE="memory", **settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trooper: refusing to serve on store.path = memory")
    assert "--ephemeral" in lines[0] and "TROOPER_SERVER_EPHEMERAL=1" in lines[0]


def test_a_bad_port_option_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trooper", "serve", "--port", "70000"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "trooper: bad setting server.port (from --port): must be between 0 and 65535, got 70000"
    ]
