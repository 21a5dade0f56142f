"""The model-written SITREP in use: asked of the local model in the background, kept, used, never sent out.

Through a real engine between the fakes, with the official SDK as the client. The fake Ollama tells a
summary request from a turn by its prompt, so the order in which they reach it does not matter:

* after a local turn whose memory has a middle, the local model is asked for a SITREP; it is stored
  with the conversation and audited (turn numbers and sizes, never text), and the next local turn
  gets it, marked as written by the local model;
* it is local content: the cloud never receives it, later cloud turns included, and new content
  quoting it is refused by the egress guard, as any local content is;
* a failing or slow local model, a full queue and a shutdown mid-summary leave the client with
  the extractive SITREP and nothing to notice; ``extractive`` asks for nothing at all.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import attrs
import orjson
import pytest

from tests.conftest import Harness, make_config
from trooper.config import Config, MemoryConfig, OllamaConfig
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script
from trooper.testing._recording import RecordedRequest

MODEL = "claude-sonnet-4-6"
SUMMARY_PROMPT = "You maintain the SITREP"
_serial = itertools.count()


def _config(mode: str, **memory: Any) -> Config:
    config = make_config()
    return attrs.evolve(
        config,
        ollama=OllamaConfig(model="qwen3", context_length=2048),
        memory=MemoryConfig(sitrep=mode, **memory),  # type: ignore[arg-type]
    )


def _is_summary(recorded: RecordedRequest) -> bool:
    return SUMMARY_PROMPT in recorded.body.decode()


class Router:
    """Scripts for the fake Ollama: summaries from one list, turns from another, whatever the order."""

    def __init__(self, local: FakeOllama) -> None:
        self.local = local
        self.summaries: list[local_script.Script] = []
        self.turns: list[local_script.Script] = []

    def __call__(self, recorded: RecordedRequest) -> Any:
        queue = self.summaries if _is_summary(recorded) else self.turns
        script = queue.pop(0) if queue else local_script.Reply(text="local ok")
        self.local.enqueue(self)  # always one router waiting for the next request
        return script(recorded) if callable(script) else script

    def install(self) -> Router:
        self.local.enqueue(self)
        return self


def _history(turns: int) -> list[dict[str, Any]]:
    """A long cloud conversation: enough middle for the memory of a 2,048-token model to summarise."""
    out: list[dict[str, Any]] = []
    for number in range(turns):
        out.append({"role": "user", "content": f"Step {number}: we reviewed the deployment plan part {number} " * 6})
        out.append({"role": "assistant", "content": f"Noted step {number}; the checklist item {number} is done. " * 6})
    return out


def _summary_requests(local: FakeOllama) -> list[dict[str, Any]]:
    return [body for body in local.chat_requests() if SUMMARY_PROMPT in orjson.dumps(body).decode()]


def _turn_requests(local: FakeOllama) -> list[dict[str, Any]]:
    return [body for body in local.chat_requests() if SUMMARY_PROMPT not in orjson.dumps(body).decode()]


@pytest.fixture
def make(fake_cloud: FakeAnthropic, fake_local: FakeOllama) -> Iterator[Callable[[Config], Harness]]:
    made: list[Harness] = []

    def build(config: Config) -> Harness:
        harness = Harness(config, MemoryStore(), fake_cloud, fake_local).start()
        made.append(harness)
        return harness

    yield build
    for harness in made:
        harness.stop()


def _local_turn(harness: Harness, session: str, history: list[dict[str, Any]], prompt: str) -> anthropic.types.Message:
    client = harness.client(default_headers={"X-Trooper-Session": session})
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=128, messages=[*history, {"role": "user", "content": f"::local {prompt}"}]
    )
    assert raw.headers["x-trooper-route"] == "local"
    return raw.parse()


def _written(harness: Harness) -> None:
    assert harness.engine is not None
    harness.run(harness.engine.summaries.settle())


def _audit_kinds(harness: Harness, session: str) -> list[str]:
    return [entry["kind"] for entry in harness.store.audit(session) if entry["kind"].startswith("sitrep")]


def test_a_summary_is_written_kept_used_and_never_sent_to_the_cloud(
    make: Callable[[Config], Harness], fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    harness = make(_config("model"))
    router = Router(fake_local).install()
    secret = f"SITREPCANARY{next(_serial):04d}x91"
    router.summaries.append(local_script.Reply(text=f"[t3] The plan was reviewed; codename {secret} agreed."))
    history = _history(14)
    reply = _local_turn(harness, "s-model", history, "what is left to do?")
    _written(harness)

    assert len(_summary_requests(fake_local)) == 1  # asked once, of the local model
    stored = harness.store.summaries_get("s-model")
    assert len(stored) == 1 and secret in stored[0]["text"]
    assert _audit_kinds(harness, "s-model") == ["sitrep_written"]
    written = next(e for e in harness.store.audit("s-model") if e["kind"] == "sitrep_written")
    assert secret not in orjson.dumps(written).decode()  # the audit says how much, never what

    history += [
        {"role": "user", "content": "::local what is left to do?"},
        {"role": "assistant", "content": reply.content[0].text},
    ]  # type: ignore[union-attr]
    _local_turn(harness, "s-model", history, "and after that?")
    used = orjson.dumps(_turn_requests(fake_local)[-1]).decode()
    assert secret in used and "written by the local model" in used
    turns = [entry for entry in harness.store.audit("s-model") if entry["kind"] == "turn"]
    assert [entry["sitrep"] for entry in turns] == ["extractive", "model"]

    # A cloud turn of the same conversation, and one that quotes the summary: never sent.
    client = harness.client(default_headers={"X-Trooper-Session": "s-model"})
    client.messages.create(model=MODEL, max_tokens=16, messages=[*history, {"role": "user", "content": "thanks"}])
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": f"what does {secret} mean here?"}]
        )
    assert secret.encode() not in fake_cloud.received_bytes()


@pytest.mark.parametrize("failure", ["fails", "slow"])
def test_a_failing_or_slow_local_model_leaves_the_extractive_sitrep(
    make: Callable[[Config], Harness], fake_local: FakeOllama, failure: str
) -> None:
    harness = make(_config("model", sitrep_timeout=0.3))
    router = Router(fake_local).install()
    bad = local_script.HttpError(500, "boom") if failure == "fails" else local_script.Reply(text="x", headers_delay=2.0)
    router.summaries += [bad, bad]
    history = _history(14)
    _local_turn(harness, "s-bad", history, "status?")
    _written(harness)
    assert harness.store.summaries_get("s-bad") == []
    assert _audit_kinds(harness, "s-bad") == ["sitrep_given_up"]
    second = _local_turn(harness, "s-bad", history, "status again?")  # the client notices nothing
    assert second.content[0].type == "text"
    assert "written by the local model" not in orjson.dumps(_turn_requests(fake_local)[-1]).decode()


def test_extractive_asks_for_nothing_and_a_short_conversation_needs_nothing(
    make: Callable[[Config], Harness], fake_local: FakeOllama
) -> None:
    extractive = make(_config("extractive"))
    Router(fake_local).install()
    _local_turn(extractive, "s-extractive", _history(14), "status?")
    _written(extractive)
    model = make(_config("model"))
    _local_turn(model, "s-short", _history(1), "status?")  # no middle: nothing to summarise
    _written(model)
    assert _summary_requests(fake_local) == []


def test_a_full_queue_skips_and_shutdown_cancels(make: Callable[[Config], Harness], fake_local: FakeOllama) -> None:
    harness = make(_config("model", sitrep_queue=1, sitrep_timeout=60))
    router = Router(fake_local).install()
    router.summaries += [local_script.Reply(text="slow", headers_delay=30.0) for _ in range(3)]
    history = _history(14)
    for number in range(3):
        _local_turn(harness, f"s-queue-{number}", history, "status?")
    assert harness.engine is not None
    summaries = harness.engine.summaries
    # One in progress, one waiting; the third was skipped (and will be planned again next turn).
    assert summaries.pending == 2 and summaries.running
    started = time.monotonic()
    harness.stop()  # closes the engine: the summary in progress is cancelled, not waited for
    assert time.monotonic() - started < 10
    assert not summaries.running


def test_auto_uses_the_summary_once_it_covers_half_the_middle(
    make: Callable[[Config], Harness], fake_local: FakeOllama
) -> None:
    harness = make(_config("auto"))
    router = Router(fake_local).install()
    router.summaries.append(local_script.Reply(text="[t2] AUTOSUMMARY the plan is reviewed."))
    history = _history(14)
    _local_turn(harness, "s-auto", history, "status?")
    _written(harness)
    _local_turn(harness, "s-auto", history, "status?")
    assert "AUTOSUMMARY" in orjson.dumps(_turn_requests(fake_local)[-1]).decode()
