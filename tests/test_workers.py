"""``trooper serve --workers N``: several processes on one port and one store, as one Trooper.

The workers share the ledger, the cloud's health and the per-conversation lock through the store
(SQLite or Redis); the SQLite lock is a POSIX record lock that holds across processes and dies with
its holder. A worker killed with ``kill -9`` is replaced, and what it recorded before it died keeps
local content out of the cloud in every other worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.privacy_kit import canary, leaked
from tests.test_redis_server import RedisServer, TrooperProcess, store_url  # noqa: F401  (a fixture)
from trooper.store import SQLiteStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script

pytestmark = pytest.mark.timeout(90)

MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": "sk-ant-test-0000", "anthropic-version": "2023-06-01"}


def _hold(path: str, ready: str) -> None:
    async def hold() -> None:
        store = SQLiteStore(path)
        await store.lock("conversation", 60)
        os.close(os.open(ready, os.O_CREAT | os.O_WRONLY))
        await asyncio.sleep(60)

    asyncio.run(hold())


def test_the_sqlite_lock_holds_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    path, ready = tmp_path / "trooper.sqlite3", tmp_path / "ready"
    holder = multiprocessing.get_context("spawn").Process(target=_hold, args=(str(path), str(ready)), daemon=True)
    holder.start()
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists()

    async def take(seconds: float) -> float:
        started = time.monotonic()
        async with asyncio.timeout(seconds):
            await (await SQLiteStore(path).lock("conversation", 60)).release()
        return time.monotonic() - started

    with pytest.raises(TimeoutError):
        asyncio.run(take(0.3))  # another process holds it
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    assert asyncio.run(take(2)) < 0.5  # the kernel dropped the dead holder's lock at once


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def test_workers_share_the_ledger_and_a_dead_worker_is_replaced(
    store_url: str,  # noqa: F811
    tmp_path: Path,
    fake_cloud: FakeAnthropic,
    fake_local: FakeOllama,
) -> None:
    serve = TrooperProcess(fake_cloud.url, fake_local.url, store_url, tmp_path, server_workers="2").start()
    try:
        assert serve.process is not None
        workers = _children(serve.process.pid)
        assert len(workers) == 2
        secret = canary("W")
        fake_local.enqueue(local_script.Reply(text=f"the answer is {secret}"))
        history = [{"role": "user", "content": f"::local what is {canary('WP')}?"}]
        session = {**HEADERS, "X-Trooper-Session": "workers"}

        def turn(text: str) -> httpx.Response:
            history.append({"role": "user", "content": text})
            with httpx.Client(timeout=30) as client:  # a new connection: any worker may take it
                return client.post(
                    f"{serve.url}/v1/messages",
                    json={"model": MODEL, "max_tokens": 64, "messages": history},
                    headers=session,
                )

        first = httpx.post(
            f"{serve.url}/v1/messages",
            json={"model": MODEL, "max_tokens": 64, "messages": history},
            headers=session,
            timeout=30,
        )
        assert first.headers["x-trooper-route"] == "local"
        history.append({"role": "assistant", "content": first.json()["content"]})
        for n in range(6):
            reply = turn(f"cloud question {n}")
            assert reply.status_code == 200 and reply.headers["x-trooper-route"] == "cloud"
            history.append({"role": "assistant", "content": reply.json()["content"]})
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            len(_children(serve.process.pid)) < 2 or victim in _children(serve.process.pid)
        ):
            time.sleep(0.05)
        replaced = _children(serve.process.pid)
        assert len(replaced) == 2 and victim not in replaced
        for n in range(4):
            reply = turn(f"after the crash {n}")
            assert reply.status_code == 200, reply.text
            history.append({"role": "assistant", "content": reply.json()["content"]})
        assert leaked(fake_cloud, [secret]) == []
    finally:
        serve.stop()
    assert serve.process is not None and serve.process.returncode == 0
    assert _children_gone(workers | replaced)


def _children_gone(pids: set[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.05)
    return False
