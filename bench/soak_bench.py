"""Soak benchmark: many concurrent conversations through a real Trooper while the upstreams misbehave.

Run: ``.venv/bin/python bench/soak_bench.py`` (about 60 s; ``--quick`` for about 15 s). Loopback only;
nothing leaves the machine. It is a measurement, not a test: it prints figures and PASS/FAIL lines,
and exits 1 only when a request hung or local content leaked, so a CI step can gate on it.

What it answers: under a long mix of ordinary
cloud turns, forced-local turns, tool loops, streaming and not, with upstream faults injected at
random, does Trooper

* keep answering — no request hangs (each has a client-side timeout; one that hits it is HUNG);
* fall back to the local model when the cloud says quota/overload/unreachable before the first byte,
  and say so in ``x-trooper-route`` / ``x-trooper-reason``;
* keep every local turn's content out of the cloud — each local prompt, local tool result and local
  reply carries a unique canary, and every byte the fake Anthropic received is searched for them
  (raw and case-folded) at the end;
* keep its memory flat — ``VmRSS`` of Trooper's own process is sampled throughout.

Why it is built this way:

* **Trooper runs in its own process**, started the way users start it (``python -m trooper serve``,
  configured only through ``TROOPER_*`` variables, SQLite store, default log level with the log in a
  file), so its RSS is its own and a crash is visible as a dead process, not a test-harness artefact.
* **The fakes are the project's own** (:class:`trooper.testing.FakeAnthropic` and
  :class:`~trooper.testing.FakeOllama`), each on its own loopback uvicorn thread in this process:
  they speak the real wire protocols, record every byte, and play faults for real (a dropped TCP
  connection is a dropped connection). They share this process with the load generator, so throughput
  here is bounded by this process, not by Trooper: requests/s is printed for scale, not judged.
* **Faults are decided per request by the client's seeded RNG**, not by a shared RNG inside the fakes
  whose draw order would depend on scheduling. Every request carries a step token: in the
  ``x-soak-step`` header (Trooper forwards unknown headers to the cloud untouched) and in the
  text of its last user message (the only thing the local model is sure to see). The fakes look the
  step's plan up by that token. The step token of a local step is its canary; the header carries a
  separate step id, because Trooper's health probe re-sends the triggering request's headers to the
  cloud. With ``--seed`` fixed, the same conversations plan the same faults; what happens at run time
  still depends on timing (shared cloud health, retry-after windows).
* **A few users share an API key** (``--users-per-key``, default 2), so cloud health (shared per
  upstream + credential) is shared the way it is in a small team: a 429 puts that key's next turns
  local for the retry-after and a credit-balance error for a minute, without sending the whole soak
  local, and two users of a key can meet in the recovery probe.
* **The probe is faulted too** (``count_tokens``, ``--probe-fault-rate``): a recovery probe that hangs
  or fails is what a real outage looks like, and it shows whether a turn waits on it.
* **Users run conversation after conversation**: ``--conversations`` users are in flight at once,
  each starting a fresh session (new session id) after ``--turns`` turns, until ``--seconds`` pass.
  That keeps the run time-bound and makes per-session state that is never freed show up as growth.
* **Memory is judged after a warm-up** (the first fifth of the run, at most 12 s): Python arenas,
  connection pools and caches fill first. The growth after warm-up is printed in MiB and per 1,000
  requests; the bound is explained next to the verdict. Part of that growth is by design — the
  provenance ledger's in-memory index keeps every fingerprint forever, by design — so the
  ledger rows added after warm-up are counted from the SQLite file and their index cost is measured
  in this process and subtracted before judging.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import orjson

from trooper.ledger import LedgerIndex
from trooper.store.base import LedgerEntry
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_anthropic as cloud_script
from trooper.testing import fake_ollama as local_script

ROOT: Final = Path(__file__).resolve().parent.parent
MODEL: Final = "claude-sonnet-4-6"
LOCAL_MODEL: Final = "qwen3"
SYSTEM: Final = "You are the soak-test assistant. Answer briefly."
TOOLS: Final = [
    {
        "name": "read_file",
        "description": "Read a file from the workspace.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    }
]
MARKER: Final = "::local"

#: Trooper's own timeouts for the run: small, so a hanging upstream resolves within a request's life.
CLOUD_FIRST_BYTE_TIMEOUT: Final = 2.0
LOCAL_FIRST_BYTE_TIMEOUT: Final = 2.0
LOCAL_IDLE_TIMEOUT: Final = 2.0
OVERLOAD_BACKOFF: Final = 0.05
#: The fake Ollama's context window: small enough that longer conversations are really compacted
#: (Anchor + SITREP + Tail), large enough that one turn always fits.
LOCAL_CONTEXT: Final = 2048

#: Canaries are mixed case so a Trooper that case-folds content before sending it is still caught.
CANARY_RAW: Final = re.compile(rb"CnRy[0-9a-f]{12}Qz")
CANARY_FOLDED: Final = re.compile(rb"cnry[0-9a-f]{12}qz")
#: A step token: a canary (local steps) or a cloud step id; found in the last message's text.
STEP_TOKEN: Final = re.compile(r"(?:CnRy[0-9a-f]{12}Qz|StPx[0-9a-f]{12}Qz)")

#: Local and cloud texts draw on disjoint vocabularies, so the egress guard's shingles (12 words) of
#: local content can never match a cloud prompt by chance: a guard block here is a real finding.
LOCAL_WORDS: Final = (
    "ledger",
    "quartz",
    "meadow",
    "lantern",
    "cobalt",
    "harbor",
    "sprocket",
    "willow",
    "ember",
    "tundra",
    "basalt",
    "orchid",
    "fjord",
    "marble",
    "thistle",
    "copper",
    "glacier",
    "juniper",
    "prism",
    "saffron",
    "canyon",
    "falcon",
    "velvet",
    "pylon",
    "ivory",
    "cedar",
)
CLOUD_WORDS: Final = (
    "deploy",
    "rollback",
    "service",
    "latency",
    "cluster",
    "region",
    "replica",
    "schema",
    "migrate",
    "index",
    "queue",
    "shard",
    "throughput",
    "endpoint",
    "config",
    "release",
    "pipeline",
    "artifact",
    "commit",
    "branch",
    "review",
    "incident",
    "metric",
    "alert",
)

#: (name, weight) of the cloud faults; the step's cloud answer is replaced or broken as named.
CLOUD_FAULTS: Final[Sequence[tuple[str, float]]] = (
    ("429 retry-after", 3.0),  # rate_limited(retry_after=1): quota → fallback, recovery after 1 s
    ("529 once", 3.0),  # overloaded on the first attempt only: Trooper's retry succeeds
    ("529", 1.5),  # overloaded on every attempt: retries, then offline fallback
    ("500", 1.5),  # server_error on every attempt: same as 529
    ("credit balance 400", 0.3),  # quota behind a 400, no retry-after: that key is local for 60 s
    ("hang", 1.0),  # no status line ever: Trooper's first-byte timeout must fire
    ("disconnect", 1.5),  # connection closed with no response
    ("drop before first event", 1.0),  # 200 + headers, then the connection is cut
    ("drop mid-stream", 2.0),  # cut after 4 events: SSE error (stream) or fallback (JSON)
    ("malformed SSE", 1.5),  # garbage between events: relayed verbatim (Trooper never rewrites)
    ("SSE error event", 1.5),  # the API's own `event: error` after 5 events (stream) or an error status
)
#: (name, weight) of the local (Ollama) faults; they apply to whatever local call the step makes.
LOCAL_FAULTS: Final[Sequence[tuple[str, float]]] = (
    ("error mid-stream", 3.0),  # {"error": …} after 2 lines
    ("error first line", 1.0),  # {"error": …} as the first line
    ("HTTP 500", 2.0),
    ("drop mid-stream", 2.0),  # connection cut after 2 lines
    ("slow", 3.0),  # 0.3 s before headers, 20 ms between lines
    ("stall", 1.0),  # headers after 3.5 s: Trooper's local first-byte timeout (2 s) fires
)

TurnKind = Literal["cloud", "cloud-tool", "local", "local-tool"]
TURN_KINDS: Final[Sequence[tuple[TurnKind, float]]] = (
    ("cloud", 0.42),
    ("cloud-tool", 0.13),
    ("local", 0.30),
    ("local-tool", 0.15),
)
MAX_TOOL_ROUNDS: Final = 3
#: Trooper waits at least 1 s (a 429's retry-after) before probing a credential again, so two probes of
#: one credential closer than this were in flight together.
PROBE_HERD_WINDOW: Final = 0.5
#: Safety cap on conversations per user; the run is bounded by time long before this.
MAX_GENERATIONS: Final = 10_000


def pick(rng: random.Random, table: Sequence[tuple[Any, float]]) -> Any:
    """One name from a (name, weight) table."""
    return rng.choices([name for name, _ in table], weights=[weight for _, weight in table])[0]


def words(rng: random.Random, vocab: Sequence[str], count: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(count))


def derived(*parts: object) -> str:
    """12 hex digits derived from ``parts``: deterministic ids for tokens the fakes mint."""
    return hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=6).hexdigest()


def api_key_of(seed: int, key: int) -> str:
    return f"sk-ant-soak-{seed}-{key:04d}-{derived('key', seed, key)}"


def canary(*parts: object) -> str:
    return f"CnRy{derived('canary', *parts)}Qz"


# ----------------------------------------------------------------------------------------- plans


@dataclass
class StepPlan:
    """What the fakes do for one request, keyed by its step token.

    ``local_only`` steps (forced-local turns and continuations of a local tool loop) must never reach
    the cloud; the fake Anthropic counts one that does as a routing violation.
    """

    token: str
    #: Sent in the ``x-soak-step`` header, never a canary: Trooper's health probe re-sends the headers of
    #: whichever request triggered it to the cloud, forced-local ones included.
    step_id: str
    local_only: bool
    cloud_reply: Literal["text", "tool"]
    cloud_fault: str | None
    local_tool: bool
    local_fault: str | None
    cloud_text: str
    local_text: str
    cloud_attempts: int = 0
    local_attempts: int = 0
    probe_attempts: int = 0


@dataclass
class Book:
    """Shared between the load generator and the fakes' threads (plain dict/set/Counter under the GIL)."""

    seed: int
    #: Each plan under its token (found in message text) and its step id (found in the header).
    plans: dict[str, StepPlan] = field(default_factory=dict)
    #: Every canary planted or minted (local prompts, local tool results, the local model's replies),
    #: with where it came from: forced-local content must never leak, whatever the configuration.
    canaries: dict[str, str] = field(default_factory=dict)
    planted_prompt_canaries: set[str] = field(default_factory=set)
    #: Step tokens of cloud prompts answered locally without the cloud ever seeing them (health was
    #: already down): fallback content under the ledger, so they must never reach the cloud later.
    unsent_fallback_prompts: set[str] = field(default_factory=set)
    cloud_faults_played: Counter[str] = field(default_factory=Counter)
    local_faults_played: Counter[str] = field(default_factory=Counter)
    routing_violations: list[str] = field(default_factory=list)
    unknown_steps: Counter[str] = field(default_factory=Counter)
    probe_fault_rate: float = 0.0
    probes: int = 0
    probe_faults_played: Counter[str] = field(default_factory=Counter)
    #: Probes triggered by a forced-local request, and those of them that hung: the forced-local turn
    #: waited on the cloud although it never needed it.
    probes_from_local: int = 0
    local_waits_on_hanging_probe: int = 0
    #: A probe for a credential less than PROBE_HERD_WINDOW after the previous one: concurrent probes.
    probe_herd: int = 0
    last_probe: dict[str, float] = field(default_factory=dict)


