"""What Trooper knows about the cloud's health, shared by every conversation of one upstream + credential.

When one conversation learns that the quota is gone or the network is down, the others must not
each pay for a doomed cloud call: they go local at their next turn until the retry time passes and
a cheap probe succeeds. Pure bookkeeping — the clock is passed in, the probe is done by the engine.
"""

from __future__ import annotations

import asyncio

import attrs

from trooper.conversation import Health
from trooper.providers.base import ProviderError

#: Back-off after consecutive unreachable errors, seconds (then stays at the last value).
OFFLINE_BACKOFF: tuple[float, ...] = (2.0, 5.0, 15.0, 30.0, 60.0)
DEFAULT_QUOTA_WAIT = 60.0


@attrs.define
class CloudHealth:
    """Health of one (upstream, credential) pair."""

    status: Health = Health.UP
    retry_at: float = 0.0
    failures: int = 0
    last_error: str = ""
    last_probe: float | None = None
    #: The cloud's last failing answer: what a fallback turn shows when the local model fails too.
    last_failure: ProviderError | None = None
    #: The recovery probe in flight, if any: concurrent turns share it instead of each sending one.
    probe: asyncio.Task[None] | None = attrs.field(default=None, repr=False)

    def observe_ok(self) -> None:
        self.status, self.retry_at, self.failures, self.last_error = Health.UP, 0.0, 0, ""
        self.last_failure = None

    def observe_quota(self, now: float, retry_after: float | None, message: str) -> None:
        self.status = Health.QUOTA
        self.retry_at = now + (retry_after if retry_after is not None else DEFAULT_QUOTA_WAIT)
        self.last_error = message

    def observe_unreachable(self, now: float, message: str) -> None:
        self.failures += 1
        wait = OFFLINE_BACKOFF[min(self.failures, len(OFFLINE_BACKOFF)) - 1]
        self.status, self.retry_at, self.last_error = Health.DOWN, now + wait, message

    def probe_due(self, now: float) -> bool:
        """The cloud was down and its retry time has passed: worth one cheap probe."""
        return self.status is not Health.UP and now >= self.retry_at

    def snapshot(self) -> dict[str, object]:
        return {
            "status": str(self.status),
            "retry_at": self.retry_at or None,
            "failures": self.failures,
            "last_error": self.last_error or None,
            "last_probe": self.last_probe,
        }
