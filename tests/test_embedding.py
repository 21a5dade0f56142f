"""The engine embedded in a service, without the HTTP server: same routing, same privacy."""

from __future__ import annotations

import asyncio

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
