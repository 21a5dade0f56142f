"""Memory benchmark: how much of a long conversation survives compaction, and what compaction costs.

Run: ``.venv/bin/python bench/memory_bench.py`` (no network; a few minutes). Options:
``--realtalk DIR`` and ``--beam DIR`` (default: ``../shared/data/realtalk`` and ``../shared/data/beam-100k``
next to the repository, used when present), ``--no-public``, ``--no-generated``, ``--no-timing``,
``--through-proxy`` (also run the public sets at 10 % through a real Trooper, see below) and
``--example NAME`` (whose SITREP at 10 % to print). It exits 0 when every survival target is met;
timings are printed as met or not but never fail the run (a shared machine varies too much).

**Public sets.** REALTALK (real two-person messaging-app chats over 21 days) and BEAM 100K chats 1–10
(user–assistant working sessions, closer to coding-agent traffic). The data is not in the repository;
the benchmark reads it from the folders given. How a conversation becomes a request:

- REALTALK: the first speaker of session 1 is ``user``, the other ``assistant``; consecutive messages of
  one speaker form one message, one line per chat message (``Name: text``), the first line of each
  session prefixed with its date (``[29.12.2023, 22:42:04] Emi: Hey!``), as a relayed chat log reads.
- BEAM: its user and assistant messages as they are, the ``->-> 1,1`` markers stripped.
- A final user prompt ("Let's continue.") when the conversation ends with the assistant: the
  forced-local turn.

The metric (the data README's, so figures are comparable): the local model's context is set to a share
of the conversation (``share × characters / 4`` tokens) plus room for the output (``max_tokens`` of
``min(256, that / 3)``, so the reserve is exactly that), the request goes through the very code the
engine uses to build a local request (``trooper.context.Memory``, which calls
``trooper.memory.compact``), and what it would send is read back. A fact is an answer (REALTALK,
categories 1–3) or a rubric item of at most six content words (BEAM: information extraction, knowledge
update, temporal reasoning, multi-session reasoning) whose evidence messages all lie in the middle
(after the first two turns, before the last 20 % of messages); facts without content words are left
out. Content words: lower-cased alphanumeric words minus a small list of function words
(:data:`STOP`). A REALTALK fact survives when at least half of its content words occur in what was
sent, a BEAM fact when all of them do. Baseline: a recency window, the same number of characters as
Trooper sent, from the end of the transcript. Evidence ids written as ranges are expanded; facts
citing ids the conversation does not have are skipped and counted.

``--through-proxy`` runs a real Trooper (``trooper.engine.Engine`` and ``trooper.server.create_app`` on
``trooper.testing.LoopbackServer``, against ``FakeAnthropic`` and a ``FakeOllama`` whose model reports
the computed context), sends each conversation with ``x_force_local`` and reads the request
``FakeOllama`` received: its survival must equal the in-process figure.

**Generated set.** A seeded generator writes long multi-topic work conversations — chat, code, tool
loops — and plants facts (identifiers, URLs, numbers with units, names, dates, versions, tickets,
e-mails, hashes, paths, decisions) as exact strings in the middle turns, among distractors full of the
same kinds of tokens. Context: the Anchor and the last four turns plus 5 / 10 / 20 % of the middle's
tokens; survival: planted strings present verbatim in what was sent, against a recency window and random
sentences given the same tokens for the middle.

**Timing.** ``compact`` on a 1,000-turn generated conversation from a fresh cache (cold, as after a
restart), and one more turn with a warm cache (median of 12 successive turns); warm results are checked
against cold ones.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trooper.config import Config, OllamaConfig
from trooper.context import Memory
from trooper.memory import (
    Budget,
    CalibratedEstimator,
    CompactionCache,
    compact,
    message_text,
    segment,
    turn_tokens,
)

Message = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]
SHARES = (0.05, 0.10, 0.20)
#: The targets: survival ratio to the recency window per share, and survival at 10 %.
PUBLIC_RATIOS = {0.05: 3.0, 0.10: 2.5, 0.20: 2.0}
PUBLIC_AT_10 = 0.50
#: The generated set's figures before the salience SITREP: not to regress below.
GENERATED_BEFORE = {0.05: 0.558, 0.10: 0.840, 0.20: 0.973}
FINAL_PROMPT = "Let's continue."
#: Function words left out of a fact's content words (the data README's "small stop-word list").
STOP = frozenset(
    """a an the and or but of to in on at for with by from is are was were be been being it its as that this
    these those i you he she we they my your his her our their me him us them do did does not no yes so if
    then than too very can will just about into over after before up down out off again there here what
    which who whom when where why how all any both each few more most other some such only own same has
    have had having would could should may might must shall also till until per via am""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOP]


# ------------------------------------------------------------------------------------ public sets


@attrs.frozen
class Conversation:
    """One public conversation as a request, and its facts in the middle."""

    source: str
    name: str
    messages: list[Message]
    #: (answer, all content words needed?) per fact whose evidence lies in the middle.
    facts: list[tuple[str, bool]]
    #: Evidence ids written as ranges (expanded), and facts skipped for ids the conversation lacks.
    ranges: int
    skipped: int
    #: Facts left out because their answer has no content word.
    wordless: int


def _final(messages: list[Message]) -> list[Message]:
    if messages and messages[-1]["role"] == "user":
        return messages
    return [*messages, {"role": "user", "content": FINAL_PROMPT}]


def _merge(rows: Sequence[tuple[str, str]], separator: str) -> tuple[list[Message], list[int]]:
    """Rows of (role, text) as alternating messages; for each row, the index of its message."""
    messages: list[Message] = []
    owner: list[int] = []
    for role, text in rows:
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += separator + text
        else:
            messages.append({"role": role, "content": text})
        owner.append(len(messages) - 1)
    return messages, owner


def _middle(messages: list[Message], owner: list[int], evidence: Sequence[int]) -> bool:
    """Whether every evidence row lies after the first two turns and before the last 20 % of rows."""
    prompts = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(prompts) < 3:
        return False
    first = next(i for i, o in enumerate(owner) if o >= prompts[2])
    return all(first <= e < int(0.8 * len(owner)) for e in evidence)


_RANGE = re.compile(r"D(\d+):(\d+)-(?:D\1:)?(\d+)")


