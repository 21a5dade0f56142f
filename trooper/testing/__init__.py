"""Fakes and harnesses for Trooper's tests and for its users' tests.

``FakeAnthropic`` speaks the Anthropic Messages API and ``FakeOllama`` Ollama's native API, byte for
byte; both record every request they receive, so a test can check exactly which bytes reached each
side. Reply scripts live in :mod:`trooper.testing.fake_anthropic` (``text``, ``tool_use``,
``rate_limited``…) and :mod:`trooper.testing.fake_ollama` (``Reply``, ``HttpError``…).

The fakes run on a real ``127.0.0.1`` socket (``with FakeAnthropic() as fake: fake.url``) or
in-process as ASGI apps (``fake.app``). :class:`TrooperHarness` puts a real engine and server between
them — in-process by default, on sockets when asked — and hands out the official SDK's client, so a
test drives Trooper exactly as an application would, with no mock of Trooper's own code::

    with FakeAnthropic() as cloud, FakeOllama() as local:
        harness = TrooperHarness(Config(), MemoryStore(), cloud, local).start()
        harness.client().messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=history)
        assert cloud.last_json()["messages"] == history
        harness.stop()

:mod:`trooper.testing.inprocess` holds the transports underneath (an ASGI app as the cloud
provider's transport, as an ``httpx`` transport, or served on its own loop for synchronous clients);
:class:`FakeClock` moves time by hand for tests of back-off and recovery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trooper.testing import fake_anthropic, fake_ollama
from trooper.testing._runner import LoopbackServer
from trooper.testing.fake_anthropic import FakeAnthropic
from trooper.testing.fake_ollama import FakeOllama, unused_port_url

if TYPE_CHECKING:
    from trooper.testing.harness import FakeClock, TrooperHarness
    from trooper.testing.inprocess import ASGITransport, HttpxASGITransport, InProcessServer

#: Loaded on first use: the harness needs the ``anthropic`` SDK (a test dependency) and the whole
#: engine, which ``trooper fake`` and ``trooper demo`` have no use for.
_LAZY = {
    "FakeClock": "trooper.testing.harness",
    "TrooperHarness": "trooper.testing.harness",
    "ASGITransport": "trooper.testing.inprocess",
    "HttpxASGITransport": "trooper.testing.inprocess",
    "InProcessServer": "trooper.testing.inprocess",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ASGITransport",
    "FakeAnthropic",
    "FakeClock",
    "FakeOllama",
    "HttpxASGITransport",
    "InProcessServer",
    "LoopbackServer",
    "TrooperHarness",
    "fake_anthropic",
    "fake_ollama",
    "unused_port_url",
]
