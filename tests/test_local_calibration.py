"""The local memory's token estimate learns from the local model's own counts.

A local turn's budget is in the local model's tokens: after each local turn, Ollama's count of the
prompt (``prompt_eval_count``, whole prompt) is folded into the estimator the memory budgets with, as
the cloud's ``usage`` is for the cloud. Shown through the engine: the same request is estimated lower
after the model counted fewer tokens than estimated, and higher after it counted more.
"""

from __future__ import annotations

import pytest

from tests.conftest import Harness, make_config
from trooper.store import MemoryStore
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_ollama as local_script

MODEL = "claude-sonnet-4-6"
PROMPT = "::local " + "please look at the deployment notes and tell me what is left to do. " * 20


def _total(harness: Harness) -> int:
    raw = harness.client().messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.headers["x-trooper-route"] == "local"
    layers = dict(part.split("=") for part in raw.headers["x-trooper-memory"].split(";"))
    return int(layers["total"])


@pytest.mark.parametrize("ratio", [0.5, 1.6])
def test_the_local_estimate_follows_the_local_models_counts(
    fake_cloud: FakeAnthropic, fake_local: FakeOllama, ratio: float
) -> None:
    harness = Harness(make_config(), MemoryStore(), fake_cloud, fake_local).start()
    try:
        first = _total(harness)
        for _ in range(6):
            fake_local.enqueue(local_script.Reply(prompt_eval_count=int(first * ratio)))
            _total(harness)
        after = _total(harness)
        assert harness.engine is not None and harness.engine.memory.local_observations >= 6
        assert after < first if ratio < 1 else after > first
    finally:
        harness.stop()
