"""The engine embedded in a service, without the HTTP server: same routing, same privacy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from trooper import AnthropicProvider, Engine, Incoming, MemoryStore, OllamaProvider
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script


def test_engine_without_http(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> None:
    secret = "CANARY-EMBED-7f3a"
    fake_local.enqueue(local_script.Reply(text=f"local says {secret}"))

    async def scenario() -> None:
        engine = Engine(
            cloud=AnthropicProvider(fake_cloud.url), local=OllamaProvider(fake_local.url), store=MemoryStore()
        )
        try:
            headers = {"x-api-key": "sk-ant-test", "x-trooper-session": "svc-1"}
            history = [{"role": "user", "content": f"private question {secret}"}]
            status, message, reply_headers = await engine.create(
                {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": history, "x_force_local": True}, headers
            )
            assert status == 200
            assert reply_headers["x-trooper-route"] == "local"
            assert secret in message["content"][0]["text"]
            history += [
                {"role": "assistant", "content": message["content"]},
                {"role": "user", "content": "and now for the cloud"},
            ]
            status, message, reply_headers = await engine.create(
                {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": history}, headers
            )
            assert status == 200
            assert reply_headers["x-trooper-route"] == "cloud"
            assert message["content"][0]["text"] == "ok"
            # Streaming through the bytes-level API works the same way.
            body = orjson.dumps(
                {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 64,
                    "stream": True,
                    "messages": [{"role": "user", "content": "stream it"}],
                }
            )
            reply = await engine.handle(Incoming("POST", "/v1/messages", "", list(headers.items()), body))
            assert reply.stream is not None
            chunks = b"".join([chunk async for chunk in reply.stream])
            assert b"event: message_stop" in chunks
        finally:
            await engine.aclose()

    asyncio.run(scenario())
    assert secret.encode() not in fake_cloud.received_bytes()
    assert len(fake_cloud.requests) == 2


def test_the_readme_embedding_snippet_runs_and_closes_cleanly(
    fake_cloud: FakeAnthropic, fake_local: FakeOllama, tmp_path: Path
) -> None:
    """The README's snippet as written, pointed at the fakes: it prints a local answer, and leaves no
    unclosed client session or socket behind (Python's development mode reports both)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Embedding", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    for public, fake in (("https://api.anthropic.com", fake_cloud.url), ("http://127.0.0.1:11434", fake_local.url)):
        assert public in snippet
        snippet = snippet.replace(public, fake)
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    fake_local.enqueue(local_script.Reply(text="kept on this machine"))
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-test-0000", "PYTHONDEVMODE": "1"}
    done = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "200 local kept on this machine" in done.stdout.splitlines()
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr
    assert fake_cloud.requests == []