def load_realtalk(path: Path) -> Conversation:
    data = json.loads(path.read_text())
    sessions = sorted(
        (k for k in data if re.fullmatch(r"session_\d+", k) and isinstance(data[k], list)), key=lambda k: int(k[8:])
    )
    rows: list[tuple[str, str]] = []
    ids: dict[str, int] = {}
    first_speaker = None
    for session in sessions:
        for i, message in enumerate(data[session]):
            speaker = str(message["speaker"])
            first_speaker = first_speaker or speaker
            stamp = f"[{data[session + '_date_time']}] " if i == 0 else ""
            ids[str(message["dia_id"])] = len(rows)
            rows.append(
                ("user" if speaker == first_speaker else "assistant", f"{stamp}{speaker}: {message['clean_text']}")
            )
    messages, owner = _merge(rows, "\n")
    facts: list[tuple[str, bool]] = []
    ranges = skipped = wordless = 0
    for qa in data.get("qa", []):
        if qa.get("category") not in (1, 2, 3):
            continue
        evidence: list[int] = []
        missing = False
        for item in qa.get("evidence", []):
            for part in re.split(r"[;,\s]+", str(item).strip()):
                span = _RANGE.fullmatch(part)
                names = [f"D{span[1]}:{k}" for k in range(int(span[2]), int(span[3]) + 1)] if span else [part]
                ranges += bool(span)
                for name in filter(None, names):
                    if name in ids:
                        evidence.append(ids[name])
                    else:
                        missing = True
        answer = str(qa.get("answer", ""))
        if missing or not evidence:
            skipped += 1
        elif not content_words(answer):
            wordless += 1
        elif _middle(messages, owner, evidence):
            facts.append((answer, False))
    return Conversation("REALTALK", path.stem, _final(messages), facts, ranges, skipped, wordless)


_MARKER = re.compile(r"\s*->->\s*\d+\s*,\s*\d+\s*$")
_RUBRIC = re.compile(r"LLM response should (?:state|mention|contain)\s*:\s*(.*)", re.IGNORECASE)
BEAM_KINDS = ("information_extraction", "knowledge_update", "temporal_reasoning", "multi_session_reasoning")


def load_beam(folder: Path) -> Conversation:
    chat = json.loads((folder / "chat.json").read_text())
    rows = [m for batch in chat for session in batch["turns"] for m in session]
    messages, owner = _merge(
        [(m["role"], _MARKER.sub("", m["content"]) if m["role"] == "user" else m["content"]) for m in rows], "\n\n"
    )
    ids = {m["id"]: i for i, m in enumerate(rows)}
    probing = json.loads((folder / "probing_questions.json").read_text())
    facts: list[tuple[str, bool]] = []
    skipped = wordless = 0
    for kind in BEAM_KINDS:
        for question in probing.get(kind, []):
            source = question.get("source_chat_ids") or []
            cited = [x for v in source.values() for x in v] if isinstance(source, dict) else list(source)
            evidence = [ids[x] for x in cited if x in ids]
            for item in question.get("rubric", []):
                m = _RUBRIC.match(item)
                if m is None or len(content_words(m[1])) > 6:
                    continue
                if len(evidence) != len(cited) or not evidence:
                    skipped += 1
                elif not content_words(m[1]):
                    wordless += 1
                elif _middle(messages, owner, evidence):
                    facts.append((m[1].strip(), True))
    return Conversation("BEAM", folder.name, _final(messages), facts, 0, skipped, wordless)


def load_public(realtalk: Path | None, beam: Path | None) -> list[Conversation]:
    out: list[Conversation] = []
    if realtalk is not None and realtalk.is_dir():
        out += [load_realtalk(p) for p in sorted(realtalk.glob("Chat_*.json"), key=lambda p: int(p.stem.split("_")[1]))]
    if beam is not None and beam.is_dir():
        folders = sorted((p for p in beam.iterdir() if (p / "chat.json").exists()), key=lambda p: int(p.name))
        out += [load_beam(p) for p in folders]
    return out


def survives(answer: str, sent: set[str], every_word: bool) -> bool:
    words = content_words(answer)
    found = sum(w in sent for w in words)
    return found == len(words) if every_word else 2 * found >= len(words)


