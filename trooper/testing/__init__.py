"""Fake upstreams on real loopback sockets, for Trooper's tests and for its users' tests.

``FakeAnthropic`` speaks the Anthropic Messages API and ``FakeOllama`` Ollama's native API, byte for
byte, over a real ``127.0.0.1`` socket; both record every request they receive, so a test can check
exactly which bytes reached each side. Reply scripts live in :mod:`trooper.testing.fake_anthropic`
(``text``, ``tool_use``, ``rate_limited``…) and :mod:`trooper.testing.fake_ollama` (``Reply``,
``HttpError``…).
"""

from trooper.testing import fake_anthropic, fake_ollama
from trooper.testing._runner import LoopbackServer
from trooper.testing.fake_anthropic import FakeAnthropic
from trooper.testing.fake_ollama import FakeOllama, unused_port_url

__all__ = ["FakeAnthropic", "FakeOllama", "LoopbackServer", "fake_anthropic", "fake_ollama", "unused_port_url"]