class CloudScript:
    """``FakeAnthropic.default``: answers each ``/v1/messages`` request from its step's plan."""

    def __init__(self, book: Book) -> None:
        self.book = book

    def __call__(self, request: cloud_script.RecordedRequest) -> cloud_script.Outcome:
        plan = self.book.plans.get(request.header("x-soak-step") or "")
        if plan is None:
            self.book.unknown_steps["cloud"] += 1
            return cloud_script.text("ok")
        plan.cloud_attempts += 1
        if plan.local_only:
            self.book.routing_violations.append(plan.token)
        if plan.cloud_reply == "tool":
            reply = cloud_script.tool_use(
                "read_file", {"path": f"/srv/{plan.cloud_text.split()[0]}.cfg"}, text="Let me read that file."
            )
        else:
            reply = cloud_script.text(plan.cloud_text)
        fault = plan.cloud_fault
        if fault is None or (fault == "529 once" and plan.cloud_attempts > 1):
            return reply
        self.book.cloud_faults_played[fault] += 1
        outcome: cloud_script.Outcome
        if fault == "429 retry-after":
            outcome = cloud_script.rate_limited(retry_after=1)
        elif fault in ("529", "529 once"):
            outcome = cloud_script.overloaded()
        elif fault == "500":
            outcome = cloud_script.server_error()
        elif fault == "credit balance 400":
            outcome = cloud_script.credit_balance_too_low()
        elif fault == "hang":
            outcome = cloud_script.hang()
        elif fault == "disconnect":
            outcome = cloud_script.disconnect()
        elif fault == "drop before first event":
            outcome = reply.then_drop(after=0)
        elif fault == "drop mid-stream":
            outcome = reply.then_drop(after=4)
        elif fault == "malformed SSE":
            outcome = reply.then_garbage(after=3)
        else:
            outcome = reply.then_error(after=5)
        return outcome

    def probe(self, request: cloud_script.RecordedRequest) -> cloud_script.CountOutcome:
        """``FakeAnthropic.count_tokens_default``: Trooper's health probes, faulted at ``probe_fault_rate``.

        When a user's cloud is down the probe that decides recovery should sometimes fail too (a hang
        costs Trooper's first-byte timeout), or the soak would only ever see instant recoveries.
        """
        book = self.book
        book.probes += 1
        key = request.header("x-api-key") or ""
        now = time.monotonic()
        previous = book.last_probe.get(key)
        book.last_probe[key] = now
        if previous is not None and now - previous < PROBE_HERD_WINDOW:
            book.probe_herd += 1
        step = request.header("x-soak-step") or ""
        plan = book.plans.get(step)
        local_only = plan is not None and plan.local_only
        book.probes_from_local += local_only
        rng = random.Random(f"{book.seed}:probe:{step}:{book.probes if plan is None else plan.probe_attempts}")
        if plan is not None:
            plan.probe_attempts += 1
        if rng.random() >= book.probe_fault_rate:
            return cloud_script.token_count(3)
        fault = rng.choice(["hang", "529", "429 retry-after"])
        book.probe_faults_played[fault] += 1
        if fault == "hang":
            book.local_waits_on_hanging_probe += local_only
            return cloud_script.hang()
        if fault == "529":
            return cloud_script.overloaded()
        return cloud_script.rate_limited(retry_after=1)