def request_for(conversation: Conversation, share: float) -> tuple[dict[str, Any], int]:
    """The forced-local request body and the local context for ``share`` of the conversation."""
    chars = sum(len(message_text(m)) for m in conversation.messages)
    tokens = int(share * chars / 4)
    room = max(1, min(256, tokens // 3))
    body = {"model": "claude-sonnet-4-6", "max_tokens": room, "messages": conversation.messages}
    return body, tokens + room


def local_request(body: Mapping[str, Any], context: int) -> tuple[list[Message], dict[str, int], float, str]:
    """What Trooper would send the local model, built the way the engine builds it."""
    memory = Memory(Config(ollama=OllamaConfig(context_length=context)), None)
    started = time.perf_counter()
    result = memory.compact(body, "bench")
    elapsed = time.perf_counter() - started
    sitrep = next((message_text(m) for m in result.messages if message_text(m).startswith("[SITREP")), "")
    return result.messages, result.layers, elapsed, sitrep


@attrs.define
class Row:
    """One public set at one share, summed over its conversations."""

    facts: int = 0
    trooper: int = 0
    recency: int = 0
    by_sitrep: int = 0
    sitrep_tokens: int = 0
    layers: list[dict[str, int]] = attrs.Factory(list)
    times: list[float] = attrs.Factory(list)


def run_public(
    conversations: Sequence[Conversation], example: str | None
) -> tuple[dict[tuple[str, float], Row], dict[str, str]]:
    rows: dict[tuple[str, float], Row] = {}
    examples: dict[str, str] = {}
    for conversation in conversations:
        transcript = "\n".join(message_text(m) for m in conversation.messages)
        for share in SHARES:
            body, context = request_for(conversation, share)
            sent, layers, elapsed, sitrep = local_request(body, context)
            text = "\n".join(message_text(m) for m in sent)
            words, window = set(content_words(text)), set(content_words(transcript[-len(text) :]))
            sitrep_words = set(content_words(sitrep))
            row = rows.setdefault((conversation.source, share), Row())
            row.facts += len(conversation.facts)
            row.trooper += sum(survives(a, words, every) for a, every in conversation.facts)
            row.recency += sum(survives(a, window, every) for a, every in conversation.facts)
            row.by_sitrep += sum(survives(a, sitrep_words, every) for a, every in conversation.facts)
            row.sitrep_tokens += layers["sitrep"]
            row.layers.append(layers)
            row.times.append(elapsed)
            wanted = example if example is not None else None
            if (
                share == 0.10
                and conversation.source not in examples
                and (wanted is None or wanted == conversation.name)
            ):
                examples[conversation.source] = f"{conversation.name} at 10 %:\n{sitrep}"
    return rows, examples


def public_report(
    conversations: Sequence[Conversation], rows: Mapping[tuple[str, float], Row]
) -> tuple[list[str], bool]:
    lines: list[str] = []
    ok = True
    for source in dict.fromkeys(c.source for c in conversations):
        mine = [c for c in conversations if c.source == source]
        lines.append(
            f"{source}: {len(mine)} conversations, {sum(len(c.messages) for c in mine):,} request messages, "
            f"{sum(len(c.facts) for c in mine)} facts in the middle; evidence ranges expanded "
            f"{sum(c.ranges for c in mine)}, facts skipped for unknown evidence ids {sum(c.skipped for c in mine)}, "
            f"facts without content words left out {sum(c.wordless for c in mine)}"
        )
        header = (
            f"  {'share':>5}  {'Trooper':>8} {'recency':>8} {'ratio':>6}  {'/1k SITREP tok':>14}  "
            f"{'Anchor / SITREP / Tail tokens (mean)':>37}  {'compaction ms (median)':>22}  target"
        )
        lines += [header, "  " + "-" * (len(header) - 2)]
        for share in SHARES:
            r = rows[(source, share)]
            t, b = r.trooper / r.facts, r.recency / r.facts
            ratio = t / b if b else float("inf")
            split = " / ".join(f"{statistics.fmean(x[k] for x in r.layers):,.0f}" for k in ("anchor", "sitrep", "tail"))
            need = PUBLIC_RATIOS[share]
            met = ratio >= need and (share != 0.10 or t >= PUBLIC_AT_10)
            ok &= met
            goal = f"≥ {need}×" + (f" and ≥ {PUBLIC_AT_10:.0%}" if share == 0.10 else "")
            density = 1000 * r.by_sitrep / max(1, r.sitrep_tokens)
            lines.append(
                f"  {share:>5.0%}  {t:>8.1%} {b:>8.1%} {ratio:>5.1f}×  {density:>14.2f}  "
                f"{split:>37}  {1000 * statistics.median(r.times):>22.1f}  {goal}: {'MET' if met else 'NOT MET'}"
            )
        lines.append("")
    return lines, ok


# ------------------------------------------------------------------------------------ through a proxy


def run_through_proxy(conversations: Sequence[Conversation], share: float = 0.10) -> list[str]:
    """Each conversation through a real Trooper on loopback; what FakeOllama received, scored."""
    import httpx

    from trooper.audit import configure_logging
    from trooper.engine import Engine
    from trooper.providers.anthropic import AnthropicProvider
    from trooper.providers.ollama import OllamaProvider
    from trooper.server import UVICORN_OPTIONS, create_app
    from trooper.store import MemoryStore
    from trooper.testing import FakeAnthropic, FakeOllama, LoopbackServer
    from trooper.testing.fake_ollama import FakeModel

    configure_logging("warning", open(os.devnull, "w"))  # noqa: SIM115 - Trooper's log is not the benchmark's
    lines: list[str] = []
    totals: dict[str, list[int]] = {}
    same_text = 0
    with FakeAnthropic() as cloud:
        for conversation in conversations:
            body, context = request_for(conversation, share)
            with FakeOllama([FakeModel("qwen3", context_length=context)]) as local:
                config = Config(ollama=OllamaConfig(model="qwen3"))
                engine = Engine(
                    cloud=AnthropicProvider(cloud.url),
                    local=OllamaProvider(local.url),
                    store=MemoryStore(),
                    config=config,
                )
                server = LoopbackServer(create_app(config, engine), **UVICORN_OPTIONS).start()
                try:
                    reply = httpx.post(
                        f"{server.url}/v1/messages",
                        json={**body, "x_force_local": True},
                        headers={"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01"},
                        timeout=120,
                    )
                    reply.raise_for_status()
                finally:
                    loop = server.loop
                    if loop is not None and not loop.is_closed():
                        for provider in (engine.cloud, engine.local):
                            if provider is not None:
                                asyncio.run_coroutine_threadsafe(provider.aclose(), loop).result(5)
                    server.stop()
                received = local.chat_requests()[-1]["messages"]
            proxied = "\n".join(str(m.get("content", "")) for m in received if m.get("role") != "system")
            direct = "\n".join(message_text(m) for m in local_request(body, context)[0])
            same_text += proxied == direct
            words, words_direct = set(content_words(proxied)), set(content_words(direct))
            t = totals.setdefault(conversation.source, [0, 0, 0])
            t[0] += sum(survives(a, words, every) for a, every in conversation.facts)
            t[1] += sum(survives(a, words_direct, every) for a, every in conversation.facts)
            t[2] += len(conversation.facts)
    for source, (proxied_n, direct_n, n) in totals.items():
        lines.append(
            f"  {source} at {share:.0%}: through the proxy {proxied_n}/{n} = {proxied_n / n:.1%}, in process "
            f"{direct_n}/{n} = {direct_n / n:.1%} → {'AGREE' if proxied_n == direct_n else 'DIFFER'}"
        )
    lines.append(
        f"  requests FakeOllama received identical (text) to the in-process ones: {same_text}/{len(conversations)}"
    )
    return lines


# --------------------------------------------------------------------------------- generated set

SEEDS = (11, 23, 37, 41, 59)
MIDDLE_TURNS = 120
TAIL_TURNS = 4  # including the current prompt
TIMING_TURNS = 1000

# ------------------------------------------------------------------------------------- vocabulary

FIRST = [
    "Priya",
    "Maria",
    "Kenji",
    "Olu",
    "Ingrid",
    "Mateo",
    "Aisha",
    "Lars",
    "Chen",
    "Fatima",
    "Diego",
    "Hana",
    "Tomasz",
    "Amara",
    "Nikolai",
    "Sofia",
    "Rafael",
    "Yuki",
    "Elena",
    "Kwame",
    "Astrid",
    "Omar",
    "Lucia",
    "Jonas",
    "Mei",
    "Andile",
    "Greta",
    "Ravi",
    "Noor",
    "Pavel",
    "Leilani",
    "Bruno",
    "Selin",
    "Arjun",
    "Freya",
    "Tariq",
    "Camila",
    "Henrik",
    "Zara",
    "Emeka",
]
LAST = [
    "Raman",
    "Delgado",
    "Watanabe",
    "Adeyemi",
    "Solberg",
    "Ferreira",
    "Siddiqui",
    "Lindqvist",
    "Zhao",
    "Haddad",
    "Morales",
    "Kobayashi",
    "Nowak",
    "Okafor",
    "Volkov",
    "Rossi",
    "Almeida",
    "Tanaka",
    "Petrova",
    "Mensah",
    "Nyberg",
    "Farouk",
    "Navarro",
    "Becker",
    "Huang",
    "Dlamini",
    "Hoffmann",
    "Iyer",
    "Karimi",
    "Novak",
    "Kahale",
    "Costa",
    "Yilmaz",
    "Menon",
    "Berg",
    "Aziz",
    "Ortega",
    "Dahl",
    "Malik",
    "Eze",
]
COLLEAGUES = ("Tom Becker", "Sarah Lin", "Alex Romero", "Jordan Wu", "Dana Fischer")
TEAMS = ("platform", "payments", "data", "mobile", "security", "growth", "infra", "search")
TECH = (
    "Redis Streams",
    "Kafka",
    "RabbitMQ",
    "NATS JetStream",
    "Amazon SQS",
    "Apache Pulsar",
    "Kinesis",
    "Google Pub/Sub",
    "Postgres",
    "DynamoDB",
    "ClickHouse",
    "Elasticsearch",
    "OpenSearch",
    "Temporal",
    "Celery",
    "Airflow",
)
REGIONS = ("eu-west-1", "us-east-2", "ap-south-1", "eu-central-1", "us-west-2")
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WORDS = [
    "amber",
    "birch",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "krypton",
    "lumen",
    "meadow",
    "nectar",
    "onyx",
    "prairie",
    "quartz",
    "raven",
    "sierra",
    "tundra",
    "umber",
    "violet",
    "willow",
    "xenon",
    "yonder",
    "zephyr",
]
COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli", "vandelay")


class Topic:
    """A thread of work the conversation keeps coming back to."""

    def __init__(self, name: str, comp: str, files: Sequence[str], funcs: Sequence[str]) -> None:
        self.name = name
        self.comp = comp
        self.files = files
        self.funcs = funcs


TOPICS = (
    Topic("checkout", "checkout", ("src/checkout/cart.py", "src/checkout/pricing.py"), ("apply_discount", "total")),
    Topic("search", "indexer", ("services/indexer/main.go", "services/indexer/shard.go"), ("Reindex", "Merge")),
    Topic("auth", "auth-gateway", ("auth/gateway/tokens.ts", "auth/gateway/session.ts"), ("refreshToken", "verify")),
    Topic("billing", "billing", ("billing/invoices.py", "billing/ledger.py"), ("close_period", "post_entry")),
    Topic("mobile", "mobile-app", ("app/src/Sync.kt", "app/src/Feed.kt"), ("syncNow", "loadPage")),
    Topic("warehouse", "warehouse", ("dbt/models/orders.sql", "dbt/models/users.sql"), ("orders_daily", "dim_users")),
)


def hexs(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


# ---------------------------------------------------------------------------------- planted facts


class Fact:
    def __init__(self, category: str, value: str, sentence: str, where: str) -> None:
        self.category = category
        self.value = value
        self.sentence = sentence
        self.where = where  # "user", "assistant" or "tool"


def make_fact(rng: random.Random, topic: Topic, used: set[str]) -> Fact:
    """One planted fact: an exact string inside an ordinary sentence (several phrasings per kind,
    some with cue words like "we agreed", most without, so no single template gives it away)."""
    comp = topic.comp
    team = rng.choice(TEAMS)
    while True:
        cat = rng.choice(
            (
                "host",
                "url",
                "latency",
                "memory",
                "money",
                "name",
                "date",
                "version",
                "ticket",
                "email",
                "decision",
                "flag",
                "envvar",
                "commit",
                "path",
            )
        )
        first, last = rng.choice(FIRST), rng.choice(LAST)
        where = rng.choice(("user", "assistant"))
        if cat == "host":
            v = f"{comp}-db-{hexs(rng, 4)}.{rng.choice(REGIONS)}.internal"
            phrasings = [
                f"The new primary for the {comp} database is {v}, the old one gets retired next week.",
                f"Reads for {comp} go to {v} now.",
                f"Failover moved {comp} onto {v} overnight, so the dashboards look different.",
            ]
        elif cat == "url":
            v = f"https://{rng.choice(WORDS)}.{rng.choice(COMPANIES)}.io/runbooks/{comp}/{hexs(rng, 6)}"
            phrasings = [
                f"The runbook for {comp} incidents is at {v} if you need it during the rollout.",
                f"{v} has the steps the {team} team used last time.",
                f"I bookmarked {v} for the {comp} on-call.",
            ]
            where = rng.choice(("user", "assistant", "tool"))
        elif cat == "latency":
            v = f"{rng.randrange(120, 990)} ms"
            phrasings = [
                f"We agreed that the p99 budget for {comp} calls is {v}; anything slower pages on-call.",
                f"The {comp} p99 was {v} in yesterday's load test.",
                f"Checkout to {comp} round trips take {v} at the 99th percentile.",
            ]
        elif cat == "memory":
            v = f"{rng.randrange(12, 96)} GB"
            phrasings = [
                f"After the upgrade the {comp} workers need {v} of RAM each, so resize the node pool.",
                f"Each {comp} worker peaked at {v} during the backfill.",
            ]
        elif cat == "money":
            v = f"${rng.randrange(2, 60)},{rng.randrange(100, 999)}"
            phrasings = [
                f"Finance approved a monthly cap of {v} for the {comp} cluster, including egress.",
                f"The {comp} cluster cost {v} last month.",
                f"Egress alone was {v} on the {comp} bill.",
            ]
        elif cat == "name":
            v = f"{first} {last}"
            phrasings = [
                f"{v} from the {team} team owns the {comp} rollout from now on.",
                f"Ping {v} if the {comp} alerts fire again.",
                f"The {comp} review went to {v} this time.",
            ]
        elif cat == "date":
            if rng.random() < 0.5:
                v = f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
            else:
                v = f"{rng.choice(MONTHS)} {rng.randrange(1, 29)}"
            phrasings = [
                f"Code freeze for {comp} starts on {v}, so the migration has to land before then.",
                f"The {comp} certificate expires on {v}.",
                f"Our {comp} vendor contract renews {v}.",
            ]
        elif cat == "version":
            v = f"v{rng.randrange(1, 9)}.{rng.randrange(0, 40)}.{rng.randrange(0, 20)}"
            phrasings = [
                f"Pin the {comp} SDK to {v}; the newer release breaks pagination.",
                f"Production runs {comp} {v} today.",
            ]
            where = rng.choice(("user", "assistant", "tool"))
            if where == "tool":
                phrasings = [f"deploy ok: {comp} build {v} promoted to production"]
        elif cat == "ticket":
            v = f"{rng.choice(('OPS', 'PAY', 'SRCH', 'MOB', 'DATA', 'SEC'))}-{rng.randrange(1000, 9999)}"
            phrasings = [
                f"I filed {v} to track the flaky {comp} test so we stop re-running it.",
                f"That {comp} timeout is {v} in the tracker.",
            ]
            where = rng.choice(("user", "assistant", "tool"))
            if where == "tool":
                phrasings = [f"Created issue {v}: flaky test in {comp} (assigned to on-call)"]
        elif cat == "email":
            v = f"{first.lower()}.{last.lower()}@{rng.choice(COMPANIES)}.com"
            phrasings = [
                f"Send the {comp} access request to {v}, not to the generic helpdesk.",
                f"The {comp} vendor contact is {v}.",
            ]
        elif cat == "decision":
            a, b = rng.sample(TECH, 2)
            v = f"{a} instead of {b}"
            phrasings = [
                f"After the benchmark, let's go with {v} for the {comp} events.",
                f"Final call from the {team} review: {v} for {comp}.",
                f"So {comp} moves to {v}, starting with the next sprint.",
            ]
        elif cat == "flag":
            v = f"{comp.replace('-', '_')}_{rng.choice(WORDS)}_v{rng.randrange(2, 9)}"
            phrasings = [
                f"The new flow is gated behind the flag {v}, default off until QA signs off.",
                f"Toggle {v} to get the old {comp} behaviour back.",
            ]
        elif cat == "envvar":
            v = f"ACME_{rng.choice(WORDS).upper()}_{rng.choice(('TIMEOUT', 'POOL_SIZE', 'MAX_RETRIES'))}"
            phrasings = [
                f"Set {v} in the staging env before the next deploy, otherwise {comp} falls back to defaults.",
                f"{comp} reads {v} at start-up.",
            ]
        elif cat == "commit":
            v = hexs(rng, 9)
            phrasings = [
                f"The regression was introduced in commit {v}, which touched the {comp} retry loop.",
                f"Bisect points at {v} for the {comp} slowdown.",
            ]
            where = rng.choice(("assistant", "tool"))
            if where == "tool":
                phrasings = [f"{v} fix(retry): do not retry {comp} calls on 4xx"]
        else:  # path
            v = f"/etc/{comp}/{rng.choice(WORDS)}-{rng.choice(('override', 'limits', 'routing'))}.yaml"
            phrasings = [
                f"The override lives in {v} on the bastion host, not in the repo.",
                f"Ops keeps the {comp} limits in {v}.",
            ]
        if v not in used:
            used.add(v)
            return Fact(cat, v, rng.choice(phrasings), where)


# ------------------------------------------------------------------------------------ distractors


def user_filler(rng: random.Random, t: Topic) -> str:
    n = rng.randrange(2, 60)
    options = (
        f"I re-ran the {t.comp} suite {n} times and it still felt slow.",
        f"It took about {n} minutes on my laptop.",
        f"{rng.choice(COLLEAGUES)} said the {t.comp} dashboards looked normal yesterday.",
        f"Line {rng.randrange(10, 400)} of {rng.choice(t.files)} looks odd to me.",
        f"We have {n} open pull requests against {t.comp} right now.",
        f"The {t.comp} job used {rng.randrange(100, 4000)} MB of memory in the last run.",
        f"Can you take another look at the {t.comp} module?",
        "Thanks, that makes sense.",
        f"Let me know if the {t.comp} tests pass on your side.",
        f"The build finished in {rng.randrange(20, 900)} seconds.",
        f"I think {rng.choice(FIRST)} {rng.choice(LAST)} mentioned something similar in the {t.name} channel.",
        f"Our staging box is still on Python 3.{rng.randrange(8, 13)}.",
        f"There were {n} warnings but no errors.",
        f"I'm not sure the {t.comp} change is worth it yet.",
        f"Also, {rng.choice(COLLEAGUES)} is out on {rng.choice(('Monday', 'Friday', 'Thursday'))}.",
        f"Please keep the diff small, the {t.comp} reviewers are busy.",
    )
    return rng.choice(options)


def assistant_filler(rng: random.Random, t: Topic) -> str:
    n = rng.randrange(2, 60)
    options = (
        f"The {t.comp} module wraps the storage client and retries on failure.",
        f"I checked {rng.choice(t.files)} and the logic there is straightforward.",
        f"This should reduce the load on {t.comp} by roughly {n}%.",
        "The function returns early when the payload is empty.",
        "Here is a summary of what changed.",
        f"I updated {n} call sites in {rng.choice(t.files)}.",
        "Overall the change is small and low-risk.",
        f"The error came from a missing null check in {rng.choice(t.funcs)}.",
        f"Most of the time is spent in {rng.choice(t.funcs)}, about {n} ms per call.",
        f"I would keep the batch size at {rng.choice((50, 100, 200, 500))} for now.",
        f"That matches what {rng.choice(COLLEAGUES)} saw last week.",
        f"The tests cover {rng.randrange(60, 99)}% of {t.comp} after this change.",
    )
    return rng.choice(options)


def code_block(rng: random.Random, t: Topic) -> str:
    fn = rng.choice(t.funcs)
    n = rng.randrange(2, 30)
    return (
        "```python\n"
        f"def {fn.lower()}_{rng.choice(WORDS)}(payload, timeout={n}):\n"
        f"    client = StorageClient(retries={rng.randrange(1, 6)})\n"
        f"    result = client.fetch(payload['{rng.choice(WORDS)}_id'])\n"
        "    if result.status != 200:\n"
        f"        raise RuntimeError(f'{t.comp} failed: {{result.status}}')\n"
        f"    return result.data[:{rng.randrange(10, 500)}]\n"
        "```"
    )


def tool_exchange(rng: random.Random, t: Topic, idx: int, plant: str | None) -> tuple[Message, Message]:
    tid = f"toolu_{idx:05d}{hexs(rng, 12)}"
    kind = rng.choice(("pytest", "gitlog", "logs", "grep", "pods"))
    lines: list[str]
    if kind == "pytest":
        cmd = f"pytest tests/{t.name} -q"
        p, f = rng.randrange(20, 300), rng.randrange(0, 4)
        lines = [f"{p} passed, {f} failed in {rng.randrange(2, 90)}.{rng.randrange(10, 99)}s"]
        lines += [f"FAILED tests/{t.name}/test_{rng.choice(WORDS)}.py::test_{rng.choice(WORDS)}" for _ in range(f)]
    elif kind == "gitlog":
        cmd = "git log --oneline -6"
        lines = [
            f"{hexs(rng, 9)} {rng.choice(('fix', 'feat', 'chore'))}: {rng.choice(WORDS)} {t.comp}" for _ in range(6)
        ]
    elif kind == "logs":
        cmd = f"kubectl logs deploy/{t.comp} --tail=8"
        lines = [
            f"2025-01-{rng.randrange(1, 29):02d}T{rng.randrange(0, 24):02d}:{rng.randrange(0, 60):02d}:"
            f"{rng.randrange(0, 60):02d}Z INFO req_{hexs(rng, 8)} GET /api/{t.name}/{rng.choice(WORDS)} "
            f"200 {rng.randrange(3, 900)}ms"
            for _ in range(8)
        ]
    elif kind == "grep":
        cmd = f"grep -rn {rng.choice(t.funcs)} {t.files[0].split('/')[0]}"
        lines = [
            f"{rng.choice(t.files)}:{rng.randrange(1, 500)}:    {rng.choice(t.funcs)}(ctx, {rng.randrange(1, 9)})"
            for _ in range(4)
        ]
    else:
        cmd = f"kubectl get pods -n {t.name}"
        lines = ["NAME READY STATUS RESTARTS AGE"] + [
            f"{t.comp}-{hexs(rng, 10)}-{hexs(rng, 5)} 1/1 Running {rng.randrange(0, 5)} {rng.randrange(1, 90)}m"
            for _ in range(5)
        ]
    if plant is not None:
        lines.insert(rng.randrange(0, len(lines) + 1), plant)
    use = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": f"Let me check the {t.comp} side first."},
            {"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": cmd}},
        ],
    }
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": "\n".join(lines)}]}
    return use, result


