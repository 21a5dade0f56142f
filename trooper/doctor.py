"""``trooper doctor``: is the configuration usable, and do the cloud and the local model answer?

Each check is independent and says what it found in one line, so a user can fix the first red line
without reading a traceback. Nothing here sends conversation content anywhere.
"""

from __future__ import annotations

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
    checks = [Check("configuration", True, "valid")]
    checks.append(_store(config))
    async with httpx.AsyncClient(timeout=seconds, trust_env=False) as client:
        checks.append(await _cloud(client, config))
        checks.extend(await _local(client, config))
    return checks


def _store(config: Config) -> Check:
    from trooper.store import open_store

    try:
        store = open_store(config.store.path)
        count = len(store.list_conversations(100_000))
        store.close()
    except Exception as exc:  # any failure to open the store is the finding
        return Check("store", False, f"{config.store.path}: {exc}")
    return Check("store", True, f"{config.store.path} ({count} conversations)")


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
    except httpx.HTTPError as exc:
        return [Check("local provider", False, f"cannot reach Ollama at {url}: {root_cause(exc)}")]
    detail = version.json().get("version", "?") if version.status_code == 200 else f"HTTP {version.status_code}"
    checks = [Check("local provider", version.status_code == 200, f"Ollama {detail} at {url}")]
    show = await client.post(f"{url}/api/show", json={"model": model})
    if show.status_code != 200:
        checks.append(Check("local model", False, f"{model!r} is not installed (ollama pull {model})"))
        return checks
    context = config.ollama.context_length or context_length_from_show(show.json())
    checks.append(Check("local model", True, f"{model!r} installed, context {context or 'unknown'} tokens"))
    return checks