class LocalScript:
    """A FakeOllama reply script that re-queues itself, so it answers every ``/api/chat`` request.

    FakeOllama has no default script, only a queue; it pops and calls a script on its single server
    thread with no await in between, so re-queueing inside the call keeps the queue non-empty for
    the next request. The step is found by the token in the last message (the current prompt or
    tool result: compaction always keeps the current turn verbatim).
    """

    def __init__(self, book: Book, fake: FakeOllama) -> None:
        self.book = book
        self.fake = fake

    def __call__(self, request: local_script.RecordedRequest) -> local_script.Item:
        self.fake.enqueue(self)
        try:
            messages = request.json().get("messages") or []
            last = str(messages[-1].get("content", "")) if messages else ""
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            last = ""
        found = STEP_TOKEN.findall(last)
        plan = self.book.plans.get(found[-1]) if found else None
        if plan is None:
            self.book.unknown_steps["local"] += 1
            return local_script.Reply(text="local ok")
        plan.local_attempts += 1
        minted = canary(plan.token, "reply", plan.local_attempts)
        origin = "forced-local reply" if plan.local_only else "fallback reply"
        self.book.canaries[minted] = origin
        text = f"{plan.local_text} {minted}."
        calls: list[dict[str, Any]] = []
        if plan.local_tool:
            tool_canary = canary(plan.token, "tool", plan.local_attempts)
            self.book.canaries[tool_canary] = origin
            calls = [{"name": "read_file", "arguments": {"path": f"/work/{tool_canary}.txt"}}]
            text = f"Reading the file first. {minted}"
        reply = local_script.Reply(text=text, tool_calls=calls, done_reason="stop")
        fault = plan.local_fault
        if fault is None or plan.local_attempts > 1:
            return reply
        self.book.local_faults_played[fault] += 1
        if fault == "error mid-stream":
            return local_script.Reply(text=text, error="model runner has unexpectedly stopped", error_after=2)
        if fault == "error first line":
            return local_script.Reply(text=text, error="model runner has unexpectedly stopped", error_after=0)
        if fault == "HTTP 500":
            return local_script.HttpError(500, "llama runner process has terminated: signal: killed")
        if fault == "drop mid-stream":
            return local_script.Reply(text=text, drop_after=2)
        if fault == "slow":
            return local_script.Reply(text=text, tool_calls=calls, delay=0.02, headers_delay=0.3)
        return local_script.Reply(text=text, tool_calls=calls, headers_delay=LOCAL_FIRST_BYTE_TIMEOUT + 1.5)


# ------------------------------------------------------------------------------------ Trooper process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from ``/proc/<pid>/stat`` (0 once the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