def make_turn(rng: random.Random, number: int, topic: Topic, fact: Fact | None) -> list[Message]:
    """One turn: a prompt, then chat, code or a tool loop, with an optional planted fact."""
    kind = rng.choices(("chat", "code", "tool"), weights=(45, 25, 30))[0]
    if fact is not None and fact.where == "tool":
        kind = "tool"
    user = [user_filler(rng, topic) for _ in range(rng.randrange(1, 4))]
    user.append(
        rng.choice(
            (
                f"Can you look into the {topic.comp} issue we discussed?",
                f"What do you think we should do about {rng.choice(topic.funcs)}?",
                f"Could you write the {topic.comp} helper for this?",
                f"Please check the {topic.comp} deploy status.",
                f"How should we structure the {topic.name} tests?",
            )
        )
    )
    if fact is not None and fact.where == "user":
        user.insert(rng.randrange(0, len(user) + 1), fact.sentence)
    msgs: list[Message] = [{"role": "user", "content": " ".join(user)}]
    reply = [assistant_filler(rng, topic) for _ in range(rng.randrange(3, 7))]
    if fact is not None and fact.where == "assistant":
        reply.insert(rng.randrange(0, len(reply) + 1), fact.sentence)
    if kind == "tool":
        for k in range(rng.randrange(1, 3)):
            plant = fact.sentence if (fact is not None and fact.where == "tool" and k == 0) else None
            msgs.extend(tool_exchange(rng, topic, number * 10 + k, plant))
        msgs.append({"role": "assistant", "content": " ".join(reply)})
    elif kind == "code":
        text = " ".join(reply[:2]) + "\n\n" + code_block(rng, topic) + "\n\n" + " ".join(reply[2:])
        msgs.append({"role": "assistant", "content": text})
    else:
        msgs.append({"role": "assistant", "content": " ".join(reply)})
    return msgs


