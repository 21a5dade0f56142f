"""The cloud's health as every instance sees it, and the one recovery probe.

Health lives in the store under a key of its upstream and credential, so a quota error seen by one
conversation — on this instance or another — sends the others local at their next turn without a
doomed call; when the retry time has passed, one instance claims the probe and tells them all.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import structlog

from trooper import turn
from trooper.health import CloudHealth
from trooper.providers.base import CloudProvider, Overloaded, ProviderError, QuotaExhausted, Unreachable
from trooper.recorder import ledger_refusal
from trooper.store.base import SessionStore

log = structlog.get_logger("trooper")


class CloudWatch:
    """Shared health records and the probe, for one cloud provider."""

    def __init__(
        self, cloud: CloudProvider, store: SessionStore, clock: Callable[[], float], *, probe_timeout: float
    ) -> None:
        self.cloud = cloud
        self.store = store
        self.clock = clock
        self.probe_timeout = probe_timeout
        self._keys: set[str] = set()
        self._probes: dict[str, asyncio.Task[None]] = {}

    async def save(self, key: str, health: CloudHealth) -> None:
        await self.store.health_set(key, health.to_dict())

    def close(self) -> None:
        for task in self._probes.values():
            task.cancel()

    def key(self, request: turn.Request) -> str:
        credential = request.lookup.get("x-api-key") or request.lookup.get("authorization") or ""
        digest = hashlib.blake2b(credential.encode(), digest_size=8).hexdigest()
        key = f"{self.cloud.name}@{getattr(self.cloud, 'base_url', '')}#{digest}"
        self._keys.add(key)
        return key

    async def health(self, key: str) -> CloudHealth:
        try:
            data = await self.store.health_get(key)
        except Exception as exc:  # the store is down: so is the ledger; refuse rather than guess
            raise ledger_refusal(exc) from None
        return CloudHealth.from_dict(data) if data else CloudHealth()

    @property
    def keys(self) -> frozenset[str]:
        """The upstream + credential keys this engine has seen (their health lives in the store)."""
        return frozenset(self._keys)

    async def snapshot(self) -> dict[str, Any]:
        """Cloud health per upstream and credential; credentials appear only as a short hash."""
        return {key: (await self.health(key)).snapshot() for key in sorted(self._keys)}

    def start_probe(self, key: str, health: CloudHealth, request: turn.Request) -> asyncio.Task[None] | None:
        """The recovery probe for this upstream and credential: one in flight across all instances."""
        running = self._probes.get(key)
        if running is not None and not running.done():
            return running
        task = asyncio.ensure_future(self._probe(key, health, request))
        self._probes[key] = task
        return task

    async def _probe(self, key: str, health: CloudHealth, request: turn.Request) -> None:
        timeout = self.probe_timeout
        claim = f"probe:{key}"
        if not await self.store.claim(claim, timeout + 1):
            return  # another instance probes right now
        try:
            await self._send_probe(key, health, request, seconds=timeout)
        finally:
            await self.store.unclaim(claim)

    async def _send_probe(self, key: str, health: CloudHealth, request: turn.Request, *, seconds: float) -> None:
        health.last_probe = self.clock()
        try:
            async with asyncio.timeout(seconds):
                await self.cloud.probe(request.headers, str(request.body.get("model", "claude-sonnet-4-5")))
        except TimeoutError:
            health.observe_unreachable(self.clock(), "health probe timed out")
        except (QuotaExhausted, Unreachable, Overloaded) as exc:
            health.observe_failure(self.clock(), exc)
        except ProviderError:
            health.observe_ok()  # the cloud answers: let the turn try
        else:
            health.observe_ok()
            log.info("cloud_recovered", upstream=key.split("#", 1)[0])
        await self.store.health_set(key, health.to_dict())


__all__ = ["CloudWatch"]
