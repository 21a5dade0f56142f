"""The real Claude Code CLI through Trooper: a local turn with a tool loop, then cloud turns (one with a tool loop).

Claude Code is the client Trooper's users care about most, and it does things no hand-written request
does (``?beta=true``, a ``system`` message inside ``messages``, its own session header, tool loops it
runs itself). This test runs its actual binary, from npm, against Trooper on loopback, which talks to
the fake upstreams. ``.ci/run`` installs the binary; elsewhere install it with::

    npm install --prefix .cache/claude-code @anthropic-ai/claude-code@2.1.332

Nothing may leave the machine: Claude Code's optional traffic is switched off, and its HTTP(S) proxy
points at a loopback socket that must see no connection by the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import Harness, make_config
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_anthropic as script
from trooper.testing import fake_ollama as local_script

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / ".cache" / "claude-code"
VERSION = "2.1.332"


def _binary() -> Path | None:
    given = os.environ.get("TROOPER_CLAUDE_CODE")
    if given:
        return Path(given)
    found = sorted(INSTALL.glob("node_modules/@anthropic-ai/claude-code-*/claude"))
    return found[0] if found else None


@pytest.fixture
def claude() -> Path:
    binary = _binary()
    if binary is None or not binary.exists():
        hint = f"install it: npm install --prefix .cache/claude-code @anthropic-ai/claude-code@{VERSION}"
        if os.environ.get("TROOPER_REQUIRE_CLAUDE_CODE"):
            pytest.fail(f"Claude Code is required here but not installed; {hint}")
        pytest.skip(f"Claude Code is not installed; {hint}")
    return binary


@pytest.fixture
def trooper(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> Iterator[Harness]:
    """Trooper on a real loopback socket: Claude Code is a process of its own."""
    harness = Harness(make_config(), MemoryStore(), fake_cloud, fake_local, in_process=False).start()
    yield harness
    harness.stop()


@pytest.fixture
def dead_proxy() -> Iterator[socket.socket]:
    """A loopback listener given to Claude Code as its proxy: any non-loopback request would land here."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _run(claude: Path, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(claude), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"claude {' '.join(args)} exited {done.returncode}: {done.stdout} {done.stderr}"
    return done


