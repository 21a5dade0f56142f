"""Record before send, over real sockets: a real ``trooper serve`` process, a client that hangs up, a kill -9.

The ledger must hold every byte of a local reply before the client gets it, so that neither a
client that goes away mid-stream nor a crash of Trooper mid-stream lets the partial answer — which
the client keeps and re-sends — reach the cloud. These tests run ``trooper serve`` as its own
process between the fakes, stream a slow local answer, cut it, and look at what the cloud receives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.privacy_kit import read_deltas
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script

KEY = {"x-api-key": "sk-ant-test-0000", "anthropic-version": "2023-06-01", "X-Trooper-Session": "stream-session"}
MODEL = "claude-sonnet-4-6"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Serve:
    """``trooper serve`` in its own process, on a store that outlives it."""

    def __init__(self, cloud: FakeAnthropic, local: FakeOllama, store: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TROOPER_PORT": str(self.port),
            "TROOPER_STORE": str(store),
            "TROOPER_ANTHROPIC_BASE_URL": cloud.url,
            "TROOPER_OLLAMA_BASE_URL": local.url,
            "TROOPER_OLLAMA_MODEL": "qwen3",
            "TROOPER_CONFIG": str(store.parent / "absent.toml"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trooper", "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("trooper serve did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def serve(fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path) -> Iterator[Serve]:
    server = Serve(fake_cloud, fake_local, tmp_path / "trooper.sqlite3").start()
    yield server
    server.stop()


def _words(count: int) -> list[str]:
    return [f"CANARY-S{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]


def _read_some(url: str, body: dict[str, Any], *, deltas: int) -> tuple[httpx.Client, httpx.Response, str]:
    """Open a stream and read until ``deltas`` text deltas arrived; the response stays open."""
    client = httpx.Client(timeout=30)
    response = client.send(client.build_request("POST", f"{url}/v1/messages", json=body, headers=KEY), stream=True)
    assert response.status_code == 200
    return client, response, read_deltas(response.iter_lines(), deltas)


def _continue(url: str, history: list[dict[str, Any]], partial: str) -> httpx.Response:
    messages = [
        *history,
        {"role": "assistant", "content": [{"type": "text", "text": partial}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "[Request interrupted by user]"}, {"type": "text", "text": "go on"}],
        },
    ]
    return httpx.post(f"{url}/v1/messages", json={"model": MODEL, "max_tokens": 32, "messages": messages}, headers=KEY)


def test_a_client_that_hangs_up_cancels_the_local_answer_and_the_partial_stays_local(
    serve: Serve, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    words = _words(60)
    fake_local.enqueue(local_script.Reply(text=" ".join(words), delay=0.1))
    history = [{"role": "user", "content": "::local tell me everything"}]
    body = {"model": MODEL, "max_tokens": 512, "stream": True, "messages": history}
    client, response, partial = _read_some(serve.url, body, deltas=4)
    response.close()
    client.close()
    hung_up = time.monotonic()
    # The conversation's lock is released as soon as the stream is cancelled, not when the model
    # would have finished (60 words at 0.1 s): the next request of the conversation is not kept waiting.
    reply = _continue(serve.url, history, partial)
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - hung_up < 3.0
    assert reply.headers["x-trooper-route"] == "cloud"
    received = fake_cloud.received_bytes()
    assert b"go on" in received
    for word in words:
        assert word.encode() not in received


def test_kill_9_mid_stream_loses_no_ledger_record_for_bytes_the_client_got(
    serve: Serve, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    words = _words(60)
    fake_local.enqueue(local_script.Reply(text=" ".join(words), delay=0.05))
    history = [{"role": "user", "content": "::local tell me everything"}]
    body = {"model": MODEL, "max_tokens": 512, "stream": True, "messages": history}
    client, response, partial = _read_some(serve.url, body, deltas=6)
    serve.kill()
    response.close()
    client.close()
    serve.start()  # a new process on the same store
    got = [word for word in words if word in partial]
    assert got
    reply = _continue(serve.url, history, partial)
    assert reply.status_code == 200, reply.text
    # A word the client received, pasted on its own into a new prompt: the ledger knew it before the crash.
    pasted = httpx.post(
        f"{serve.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": f"what is {got[-1]}?"}]},
        headers={**KEY, "X-Trooper-Session": "another"},
    )
    assert pasted.status_code == 403
    received = fake_cloud.received_bytes()
    for word in words:
        assert word.encode() not in received