class TrooperProcess:
    """``python -m trooper serve`` configured by environment variables only, logging to a file."""

    def __init__(self, workdir: Path, cloud_url: str, local_url: str, argv: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = workdir / "trooper.sqlite3"
        self.log = workdir / "trooper.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TROOPER_")}
        env.update(
            {
                "TROOPER_HOST": "127.0.0.1",
                "TROOPER_PORT": str(self.port),
                "TROOPER_CONFIG": str(workdir / "absent.toml"),  # never pick up a trooper.toml from the cwd
                "TROOPER_STORE": str(self.store),
                "TROOPER_ANTHROPIC_BASE_URL": cloud_url,
                "TROOPER_ANTHROPIC_FIRST_BYTE_TIMEOUT": str(CLOUD_FIRST_BYTE_TIMEOUT),
                "TROOPER_ANTHROPIC_OVERLOAD_BACKOFF": str(OVERLOAD_BACKOFF),
                "TROOPER_OLLAMA_BASE_URL": local_url,
                "TROOPER_OLLAMA_MODEL": LOCAL_MODEL,
                "TROOPER_OLLAMA_FIRST_BYTE_TIMEOUT": str(LOCAL_FIRST_BYTE_TIMEOUT),
                "TROOPER_OLLAMA_IDLE_TIMEOUT": str(LOCAL_IDLE_TIMEOUT),
            }
        )
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            list(argv) or [sys.executable, "-m", "trooper", "serve"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"Trooper exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"Trooper did not answer within {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> int | None:
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL after 10 s; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_file.close()
        return self.proc.returncode


def ledger_rows(store: Path) -> list[tuple[str, str]]:
    """(fingerprint, kind) of every ledger row, read through a read-only connection (WAL allows it)."""
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db,
    ):
        return [(str(fp), str(kind)) for fp, kind in db.execute("SELECT fingerprint, kind FROM ledger ORDER BY seq")]
    return []


def index_cost(before: Sequence[tuple[str, str]], added: Sequence[tuple[str, str]]) -> int:
    """Bytes the ledger's in-memory index (:class:`trooper.ledger.LedgerIndex`) takes for ``added``.

    Measured, not guessed: the same entries are put into a real index (already holding ``before``,
    so set growth steps land where they land in Trooper) under tracemalloc.
    """
    index = LedgerIndex()
    index.add(LedgerEntry(fp, kind, "s") for fp, kind in before)  # type: ignore[arg-type]
    entries = [LedgerEntry(fp, kind, "s") for fp, kind in added]  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        index.add(entries)
        return max(0, tracemalloc.get_traced_memory()[0] - start)
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------ the client


@dataclass
class StepResult:
    status: int
    route: str
    reason: str
    ok: bool
    content: list[dict[str, Any]]
    error: str | None  # a kind label for the error tallies
    seconds: float


@dataclass
class Stats:
    """Everything the report prints; mutated only on the load generator's loop."""

    responses: int = 0
    by_route_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    fallbacks_ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    hung: list[str] = field(default_factory=list)
    anomalies: Counter[str] = field(default_factory=Counter)
    anomaly_samples: dict[str, str] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    streamed: Counter[bool] = field(default_factory=Counter)
    turns_ok: int = 0
    turns_failed: int = 0
    conversations: int = 0
    conversations_complete: int = 0
    cloud_requests_with_local_history: int = 0
    #: Local answers whose ``x-trooper-memory`` shows a SITREP layer: compaction really ran.
    with_sitrep: int = 0

    def anomaly(self, kind: str, sample: str) -> None:
        self.anomalies[kind] += 1
        self.anomaly_samples.setdefault(kind, sample[:300])


def parse_sse(body: bytes) -> tuple[list[dict[str, Any]], list[str], bool]:
    """SSE bytes → (events, problems, saw message_stop). Malformed lines are problems, not crashes."""
    events: list[dict[str, Any]] = []
    problems: list[str] = []
    for frame in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not frame.strip():
            continue
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].strip())
            elif not line or line.startswith((b"event:", b":", b"id:", b"retry:")):
                continue
            else:
                problems.append("malformed SSE line")
        if not data:
            continue
        try:
            event = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            problems.append("malformed SSE data")
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, problems, any(e.get("type") == "message_stop" for e in events)


