"""What Trooper knows about the cloud's health, shared by every conversation of one upstream + credential.

When one conversation learns that the quota is gone or the network is down, the others must not
each pay for a doomed cloud call: they go local at their next turn until the retry time passes and
a cheap probe succeeds. This is pure bookkeeping — the clock is passed in; the probe, and sharing
the record with other instances through the store, are the engine's.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs

from trooper.conversation import Health
from trooper.providers import base as providers

#: Back-off after consecutive unreachable errors, seconds (then stays at the last value).
OFFLINE_BACKOFF: tuple[float, ...] = (2.0, 5.0, 15.0, 30.0, 60.0)
DEFAULT_QUOTA_WAIT = 60.0

_FAILURES: dict[str, type[providers.ProviderError]] = {
    cls.__name__: cls
    for cls in (providers.ProviderError, providers.QuotaExhausted, providers.Unreachable, providers.Overloaded)
}


@attrs.define
class CloudHealth:
    """Health of one (upstream, credential) pair."""

    status: Health = Health.UP
    retry_at: float = 0.0
    failures: int = 0
    last_error: str = ""
    last_probe: float | None = None
    #: The cloud's last failing answer: what a fallback turn shows when the local model fails too.
    last_failure: providers.ProviderError | None = None

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

    def observe_failure(self, now: float, error: providers.ProviderError) -> str:
        """Record a quota or connection failure; returns the conversation event it means."""
        self.last_failure = error
        if isinstance(error, providers.QuotaExhausted):
            self.observe_quota(now, error.retry_after, error.message)
            return "quota_hit"
        self.observe_unreachable(now, error.message)
        return "connection_lost"

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

    def to_dict(self) -> dict[str, Any]:
        """As plain data, to share through the store (the failing answer included)."""
        failure = self.last_failure
        return {
            **self.snapshot(),
            "retry_at": self.retry_at,
            "failure": None
            if failure is None
            else {
                "kind": type(failure).__name__,
                "message": failure.message,
                "status": failure.status,
                "headers": [list(pair) for pair in failure.headers],
                "body": base64.b64encode(failure.body).decode() if failure.body is not None else None,
                "retry_after": getattr(failure, "retry_after", None),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CloudHealth:
        failure = data.get("failure")
        error: providers.ProviderError | None = None
        if isinstance(failure, dict):
            kind = _FAILURES.get(str(failure.get("kind")), providers.ProviderError)
            options: dict[str, Any] = {
                "status": failure.get("status"),
                "headers": [tuple(pair) for pair in failure.get("headers") or []],
                "body": base64.b64decode(failure["body"]) if failure.get("body") is not None else None,
            }
            if kind is providers.QuotaExhausted:
                options["retry_after"] = failure.get("retry_after")
            error = kind(str(failure.get("message", "")), **options)
        return cls(
            status=Health(data.get("status", "up")),
            retry_at=float(data.get("retry_at") or 0.0),
            failures=int(data.get("failures") or 0),
            last_error=str(data.get("last_error") or ""),
            last_probe=data.get("last_probe"),
            last_failure=error,
        )
