"""``trooper doctor``: is the configuration usable, and do the cloud and the local model answer?

Each check is independent and says what it found in one line, so a user can fix the first red line
without reading a traceback. Nothing here sends conversation content anywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import httpx

from trooper.config import Config
from trooper.providers.ollama import context_length_from_show
from trooper.providers.transport import root_cause


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str


async def diagnose(config: Config, *, seconds: float = 5.0) -> list[Check]:
    """Every check ``trooper doctor`` shows: configuration, store, cloud, local provider, local model."""
    checks = [Check("configuration", True, "valid"), *await _store(config)]
    checks.extend(await upstream_checks(config, seconds=seconds))
    return checks


async def upstream_checks(config: Config, *, seconds: float = 5.0) -> list[Check]:
    """Whether the cloud, Ollama and the local model answer: what ``trooper serve`` reports at start-up.

    The cloud and Ollama are asked at the same time, so an unreachable one costs ``seconds`` at most.
    """
    async with httpx.AsyncClient(timeout=seconds, trust_env=False) as client:
        cloud, local = await asyncio.gather(_cloud(client, config), _local(client, config))
    return [cloud, *local]


async def _store(config: Config) -> list[Check]:
    from trooper.config import store_location
    from trooper.store import RedisStore, open_store

    where = store_location(config.store.path)
    try:
        store = open_store(config.store)
        try:
            count = len(await store.list_conversations(100_000))
            info = await store.info() if isinstance(store, RedisStore) else None
        finally:
            await store.close()
    except Exception as exc:  # any failure to open the store is the finding; messages carry no password
        return [Check("store", False, f"{where}: {exc}")]
    if info is None:
        return [Check("store", True, f"{where} ({count} conversations)")]
    detail = f"{where}: Redis {info['version']}, {count} conversations, {info['ledger_records']} ledger records"
    return [Check("store", True, detail), *redis_checks(info, wait_aof=config.store.redis_wait_aof)]


def redis_checks(info: dict[str, Any], *, wait_aof: bool) -> list[Check]:
    """Whether Redis keeps what it acknowledged: the ledger must survive a restart, and never be evicted.

    The ledger is what keeps local content out of the cloud; a record Redis acknowledged and then
    lost lets the content it describes through on the next request. Append-only persistence is
    required; ``appendfsync always`` (or ``WAITAOF``) also survives a power loss. An eviction policy
    that may drop keys without an expiry could drop the ledger itself.
    """
    checks: list[Check] = []
    fsync = info.get("appendfsync") or "?"
    if not info.get("aof_enabled"):
        checks.append(
            Check(
                "store persistence",
                False,
                "appendonly is off: a restart of Redis loses acknowledged ledger records (snapshots keep only what "
                "was there at the last one); set appendonly yes (and appendfsync always or everysec)",
            )
        )
    elif fsync == "always" or wait_aof:
        how = "appendfsync always" if fsync == "always" else "each append waits for WAITAOF"
        checks.append(
            Check("store persistence", True, f"appendonly yes, {how}: acknowledged records survive a power loss")
        )
    else:
        checks.append(
            Check(
                "store persistence",
                True,
                f"warning: appendonly yes, appendfsync {fsync}: acknowledged ledger records survive a restart or "
                "crash of Redis, but a power loss or kernel crash can lose the last "
                f"{'second' if fsync == 'everysec' else 'seconds'} of them; set appendfsync always, or "
                "store.redis_wait_aof on Redis 7.2 and later",
            )
        )
    policy = info.get("maxmemory_policy") or "?"
    if policy.startswith("allkeys"):
        checks.append(
            Check(
                "store eviction",
                False,
                f"maxmemory-policy {policy} may evict the ledger when Redis runs out of memory; use noeviction "
                "(a full Redis then refuses writes, and Trooper refuses turns, rather than forget)",
            )
        )
    else:
        checks.append(Check("store eviction", True, f"maxmemory-policy {policy}: the ledger is never evicted"))
    if wait_aof and _version(info.get("version", "")) < (7, 2):
        checks.append(
            Check(
                "store wait_aof",
                False,
                f"store.redis_wait_aof needs Redis 7.2 or later (WAITAOF); this server is {info.get('version')}: "
                "every ledger append would fail",
            )
        )
    return checks


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return (0,)


async def _cloud(client: httpx.AsyncClient, config: Config) -> Check:
    url = config.anthropic.base_url.rstrip("/")
    headers = {"anthropic-version": "2023-06-01"}
    if config.anthropic.api_key:
        headers["x-api-key"] = config.anthropic.api_key
    try:
        reply = await client.get(f"{url}/v1/models?limit=1", headers=headers)
    except httpx.HTTPError as exc:
        return Check("cloud", False, f"cannot reach {url}: {root_cause(exc)}")
    if reply.status_code == 200:
        return Check("cloud", True, f"{url} answers (models listed)")
    if reply.status_code in (401, 403) and not config.anthropic.api_key:
        return Check("cloud", True, f"{url} answers; it wants a key (clients' own keys are forwarded)")
    return Check("cloud", reply.status_code < 500, f"{url} answered HTTP {reply.status_code}")


async def _local(client: httpx.AsyncClient, config: Config) -> list[Check]:
    url = config.ollama.base_url.rstrip("/")
    model = config.ollama.model
    try:
        version = await client.get(f"{url}/api/version")
        if version.status_code != 200:
            return [Check("local provider", False, f"{url} answered HTTP {version.status_code}: is it Ollama?")]
        checks = [Check("local provider", True, f"Ollama {_field(version, 'version')} at {url}")]
        show = await client.post(f"{url}/api/show", json={"model": model})
    except httpx.HTTPError as exc:
        return [Check("local provider", False, f"cannot reach Ollama at {url}: {root_cause(exc)}")]
    if show.status_code == 404:
        checks.append(Check("local model", False, f"{model!r} is not installed (ollama pull {model})"))
        return checks
    if show.status_code != 200:
        checks.append(Check("local model", False, f"Ollama answered HTTP {show.status_code} about {model!r}"))
        return checks
    shown = _json(show)
    context = config.ollama.context_length or (context_length_from_show(shown) if isinstance(shown, dict) else None)
    source = "configured" if config.ollama.context_length else "from Ollama"
    checks.append(Check("local model", True, f"{model!r} installed, context {context or 'unknown'} tokens ({source})"))
    return checks


def _json(reply: httpx.Response) -> Any:
    try:
        return reply.json()
    except ValueError:
        return None


def _field(reply: httpx.Response, name: str) -> str:
    data = _json(reply)
    return str(data.get(name, "?")) if isinstance(data, dict) else "?"