def assemble(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The assistant content an SDK would build from the stream's events (text and tool_use)."""
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    for event in events:
        kind, index = event.get("type"), event.get("index")
        if kind == "content_block_start" and isinstance(index, int):
            blocks[index] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta" and isinstance(index, int) and index in blocks:
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                blocks[index]["text"] = blocks[index].get("text", "") + str(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                partial.setdefault(index, []).append(str(delta.get("partial_json", "")))
    for index, pieces in partial.items():
        with contextlib.suppress(orjson.JSONDecodeError):
            blocks[index]["input"] = orjson.loads("".join(pieces) or "{}")
    return [blocks[i] for i in sorted(blocks) if blocks[i].get("type") in ("text", "tool_use")]


def error_label(status: int, body: bytes) -> tuple[str, str, str]:
    """(label, error.type, message) of an error answer."""
    try:
        parsed = orjson.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        kind = str(error.get("type")) if isinstance(error, dict) else "?"
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
    except orjson.JSONDecodeError:
        return f"HTTP {status} (body not JSON)", "?", body[:120].decode("utf-8", "replace")
    return f"HTTP {status} {kind}", kind, message


def sse_error_label(event: Mapping[str, Any]) -> str:
    found = event.get("error")
    error: Mapping[str, Any] = found if isinstance(found, dict) else {}
    kind = str(error.get("type", "?"))
    message = str(error.get("message", ""))
    if message.startswith("upstream stream failed"):
        origin = "cloud stream broke, made by Trooper"
    elif message.startswith("local model failed"):
        origin = "local stream broke, made by Trooper"
    else:
        origin = "relayed from the cloud"
    return f"SSE event: error {kind} ({origin})"


class Client:
    """The load generator's HTTP side: one aiohttp session, one request at a time per step."""

    def __init__(self, url: str, stats: Stats, book: Book, timeout: float, concurrency: int) -> None:
        self.url = f"{url}/v1/messages"
        self.stats = stats
        self.book = book
        self.timeout = timeout
        self.slots = asyncio.Semaphore(concurrency)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency * 2, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self.session.close()

    async def step(
        self, headers: dict[str, str], body: dict[str, Any], plan: StepPlan, label: str
    ) -> StepResult | None:
        """Send one request; None when it hung (client timeout) or the connection failed."""
        payload = orjson.dumps(body)
        stream = body.get("stream") is True
        async with self.slots:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout + 5):  # belt and braces over aiohttp's own timeout
                    async with self.session.post(self.url, data=payload, headers=headers) as response:
                        raw = await response.read()
                        status = response.status
                        route = response.headers.get("x-trooper-route", "-")
                        reason = response.headers.get("x-trooper-reason", "-")
                        memory = response.headers.get("x-trooper-memory", "")
                        content_type = response.headers.get("content-type", "")
            except TimeoutError:
                self.stats.hung.append(f"{label} {plan.token} after {time.perf_counter() - started:.1f}s")
                return None
            except aiohttp.ClientError as exc:
                self.stats.errors[f"client: {type(exc).__name__}"] += 1
                self.stats.anomaly("connection failed between client and Trooper", f"{label}: {exc!r}")
                return None
        seconds = time.perf_counter() - started
        result = self.judge(status, route, reason, content_type=content_type, raw=raw, seconds=seconds)
        self.tally(result, stream, plan, payload)
        if re.search(r"(?:^|;)sitrep=[1-9]", memory):
            self.stats.with_sitrep += 1
        return result

    def judge(
        self, status: int, route: str, reason: str, *, content_type: str, raw: bytes, seconds: float
    ) -> StepResult:
        stats = self.stats
        if status != 200:
            label, kind, message = error_label(status, raw)
            if status == 500 and "Trooper hit an internal error" in message:
                stats.anomaly("Trooper internal error (HTTP 500)", message)
            elif status == 400 and "credit balance" not in message:
                stats.anomaly(f"HTTP 400 {kind} (Trooper's payload refused, or Trooper refused ours)", message)
            elif status == 403:
                stats.anomaly("HTTP 403 (egress guard blocked a cloud payload with no local content)", message)
            return StepResult(status, route, reason, False, [], label, seconds)
        if "text/event-stream" in content_type:
            events, problems, complete = parse_sse(raw)
            errors = [e for e in events if e.get("type") == "error"]
            if errors:
                return StepResult(status, route, reason, False, [], sse_error_label(errors[0]), seconds)
            if problems:
                return StepResult(status, route, reason, False, [], f"SSE relayed with a {problems[0]}", seconds)
            if not complete:
                stats.anomaly("SSE stream ended without message_stop or an error event", f"route={route}")
                return StepResult(status, route, reason, False, [], "SSE incomplete (no message_stop)", seconds)
            return StepResult(status, route, reason, True, assemble(events), None, seconds)
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return StepResult(status, route, reason, False, [], "HTTP 200 body relayed not JSON", seconds)
        if not isinstance(message, dict) or message.get("type") != "message":
            stats.anomaly("HTTP 200 JSON that is not a message", raw[:200].decode("utf-8", "replace"))
            return StepResult(status, route, reason, False, [], "HTTP 200 not a message", seconds)
        content = [b for b in message.get("content") or [] if isinstance(b, dict)]
        return StepResult(status, route, reason, True, content, None, seconds)

    def tally(self, result: StepResult, stream: bool, plan: StepPlan, payload: bytes) -> None:
        stats = self.stats
        stats.responses += 1
        stats.streamed[stream] += 1
        stats.by_route_status[(result.route, result.status)] += 1
        stats.by_reason[(result.route, result.reason)] += 1
        stats.latencies.setdefault(result.route, []).append(result.seconds)
        if result.error is not None:
            stats.errors[result.error] += 1
        if result.route == "local" and result.reason in ("quota", "offline"):
            stats.fallbacks[result.reason] += 1
            stats.fallbacks_ok += result.ok
            if plan.cloud_attempts == 0 and not plan.local_only:
                self.book.unsent_fallback_prompts.add(plan.token)
        if plan.local_only and result.route == "cloud":
            stats.anomaly("forced-local step answered by the cloud (I2)", plan.token)
        if result.route == "cloud" and CANARY_RAW.search(payload):
            stats.cloud_requests_with_local_history += 1


@dataclass
class Conversation:
    """One simulated session: its history as the client keeps it, re-sent on every request."""

    user: int
    session: str
    api_key: str
    session_header: str
    rng: random.Random
    history: list[dict[str, Any]] = field(default_factory=list)


class Simulation:
    """Users running conversations; every loop is bounded by count and by the deadline."""

    def __init__(self, args: argparse.Namespace, client: Client, book: Book, stats: Stats, deadline: float) -> None:
        self.args = args
        self.client = client
        self.book = book
        self.stats = stats
        self.deadline = deadline

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    async def user(self, user: int) -> None:
        rng = random.Random(f"{self.args.seed}:user:{user}")
        api_key = api_key_of(self.args.seed, user // self.args.users_per_key)
        for generation in range(MAX_GENERATIONS):
            if not self.time_left():
                return
            conv = Conversation(
                user,
                f"soak-{self.args.seed}-u{user}-g{generation}",
                api_key,
                "X-Claude-Code-Session-Id" if rng.random() < 0.15 else "X-Trooper-Session",
                random.Random(f"{self.args.seed}:conv:{user}:{generation}"),
            )
            self.stats.conversations += 1
            completed = 0
            for _ in range(self.args.turns):
                if not self.time_left():
                    break
                await self.turn(conv)
                completed += 1
            self.stats.conversations_complete += completed == self.args.turns

    def plan(
        self,
        conv: Conversation,
        *,
        local_only: bool,
        cloud_reply: Literal["text", "tool"] = "text",
        local_tool: bool = False,
    ) -> StepPlan:
        rng = conv.rng
        token = canary(conv.session, rng.random()) if local_only else f"StPx{derived(conv.session, rng.random())}Qz"
        plan = StepPlan(
            token=token,
            step_id=f"step-{derived(token)}",
            local_only=local_only,
            cloud_reply=cloud_reply,
            cloud_fault=pick(rng, CLOUD_FAULTS) if rng.random() < self.args.cloud_fault_rate else None,
            local_tool=local_tool,
            local_fault=pick(rng, LOCAL_FAULTS) if rng.random() < self.args.local_fault_rate else None,
            cloud_text=words(rng, CLOUD_WORDS, rng.randint(12, 40)),
            local_text=words(rng, LOCAL_WORDS, rng.randint(12, 40)),
        )
        self.book.plans[token] = self.book.plans[plan.step_id] = plan
        if local_only:
            self.book.canaries[token] = "forced-local prompt or tool result"
            self.book.planted_prompt_canaries.add(token)
        return plan

    async def turn(self, conv: Conversation) -> None:
        rng = conv.rng
        kind: TurnKind = pick(rng, TURN_KINDS)
        self.stats.kinds[kind] += 1
        local = kind in ("local", "local-tool")
        plan = self.plan(
            conv,
            local_only=local,
            cloud_reply="tool" if kind == "cloud-tool" else "text",
            local_tool=kind == "local-tool",
        )
        control = rng.choices(["body", "header", "marker"], weights=[6, 2, 2])[0] if local else "none"
        vocab = LOCAL_WORDS if local else CLOUD_WORDS
        text = f"{words(rng, vocab, rng.randint(10, 60))} {plan.token} {words(rng, vocab, rng.randint(3, 12))}"
        if control == "marker":
            text = f"{MARKER} {text}"
        pending: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        stream = rng.random() < 0.5
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            if round_ and not self.time_left():
                break
            headers = {
                "content-type": "application/json",
                "anthropic-version": "2023-06-01",
                "x-api-key": conv.api_key,
                conv.session_header: conv.session,
                "x-soak-step": plan.step_id,
            }
            body: dict[str, Any] = {
                "model": MODEL,
                "max_tokens": 512,
                "system": SYSTEM,
                "tools": TOOLS,
                "messages": self.wire_messages(conv, [*conv.history, *pending]),
            }
            if stream:
                body["stream"] = True
            elif rng.random() < 0.5:
                body["stream"] = False
            if round_ == 0 and control == "body":
                body["x_force_local"] = True
            elif round_ == 0 and control == "header":
                headers["X-Force-Local"] = "true"
            elif not local and rng.random() < 0.15:
                body["x_force_local"] = False  # Trooper's own field: must be stripped before the cloud (I3)
            result = await self.client.step(headers, body, plan, kind)
            if result is None or not result.ok:
                self.stats.turns_failed += 1
                return  # a failed turn is dropped from the history, as a user retyping it would
            pending.append({"role": "assistant", "content": result.content})
            uses = [b for b in result.content if b.get("type") == "tool_use"]
            if not uses:
                conv.history.extend(pending)
                self.stats.turns_ok += 1
                return
            # The tool loop continues on the route its turn began on.
            plan = self.plan(conv, local_only=result.route == "local", local_tool=False)
            vocab = LOCAL_WORDS if result.route == "local" else CLOUD_WORDS
            pending.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": str(use.get("id")),
                            "content": f"{words(rng, vocab, rng.randint(8, 30))} {plan.token}",
                        }
                        for use in uses
                    ],
                }
            )
        self.stats.turns_failed += 1  # tool rounds exhausted or time ran out mid-loop

    @staticmethod
    def wire_messages(conv: Conversation, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The history as a client re-sends it, re-wrapped a little each time (string vs. blocks,
        ``cache_control`` moving, whitespace): the ledger must recognise local content anyway (I1)."""
        rng = conv.rng
        out: list[dict[str, Any]] = []
        for message in messages:
            blocks = [dict(b) for b in message["content"]]
            if len(blocks) == 1 and blocks[0].get("type") == "text" and rng.random() < 0.3:
                text = str(blocks[0]["text"])
                out.append({"role": message["role"], "content": text + ("\n" if rng.random() < 0.3 else "")})
                continue
            if rng.random() < 0.1:
                for block in blocks:
                    if block.get("type") == "text":
                        block["text"] = str(block["text"]).replace(" ", "  ", 1)
            out.append({"role": message["role"], "content": blocks})
        last = out[-1]["content"] if out else None
        if isinstance(last, list) and last and rng.random() < 0.5:
            last[-1] = {**last[-1], "cache_control": {"type": "ephemeral"}}
        return out


# ---------------------------------------------------------------------------------------------- run


@dataclass
class Sample:
    at: float
    responses: int
    rss_kib: int
    cpu: float


@dataclass
class RunResult:
    stats: Stats
    samples: list[Sample]
    launch_rss: int
    warm: Sample
    end: Sample
    wall: float
    ledger_warm: int
    ledger_end: int
    ledger_index_bytes: int
    stragglers: int


async def sample_rss(
    pid: int, stats: Stats, *, started: float, samples: list[Sample], stop: asyncio.Event, every: float = 0.5
) -> None:
    while not stop.is_set():
        samples.append(Sample(time.monotonic() - started, stats.responses, rss_kib(pid), cpu_seconds(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def run_load(args: argparse.Namespace, trooper: TrooperProcess, book: Book) -> RunResult:
    stats = Stats()
    client = Client(trooper.url, stats, book, args.request_timeout, args.concurrency)
    samples: list[Sample] = []
    launch_rss = rss_kib(trooper.pid)
    started = time.monotonic()
    sim = Simulation(args, client, book, stats, started + args.seconds)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(trooper.pid, stats, started=started, samples=samples, stop=stop))
    warm_rows: list[tuple[str, str]] = []

    async def mark_warm() -> None:
        await asyncio.sleep(args.warmup)
        warm_rows.extend(await asyncio.to_thread(ledger_rows, trooper.store))

    warm_task = asyncio.create_task(mark_warm())
    users = [asyncio.create_task(sim.user(u)) for u in range(args.conversations)]
    # Users stop starting turns at the deadline; an in-flight request ends within its own timeout.
    _, pending = await asyncio.wait(users, timeout=args.seconds + args.request_timeout + 15)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in users:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    wall = time.monotonic() - started
    await warm_task
    stop.set()
    await sampler
    await client.close()
    end = Sample(time.monotonic() - started, stats.responses, rss_kib(trooper.pid), cpu_seconds(trooper.pid))
    samples.append(end)
    warm = next((s for s in samples if s.at >= args.warmup), samples[0])
    end_rows = await asyncio.to_thread(ledger_rows, trooper.store)
    added = end_rows[len(warm_rows) :]
    index_bytes = await asyncio.to_thread(index_cost, warm_rows, added)
    return RunResult(
        stats, samples, launch_rss, warm, end, wall, len(warm_rows), len(end_rows), index_bytes, len(pending)
    )


# ------------------------------------------------------------------------------------------- report


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def table(rows: Sequence[Sequence[object]], indent: str = "    ") -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        indent
        + "  ".join(c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def tree_state() -> str:
    """The commit measured and whether ``trooper/`` had uncommitted changes (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "trooper"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {commit}" + (" (trooper/ has uncommitted changes)" if dirty else "")


@dataclass
class Leaks:
    raw: int
    folded: int
    by_origin: Counter[str]
    examples: list[str]
    scanned: int

    @property
    def total(self) -> int:
        return max(self.raw, self.folded)


def scan_leaks(book: Book, cloud: FakeAnthropic) -> Leaks:
    """Canaries (and unsent fallback prompts) in every byte the fake Anthropic received.

    One regex pass over the bytes, raw and lower-cased, then set lookups: searching each of tens of
    thousands of canaries separately would be quadratic in the run's length.
    """
    received = cloud.received_bytes()
    origins = {c.lower().encode(): origin for c, origin in book.canaries.items()}
    raw_hits = {m.lower() for m in CANARY_RAW.findall(received) if m.lower() in origins}
    folded_hits = {m for m in CANARY_FOLDED.findall(received.lower()) if m in origins}
    fallback_hits = {t.encode() for t in book.unsent_fallback_prompts if t.encode() in received}
    by_origin = Counter(origins[m] for m in raw_hits | folded_hits)
    by_origin["fallback prompt the cloud never saw"] += len(fallback_hits)
    examples = [
        f"{m.decode()} ({origins.get(m, 'fallback prompt the cloud never saw')})"
        for m in sorted(raw_hits | folded_hits | fallback_hits)[:5]
    ]
    return Leaks(
        len(raw_hits) + len(fallback_hits), len(folded_hits) + len(fallback_hits), +by_origin, examples, len(received)
    )


def log_findings(trooper: TrooperProcess, api_keys: Sequence[str]) -> dict[str, int]:
    """What Trooper's own log says: internal errors, tracebacks, and whether a credential was written."""
    try:
        text = trooper.log.read_text(errors="replace")
    except OSError:
        return {}
    return {
        "internal_error events": text.count('"internal_error"'),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "ERROR/CRITICAL lines": len(re.findall(r'"level":\s*"(?:error|critical)"', text)),
        "API keys written to the log": sum(text.count(key) for key in api_keys),
    }


def report(
    args: argparse.Namespace,
    run: RunResult,
    book: Book,
    *,
    cloud: FakeAnthropic,
    local: FakeOllama,
    trooper: TrooperProcess,
    exit_status: int | None,
) -> int:
    """Print the figures and the verdicts; return the exit status (1 only for hung requests or leaks)."""
    stats = run.stats
    print()
    print(
        f"Requests served: {stats.responses:,} in {run.wall:.1f} s wall = {stats.responses / run.wall:.1f} req/s "
        f"({stats.streamed[True]:,} streamed, {stats.streamed[False]:,} not); "
        f"{stats.conversations:,} conversations ({stats.conversations_complete:,} ran all {args.turns} turns); "
        f"{stats.turns_ok + stats.turns_failed:,} turns ({stats.turns_ok:,} completed, "
        f"{stats.turns_failed:,} failed or cut at the deadline)"
    )
    print("  turn kinds: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.kinds.items())))
    print("  by route (x-trooper-route) and status:")
    rows: list[list[object]] = [["route", "status", "count"]]
    rows += [[route, status, f"{n:,}"] for (route, status), n in sorted(stats.by_route_status.items())]
    print(table(rows))
    print("  by route and reason (x-trooper-reason):")
    reasons: list[list[object]] = [["route", "reason", "count"]]
    reasons += [[route, why, f"{n:,}"] for (route, why), n in sorted(stats.by_reason.items())]
    print(table(reasons))
    print("  latency by route (whole response read; faults included):")
    lat_rows: list[list[object]] = [["route", "p50 ms", "p99 ms", "max ms"]]
    for route, lat in sorted(stats.latencies.items()):
        lat_rows.append(
            [route, f"{pct(lat, 0.5) * 1000:.0f}", f"{pct(lat, 0.99) * 1000:.0f}", f"{max(lat) * 1000:.0f}"]
        )
    print(table(lat_rows))
    fallbacks = sum(stats.fallbacks.values())
    print(
        f"Fallbacks (route=local, reason quota/offline): {fallbacks:,} "
        f"(quota {stats.fallbacks['quota']:,}, offline {stats.fallbacks['offline']:,}); "
        f"{stats.fallbacks_ok:,} answered in full by the local model. Local answers built on a compacted "
        f"memory (x-trooper-memory with a SITREP layer): {stats.with_sitrep:,}"
    )
    print("Faults injected (as played by the fakes):")
    print("  cloud: " + ", ".join(f"{k} {v:,}" for k, v in sorted(book.cloud_faults_played.items())))
    print("  local: " + ", ".join(f"{k} {v:,}" for k, v in sorted(book.local_faults_played.items())))
    probe_faults = ", ".join(f"{k} {v:,}" for k, v in sorted(book.probe_faults_played.items()))
    print(
        f"  health probes: {book.probes:,} ({probe_faults}); "
        f"{book.probes_from_local:,} were triggered by a forced-local request, "
        f"{book.local_waits_on_hanging_probe:,} of those hung (the forced-local turn waited "
        f"{CLOUD_FIRST_BYTE_TIMEOUT:g} s on a cloud it did not need); {book.probe_herd:,} probes of a key "
        f"started within {PROBE_HERD_WINDOW:g} s of the previous one"
    )
    print("Errors by kind (what the client saw):")
    if stats.errors:
        print(table([[kind, f"{n:,}"] for kind, n in stats.errors.most_common()]))
    else:
        print("    none")
    keys = sorted({api_key_of(args.seed, user // args.users_per_key) for user in range(args.conversations)})
    findings = log_findings(trooper, keys)
    anomalies = stats.anomalies + Counter(
        {"routing violation: the cloud got a local-only step": len(book.routing_violations)}
    )
    anomalies += Counter({f"fake upstream got an unknown step ({k})": v for k, v in book.unknown_steps.items()})
    anomalies += Counter({f"Trooper log: {k}": v for k, v in findings.items() if k != "API keys written to the log"})
    anomalies = +anomalies
    print("Anomalies (each one is a Trooper bug or a bench bug to look at):")
    if anomalies:
        for kind, count in anomalies.most_common():
            sample = stats.anomaly_samples.get(kind, "")
            print(f"    {count:>6,}  {kind}" + (f"  e.g. {sample!r}" if sample else ""))
    else:
        print("    none")
    print(
        f"Trooper process: {'still running' if exit_status is None else f'exit status {exit_status}'} at the end; "
        f"API keys written to its log: {findings.get('API keys written to the log', 0)}"
    )

    hung = len(stats.hung) + run.stragglers
    print(f"Hung requests (client timeout {args.request_timeout:g} s): {hung}")
    for line in stats.hung[:5]:
        print(f"    {line}")

    leaks = scan_leaks(book, cloud)
    ollama_seen = {m.decode() for m in CANARY_RAW.findall(local.received_bytes())}
    reached = len(book.planted_prompt_canaries & ollama_seen)
    print(
        f"Leaks: {leaks.total} (raw {leaks.raw}, case-folded {leaks.folded}). Searched for: {len(book.canaries):,} "
        f"canaries ({len(book.planted_prompt_canaries):,} planted in local prompts and tool results, "
        f"{len(book.canaries) - len(book.planted_prompt_canaries):,} minted in local replies) and "
        f"{len(book.unsent_fallback_prompts):,} fallback prompts the cloud never saw; searched in "
        f"{leaks.scanned / 1e6:.1f} MB the fake Anthropic received over {len(cloud.requests):,} requests"
    )
    print(
        f"  the canaries were in play: {reached:,} of the planted ones reached the fake Ollama; "
        f"{stats.cloud_requests_with_local_history:,} cloud-routed requests carried earlier local content "
        "in the history they sent to Trooper, all of which had to be withheld"
    )
    if leaks.by_origin:
        print("  leaked, by origin: " + ", ".join(f"{k} {v:,}" for k, v in leaks.by_origin.most_common()))
    for example in leaks.examples:
        print(f"    leaked: {example}")

    warm, end = run.warm, run.end
    after = max(1, end.responses - warm.responses)
    growth_kib = end.rss_kib - warm.rss_kib
    index_kib = run.ledger_index_bytes / 1024
    net_kib = growth_kib - index_kib
    middle = min(run.samples, key=lambda s: abs(s.responses - (warm.responses + end.responses) / 2))
    first_half = (middle.rss_kib - warm.rss_kib) / 1024 / max(1, middle.responses - warm.responses) * 1000
    second_half = (end.rss_kib - middle.rss_kib) / 1024 / max(1, end.responses - middle.responses) * 1000
    cpu_ms = (end.cpu - warm.cpu) * 1000 / after
    print(
        f"Trooper RSS (VmRSS of pid {trooper.pid}): {mib(run.launch_rss)} idle after start, "
        f"{mib(warm.rss_kib)} after warm-up ({warm.at:.0f} s, {warm.responses:,} requests), "
        f"{mib(end.rss_kib)} at the end ({end.responses:,} requests); CPU {cpu_ms:.1f} ms per request"
    )
    step = max(1, len(run.samples) // 8)
    picked = [*run.samples[:-1:step][:8], run.samples[-1]]
    print("  samples: " + ", ".join(f"{s.at:.0f}s/{s.responses:,}req {mib(s.rss_kib)}" for s in picked))
    print(
        f"  growth after warm-up: {growth_kib / 1024:+.1f} MiB over {after:,} requests = "
        f"{growth_kib / 1024 / after * 1000:+.2f} MiB per 1,000 requests ({first_half:+.2f} in the first half, "
        f"{second_half:+.2f} in the second)"
    )
    added = run.ledger_end - run.ledger_warm
    print(
        f"  the provenance ledger's in-memory index (by design, never pruned) took {added:,} "
        f"entries after warm-up ({run.ledger_warm:,} → {run.ledger_end:,} rows in the store), "
        f"{index_kib / 1024:.1f} MiB measured; the rest: {net_kib / 1024:+.1f} MiB = "
        f"{net_kib / 1024 / after * 1000:+.2f} MiB per 1,000 requests"
    )

    bound_kib = args.rss_bound_mib * 1024
    print()
    print(f"{'PASS' if hung == 0 else 'FAIL'}  hung requests == 0 ({hung})")
    print(f"{'PASS' if leaks.total == 0 else 'FAIL'}  leaks == 0 ({leaks.total})")
    print(
        f"{'PASS' if net_kib < bound_kib else 'FAIL'}  RSS growth after warm-up, net of the ledger index, "
        f"< {args.rss_bound_mib:g} MiB ({net_kib / 1024:+.1f} MiB)"
    )
    print(
        f"      why {args.rss_bound_mib:g} MiB: after warm-up the pools, arenas and SQLite's page cache (2 MiB) are "
        "warm, so what keeps growing is state kept per request or per turn. Over the default run's ~10,000 "
        "requests the bound allows about 2 KiB each; a cache that must grow past it to plateau should be "
        "bounded in bytes, not in entries. The ledger index is subtracted because the design keeps it forever "
        "(it is what keeps local content out of the cloud); its cost is printed above."
    )
    print(
        f"{'PASS' if not anomalies else 'FAIL'}  anomalies == 0 ({sum(anomalies.values())}) (informational, "
        "not in the exit status)"
    )
    return 1 if hung or leaks.total else 0


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--conversations",
        type=int,
        default=None,
        help="conversations in flight; each user starts a new one after --turns (200; 64 quick)",
    )
    parser.add_argument("--turns", type=int, default=8, help="turns per conversation (8)")
    parser.add_argument("--concurrency", type=int, default=None, help="requests in flight at most (32; 16 quick)")
    parser.add_argument("--seconds", type=float, default=None, help="no turn starts after this (50; 12 quick)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every conversation's RNG (1)")
    parser.add_argument("--quick", action="store_true", help="about 15 s instead of about 60 s")
    parser.add_argument(
        "--users-per-key", type=int, default=2, help="users sharing one API key, hence one cloud health record (2)"
    )
    parser.add_argument("--request-timeout", type=float, default=30.0, help="client timeout; hitting it = HUNG (30)")
    parser.add_argument("--cloud-fault-rate", type=float, default=0.2, help="share of steps with a cloud fault (0.2)")
    parser.add_argument("--local-fault-rate", type=float, default=0.12, help="share of steps with a local fault (0.12)")
    parser.add_argument("--probe-fault-rate", type=float, default=0.3, help="share of health probes that fail (0.3)")
    parser.add_argument(
        "--rss-bound-mib",
        type=float,
        default=20.0,
        help="bound on RSS growth after warm-up, net of the ledger index (20)",
    )
    parser.add_argument("--keep", action="store_true", help="keep Trooper's log and store, and print where")
    args = parser.parse_args(argv)
    args.conversations = args.conversations or (64 if args.quick else 200)
    args.concurrency = args.concurrency or (16 if args.quick else 32)
    args.seconds = args.seconds or (12.0 if args.quick else 50.0)
    args.warmup = min(12.0, args.seconds / 5)
    for name in ("conversations", "turns", "concurrency", "users_per_key"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.request_timeout <= 0:
        parser.error("--seconds and --request-timeout must be positive")
    return args


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class _DropIncomplete(logging.Filter):
    """The fakes' dropped connections are deliberate; uvicorn logs each as an error. Hide only those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ASGI callable returned without completing response" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    book = Book(args.seed, probe_fault_rate=args.probe_fault_rate)
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="trooper-soak-"))
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trooper-soak-")))
        cloud = stack.enter_context(FakeAnthropic())
        local = stack.enter_context(FakeOllama(context_length=LOCAL_CONTEXT))
        logging.getLogger("uvicorn.error").addFilter(_DropIncomplete())
        script = CloudScript(book)
        cloud.default = script
        cloud.count_tokens_default = script.probe
        local.enqueue(LocalScript(book, local))
        trooper = TrooperProcess(workdir, cloud.url, local.url)
        exit_status: int | None = None
        try:
            trooper.wait_ready()
            print(
                f"Trooper soak — {tree_state()} · seed {args.seed} · {args.conversations} conversations in flight "
                f"× {args.turns} turns, {args.users_per_key} users per API key, concurrency {args.concurrency}, "
                f"{args.seconds:g} s (warm-up {args.warmup:g} s)"
            )
            print(
                f"Trooper pid {trooper.pid}: python -m trooper serve, SQLite store; timeouts: cloud first byte "
                f"{CLOUD_FIRST_BYTE_TIMEOUT:g} s, local first byte {LOCAL_FIRST_BYTE_TIMEOUT:g} s, local idle "
                f"{LOCAL_IDLE_TIMEOUT:g} s; 529/5xx back-off {OVERLOAD_BACKOFF:g} s. Faults: cloud "
                f"{args.cloud_fault_rate:.0%} of steps, local {args.local_fault_rate:.0%}, probes "
                f"{args.probe_fault_rate:.0%}. Fake Ollama context {LOCAL_CONTEXT} tokens."
            )
            sys.stdout.flush()
            with _runner() as runner:
                run = runner.run(run_load(args, trooper, book))
            exit_status = None if trooper.alive() else trooper.proc.returncode
        finally:
            trooper.stop()
        status = report(args, run, book, cloud=cloud, local=local, trooper=trooper, exit_status=exit_status)
        if args.keep:
            print(f"Trooper's log and store kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