ANCHOR = [
    [
        {
            "role": "user",
            "content": (
                "We're maintaining the Acme commerce platform: checkout, search, auth, billing, the mobile app and "
                "the warehouse models. Keep answers short, never push to main directly, and always run the tests "
                "before proposing a merge."
            ),
        },
        {
            "role": "assistant",
            "content": "Understood. I'll keep changes small, run tests first and never push to main.",
        },
    ],
    [
        {"role": "user", "content": "Start by giving me a quick overview of how the services talk to each other."},
        {
            "role": "assistant",
            "content": (
                "Checkout calls pricing and billing over HTTP; search is fed by the indexer from the orders stream; "
                "auth-gateway fronts every public API; the warehouse models read nightly exports."
            ),
        },
    ],
]


def conversation(seed: int, middle: int, tail: int, plant_rate: float = 0.4) -> tuple[list[Message], list[Fact]]:
    rng = random.Random(seed)
    used: set[str] = set()
    facts: list[Fact] = []
    msgs: list[Message] = [m for turn in ANCHOR for m in turn]
    topic = rng.choice(TOPICS)
    for i in range(middle):
        if rng.random() < 0.12:
            topic = rng.choice(TOPICS)
        fact = make_fact(rng, topic, used) if rng.random() < plant_rate else None
        if fact is not None:
            facts.append(fact)
        msgs.extend(make_turn(rng, i + 3, topic, fact))
    for j in range(tail):
        turn = make_turn(rng, middle + 3 + j, topic, None)
        msgs.extend(turn if j < tail - 1 else turn[:1])
    return msgs, facts