def _environment(trooper: Harness, proxy_socket: socket.socket, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Claude Code's environment (a fresh HOME, optional traffic off, a dead proxy) and its working folder."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    proxy = f"http://127.0.0.1:{proxy_socket.getsockname()[1]}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": trooper.url,
        "ANTHROPIC_API_KEY": "sk-ant-test-not-a-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return env, work


def test_claude_code_local_tool_loop_then_cloud_turn(
    claude: Path,
    trooper: Harness,
    fake_cloud: FakeAnthropic,
    *,
    fake_local: FakeOllama,
    dead_proxy: socket.socket,
    tmp_path: Path,
) -> None:
    prompt_secret, tool_secret, reply_secret = (f"CANARY-{k}-{uuid.uuid4().hex[:10]}" for k in ("P", "T", "R"))
    env, work = _environment(trooper, dead_proxy, tmp_path)

    # Turn 1, local: the local model asks for a shell command, Claude Code runs it, the model answers.
    fake_local.enqueue(
        local_script.Reply(
            text="",
            tool_calls=[
                {"name": "Bash", "arguments": {"command": f"echo {tool_secret}", "description": "print the vault"}}
            ],
        ),
        local_script.Reply(text=f"The vault is at {reply_secret}."),
    )
    first = _run(claude, env, work, "-p", f"::local where is the vault? {prompt_secret}", "--allowedTools", "Bash")
    assert reply_secret in first.stdout
    assert not fake_cloud.requests, "a local turn sent something to the cloud"
    chats = fake_local.chat_requests()
    assert len(chats) == 2
    tool_messages = [m for m in chats[1]["messages"] if m["role"] == "tool"]
    assert tool_messages and tool_secret in tool_messages[0]["content"]  # Claude Code really ran the command
    assert all("::local" not in str(m.get("content")) for m in chats[0]["messages"])

    # Turn 2, cloud: the same conversation continued; nothing of turn 1 may reach the cloud.
    fake_cloud.enqueue(script.text("cloud answer, with nothing local in sight"))
    second = _run(claude, env, work, "-p", "--continue", "and now a cloud question")
    assert "cloud answer" in second.stdout
    assert len(fake_cloud.requests) == 1
    sent = fake_cloud.requests[0]
    assert (sent.path, sent.query) == ("/v1/messages", "beta=true")
    received = fake_cloud.received_bytes()
    for secret in (prompt_secret, tool_secret, reply_secret):
        assert secret.encode() not in received, f"{secret} reached the cloud"
    body = orjson.loads(sent.body)
    assert body["messages"][0]["role"] == "user"
    assert "and now a cloud question" in orjson.dumps(body["messages"]).decode()

    # Turn 3, cloud with a tool loop Claude Code runs: the continuation stays in the cloud.
    fake_cloud.enqueue(
        script.tool_use("Bash", {"command": "echo cloud-tool-ran", "description": "print"}),
        script.text("cloud saw the tool's output"),
    )
    chats_before = len(fake_local.chat_requests())
    third = _run(claude, env, work, "-p", "--continue", "run a command in the cloud", "--allowedTools", "Bash")
    assert "cloud saw the tool's output" in third.stdout
    assert len(fake_local.chat_requests()) == chats_before
    follow_up = orjson.loads(fake_cloud.requests[-1].body)["messages"]
    results = [
        b for m in follow_up if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_result"
    ]
    assert "cloud-tool-ran" in orjson.dumps(results).decode()
    received = fake_cloud.received_bytes()
    for secret in (prompt_secret, tool_secret, reply_secret):
        assert secret.encode() not in received, f"{secret} reached the cloud"

    with pytest.raises(BlockingIOError):
        dead_proxy.accept()  # nothing tried to leave the machine


def test_claude_code_keeps_working_when_the_quota_is_gone(
    claude: Path,
    trooper: Harness,
    fake_cloud: FakeAnthropic,
    *,
    fake_local: FakeOllama,
    dead_proxy: socket.socket,
    tmp_path: Path,
) -> None:
    """A 429 from the cloud: Claude Code gets the local model's answer instead of an error, and exits 0."""
    env, work = _environment(trooper, dead_proxy, tmp_path)
    fake_cloud.enqueue(script.rate_limited(retry_after=60))
    fake_local.enqueue(local_script.Reply(text="answered locally while the quota is out"))
    done = _run(claude, env, work, "-p", "summarise the plan")
    assert "answered locally while the quota is out" in done.stdout
    assert len(fake_cloud.requests) == 1  # Trooper answered; Claude Code had nothing to retry
    assert trooper.store.audit(trooper.store.list_conversations()[0]["id"])[0]["event"] == "quota_hit"
    with pytest.raises(BlockingIOError):
        dead_proxy.accept()


def test_claude_code_interrupted_local_answer_then_continue(
    claude: Path,
    trooper: Harness,
    fake_cloud: FakeAnthropic,
    *,
    fake_local: FakeOllama,
    dead_proxy: socket.socket,
    tmp_path: Path,
) -> None:
    """Ctrl-C while a ``::local`` answer streams: Claude Code keeps the partial answer and notes the
    interruption; ``--continue`` re-sends both. The partial never reaches the cloud, and the next cloud
    turn is answered, not refused."""
    env, work = _environment(trooper, dead_proxy, tmp_path)
    words = [f"CANARY-W{i}-{uuid.uuid4().hex[:8]}" for i in range(40)]
    fake_local.enqueue(local_script.Reply(text=" ".join(words), delay=0.15))
    running = subprocess.Popen(
        [str(claude), "-p", "::local tell me the long secret story"],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not fake_local.chat_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # a few words have streamed
    running.send_signal(signal.SIGINT)
    running.communicate(timeout=60)
    transcripts = list((Path(env["HOME"]) / ".claude" / "projects").glob("*/*.jsonl"))
    kept = [json.loads(line) for path in transcripts for line in path.read_text().splitlines()]
    partial = " ".join(
        str(entry["message"]["content"]) for entry in kept if entry.get("type") == "assistant" and "message" in entry
    )
    received = [word for word in words if word in partial]
    assert received and len(received) < len(words), "the answer was not cut mid-stream"
    assert "[Request interrupted by user]" in " ".join(str(entry.get("message")) for entry in kept)

    fake_cloud.enqueue(script.text("cloud answer after the interruption"))
    resumed = _run(claude, env, work, "-p", "--continue", "now answer in the cloud")
    assert "cloud answer after the interruption" in resumed.stdout
    sent = fake_cloud.received_bytes()
    assert b"now answer in the cloud" in sent
    for word in words:
        assert word.encode() not in sent, f"{word} of the interrupted local answer reached the cloud"
    with pytest.raises(BlockingIOError):
        dead_proxy.accept()


@pytest.fixture
def small_local() -> Iterator[FakeOllama]:
    """An ordinary local model: a 16K-token window, as many people run Ollama with."""
    with FakeOllama(context_length=16_384) as fake:
        yield fake


def test_claude_code_local_turn_on_a_16k_local_model(
    claude: Path, fake_cloud: FakeAnthropic, small_local: FakeOllama, dead_proxy: socket.socket, tmp_path: Path
) -> None:
    """Claude Code's system prompt and tool schemas alone come near a 16K window: the local turn still
    runs, with the tools' descriptions (and, only if need be, the tools not used yet and the system
    prompt's tail) reduced, and says so in its record; the prompt the model got fits its window."""
    harness = Harness(make_config(), MemoryStore(), fake_cloud, small_local, in_process=False).start()
    try:
        env, work = _environment(harness, dead_proxy, tmp_path)
        secret = f"CANARY-{uuid.uuid4().hex[:10]}"
        small_local.enqueue(
            local_script.Reply(
                text="",
                tool_calls=[{"name": "Bash", "arguments": {"command": f"echo {secret}", "description": "print"}}],
            ),
            local_script.Reply(text=f"Printed {secret}."),
        )
        done = _run(claude, env, work, "-p", "::local print the secret", "--allowedTools", "Bash")
        assert secret in done.stdout
        assert not fake_cloud.requests
        chats = small_local.chat_requests()
        assert len(chats) == 2
        for chat in chats:
            assert chat["options"]["num_ctx"] == 16_384
            assert local_script.prompt_tokens(chat) + chat["options"].get("num_predict", 0) <= 16_384
        names = {tool["function"]["name"] for tool in chats[0]["tools"]}
        assert "Bash" in names
        session = harness.store.list_conversations()[0]["id"]
        turns = [record for record in harness.store.audit(session) if record["kind"] == "turn"]
        assert len(turns) == 2 and all(record["status"] == 200 and record["route"] == "local" for record in turns)
        # Claude Code's preamble does not leave its first prompt room whole: the descriptions give way.
        assert turns[0]["reductions"][:1] == ["tool-descriptions"], turns[0]
        assert turns[0]["memory"]["tools"] < turns[0]["memory"]["total"]
    finally:
        harness.stop()
    with pytest.raises(BlockingIOError):
        dead_proxy.accept()