# --------------------------------------------------------------------------------------- measures


def texts(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(message_text(m) for m in messages)


_SPLIT = re.compile(r"(?<=[.!?])\s+")


def recency_window(middle_text: str, budget: int, count: Callable[[str], int]) -> str:
    """The newest middle text that fits ``budget`` tokens (whole lines, newest first)."""
    kept: list[str] = []
    used = 0
    for line in reversed(middle_text.splitlines()):
        cost = count(line) + 1
        if used + cost > budget:
            break
        kept.append(line)
        used += cost
    kept.reverse()
    while kept and count("\n".join(kept)) > budget:  # per-line costs are not exactly additive
        kept.pop(0)
    return "\n".join(kept)


def random_sentences(middle_text: str, budget: int, count: Callable[[str], int], seed: int) -> str:
    """Random sentences of the middle (seeded) until ``budget`` tokens are used."""
    sentences = [s for line in middle_text.splitlines() for s in _SPLIT.split(line) if s.strip()]
    random.Random(seed).shuffle(sentences)
    kept: list[str] = []
    used = 0
    for s in sentences:
        cost = count(s) + 1
        if used + cost <= budget:
            kept.append(s)
            used += cost
    while kept and count("\n".join(kept)) > budget:  # per-sentence costs are not exactly additive
        kept.pop()
    return "\n".join(kept)


def survival(facts: Sequence[Fact], text: str) -> int:
    return sum(1 for f in facts if f.value in text)


def run_generated() -> tuple[list[str], dict[float, dict[str, float]]]:
    est = CalibratedEstimator()
    rows: dict[float, dict[str, list[float]]] = {f: {} for f in SHARES}
    by_cat: dict[str, list[int]] = {}
    info: list[str] = []
    total_facts = 0
    total_middle = 0
    for seed in SEEDS:
        msgs, facts = conversation(seed, MIDDLE_TURNS, TAIL_TURNS)
        full = texts(msgs)
        facts = [f for f in facts if full.count(f.value) == 1]  # exact and unique in the conversation
        total_facts += len(facts)
        turns = segment(msgs)
        counts = [turn_tokens(t, est) for t in turns]
        anchor_t = sum(counts[:2])
        tail_t = sum(counts[-TAIL_TURNS:])
        middle_turns = turns[2:-TAIL_TURNS]
        middle_tokens = sum(counts[2:-TAIL_TURNS])
        total_middle += middle_tokens
        middle_text = texts([m for t in middle_turns for m in t.messages])
        fixed_text = texts([m for t in (*turns[:2], *turns[-TAIL_TURNS:]) for m in t.messages])
        for frac in SHARES:
            budget = int(frac * middle_tokens)
            usable = anchor_t + tail_t + budget
            result = compact(msgs, budget=Budget(context_tokens=usable), estimator=est, cache=CompactionCache())
            out = texts(result.messages)
            sitrep_text = result.sitrep.text if result.sitrep else ""
            r = rows[frac]
            r.setdefault("trooper", []).append(survival(facts, out) / len(facts))
            r.setdefault("trooper_density", []).append(
                1000 * survival(facts, sitrep_text) / max(1, result.layers["sitrep"])
            )
            r.setdefault("trooper_used", []).append(usable - anchor_t - tail_t)
            for key in ("anchor", "sitrep", "tail"):
                r.setdefault(key, []).append(result.layers[key])
            r.setdefault("budget", []).append(budget)
            rec = recency_window(middle_text, budget, est.count)
            r.setdefault("recency", []).append(survival(facts, fixed_text + rec) / len(facts))
            r.setdefault("recency_density", []).append(1000 * survival(facts, rec) / max(1, est.count(rec)))
            r.setdefault("recency_used", []).append(est.count(rec))
            rnd = random_sentences(middle_text, budget, est.count, seed)
            r.setdefault("random", []).append(survival(facts, fixed_text + rnd) / len(facts))
            r.setdefault("random_density", []).append(1000 * survival(facts, rnd) / max(1, est.count(rnd)))
            r.setdefault("random_used", []).append(est.count(rnd))
            if frac == SHARES[0]:
                for f in facts:
                    by_cat.setdefault(f.category, [0, 0])
                    by_cat[f.category][0] += f.value in out
                    by_cat[f.category][1] += 1
    mean = {f: {k: statistics.fmean(v) for k, v in rows[f].items()} for f in SHARES}
    info.append(
        f"conversations: {len(SEEDS)} seeds × {2 + MIDDLE_TURNS + TAIL_TURNS} turns "
        f"(Anchor 2, middle {MIDDLE_TURNS}, Tail {TAIL_TURNS}); {total_facts} planted facts "
        f"({total_facts / len(SEEDS):.1f} per conversation); middle ≈ {total_middle // len(SEEDS):,} tokens"
    )
    cats = ", ".join(f"{c} {v[0]}/{v[1]}" for c, v in sorted(by_cat.items()))
    info.append(f"Trooper survival by category at {SHARES[0]:.0%}: {cats}")
    return info, mean


def generated_report(info: list[str], mean: Mapping[float, Mapping[str, float]]) -> tuple[list[str], bool]:
    lines = list(info)
    header = (
        f"  {'share':>5}  {'method':<17} {'survival':>9} {'/1k tok':>8}  {'middle tokens':>13}  Anchor / SITREP / Tail"
    )
    lines += ["", header, "  " + "-" * (len(header) - 2)]
    ok = True
    for frac in SHARES:
        r = mean[frac]
        for key, label in (("trooper", "Trooper"), ("recency", "recency window"), ("random", "random sentences")):
            split = " / ".join(f"{r[k]:,.0f}" for k in ("anchor", "sitrep", "tail")) if key == "trooper" else ""
            lines.append(
                f"  {frac:>5.0%}  {label:<17} {100 * r[key]:>8.1f}% {r[f'{key}_density']:>8.2f}  "
                f"{r[f'{key}_used']:>13,.0f}  {split}"
            )
        before = GENERATED_BEFORE[frac]
        met = r["trooper"] >= before - 1e-9
        ok &= met
        lines.append(
            f"  {'':>5}  not below the extractive SITREP before (≥ {before:.1%}): {'MET' if met else 'NOT MET'}"
        )
    return lines, ok


def run_timing() -> list[str]:
    est = CalibratedEstimator()
    budget = Budget(context_tokens=32_768, reserved_output=4_096)
    rng = random.Random(7)
    turns: list[list[Message]] = [list(t) for t in ANCHOR]
    topic = TOPICS[0]
    used: set[str] = set()
    extra = 12
    for i in range(TIMING_TURNS - 2 + extra):
        if rng.random() < 0.12:
            topic = rng.choice(TOPICS)
        fact = make_fact(rng, topic, used) if rng.random() < 0.3 else None
        turns.append(make_turn(rng, i + 3, topic, fact))

    def request(k: int) -> list[Message]:
        """The request for turn ``k`` (1-based): turns before it complete, then its prompt."""
        return [m for t in turns[: k - 1] for m in t] + turns[k - 1][:1]

    base = request(TIMING_TURNS)
    size = len(texts(base))
    cold: list[float] = []
    cold_cpu: list[float] = []
    for _ in range(3):
        cache = CompactionCache()
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        compact(base, budget=budget, estimator=est, cache=cache)
        cold.append(time.perf_counter() - t0)
        cold_cpu.append(time.process_time() - c0)
    cache = CompactionCache()
    first = compact(base, budget=budget, estimator=est, cache=cache)
    gc.collect()  # start the timed runs without garbage left over from the cold runs above
    warm: list[float] = []
    results = []
    for k in range(TIMING_TURNS + 1, TIMING_TURNS + extra + 1):
        req = request(k)
        t0 = time.perf_counter()
        result = compact(req, budget=budget, estimator=est, cache=cache)
        warm.append(time.perf_counter() - t0)
        results.append((req, result))
    moves = sum(1 for (_, a), (_, b) in itertools.pairwise(results) if a.sources["tail"][0] != b.sources["tail"][0])
    for req, result in results:  # the cache only saves work: warm and cold results are identical
        assert result.messages == compact(req, budget=budget, estimator=est).messages, "warm != cold"
    med = statistics.median(warm)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cold_med = statistics.median(cold)
    return [
        f"machine: {os.cpu_count()} CPUs, load average {load:.2f} during the runs (other work inflates timings)",
        f"conversation: {TIMING_TURNS:,} turns, {len(base):,} messages, {size / 1e6:.2f} MB of text; "
        f"budget {budget.context_tokens:,} context − {budget.reserved_output:,} output; layers {first.layers}",
        f"cold compaction (fresh cache, as after a restart): median {1000 * cold_med:.0f} ms of 3 runs "
        f"(CPU {1000 * statistics.median(cold_cpu):.0f} ms) → target ≤ 500 ms: "
        f"{'MET' if cold_med <= 0.5 else 'NOT MET'}",
        f"one more turn, warm cache: median {1000 * med:.2f} ms of {len(warm)} runs (min {1000 * min(warm):.2f}, "
        f"max {1000 * max(warm):.2f}; the Tail moved {moves} times, the slow runs) → target ≤ 5 ms: "
        f"{'MET' if med <= 0.005 else 'NOT MET'}",
        f"cache after the run: {cache.stats()}",
    ]


def run_model_sitrep(conversations: Sequence[Conversation], url: str, model: str, share: float = 0.10) -> list[str]:
    """The model-written SITREP against a real local model: each conversation's middle summarised by
    it (as the engine's background writer would, chunk after chunk), then the local request rebuilt
    with ``sitrep="model"`` and scored like the extractive one."""
    import asyncio

    from trooper.memory import Budget, accept_summary, compact, plan_summary
    from trooper.providers.base import LocalRequest, ProviderError
    from trooper.providers.ollama import OllamaProvider

    async def ask(provider: OllamaProvider, prompt: str, max_tokens: int, num_ctx: int) -> str:
        body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}
        parts = []
        async for event in provider.events(LocalRequest(body, model=model, stream=True, num_ctx=num_ctx)):
            delta = event.get("delta") if event.get("type") == "content_block_delta" else None
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                parts.append(str(delta.get("text", "")))
        return "".join(parts)

    async def run() -> list[str]:
        provider = OllamaProvider(url, model=model)
        try:
            if not await provider.health():
                return [f"no local model answers at {url}: the model-written SITREP was not measured"]
            facts = survived = requests = 0
            started = time.perf_counter()
            for conversation in conversations:
                body, context = request_for(conversation, share)
                budget = Budget(context_tokens=context, reserved_output=body["max_tokens"])
                summaries: list[Any] = []
                while True:
                    result = compact(conversation.messages, budget=budget, sitrep="model", summaries=summaries)
                    due = plan_summary(conversation.messages, result, summaries)
                    if due is None:
                        break
                    text = await ask(provider, due.prompt(), due.max_tokens * 2, max(context, 8192))
                    summaries.append(accept_summary(due, text))
                    requests += 1
                sent = set(content_words("\n".join(message_text(m) for m in result.messages)))
                facts += len(conversation.facts)
                survived += sum(survives(answer, sent, every) for answer, every in conversation.facts)
            elapsed = time.perf_counter() - started
            return [
                f"model-written SITREP ({model} at {url}), {share:.0%} budget: {survived}/{facts} = "
                f"{survived / max(1, facts):.1%} of the middle's facts; {requests} summary requests in {elapsed:.0f} s"
            ]
        except ProviderError as exc:
            return [
                f"the local model at {url} failed ({type(exc).__name__}): the model-written SITREP was not measured"
            ]
        finally:
            await provider.aclose()

    return asyncio.run(run())


def _default(name: str) -> Path | None:
    path = (ROOT / ".." / "shared" / "data" / name).resolve()
    return path if path.is_dir() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--realtalk", type=Path, default=_default("realtalk"), help="REALTALK's data folder")
    parser.add_argument("--beam", type=Path, default=_default("beam-100k"), help="BEAM 100K's chats folder")
    parser.add_argument("--no-public", action="store_true", help="skip the public sets")
    parser.add_argument("--no-generated", action="store_true", help="skip the generated set")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing section")
    parser.add_argument("--through-proxy", action="store_true", help="also run the public sets through a real Trooper")
    parser.add_argument("--example", help="whose SITREP at 10 %% to print (a conversation name)")
    parser.add_argument("--local-model", metavar="URL", help="also measure the model-written SITREP with this Ollama")
    parser.add_argument("--model", default="qwen3", help="the Ollama model for --local-model (default qwen3)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ok = True
    # Timed first, in a fresh process: after the other sections the heap is larger, and the garbage
    # collector's passes over it would be measured too.
    timing = [] if args.no_timing else run_timing()
    print("Trooper memory benchmark (no network)")
    print("=" * 100)
    if not args.no_public:
        conversations = load_public(args.realtalk, args.beam)
        if not conversations:
            print("public sets: none found (pass --realtalk DIR and/or --beam DIR)")
        else:
            print("\nPUBLIC SETS — survival of the middle's facts (see the docstring for the metric)\n")
            rows, examples = run_public(conversations, args.example)
            lines, met = public_report(conversations, rows)
            ok &= met
            print("\n".join(lines))
            if args.through_proxy:
                print("through a real Trooper (Engine + server on loopback, FakeAnthropic, FakeOllama):")
                print("\n".join(run_through_proxy(conversations)))
                print()
            if args.local_model:
                print("\n".join(run_model_sitrep(conversations, args.local_model, args.model)))
                print()
            for source, text in examples.items():
                print(f"SITREP of {source} {text}\n")
    if not args.no_generated:
        print("GENERATED SET — planted exact strings in work conversations\n")
        lines, met = generated_report(*run_generated())
        ok &= met
        print("\n".join(lines))
        print()
    if timing:
        print("TIMING (measured first, before the other sections)")
        for line in timing:
            print(f"  {line}")
        print()
    print(
        f"survival targets: {'all MET' if ok else 'NOT all met'}; "
        f"total benchmark time: {time.perf_counter() - started:.1f} s"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
