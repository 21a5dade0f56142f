"""``trooper demo``: see Trooper work with no key, no network and no Ollama.

It starts the package's fake cloud and fake Ollama on free loopback ports and a real Trooper in
front of them (the same app ``trooper serve`` runs, on the in-memory store), then plays a short
conversation through the official ``anthropic`` SDK: a cloud turn, a ``::local`` turn, a cloud turn
from which the local one is withheld, a quota fallback and the recovery. For every turn it prints
where the turn ran and why (``x-trooper-route``, ``x-trooper-reason``) and the last messages of the
request the fake cloud actually received. It ends with the conversation's state
graph, its audit trail and a check that no local text reached the fake cloud's bytes.

What the cloud receives in place of a withheld turn is the ledger's business and may change; the
demo shows whatever arrived and checks only that the local text did not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import attrs
from rich.console import Console
from rich.markup import escape

from trooper.config import AnthropicConfig, Config, OllamaConfig, ServerConfig, StoreConfig
from trooper.testing import FakeAnthropic, FakeOllama, LoopbackServer
from trooper.testing import fake_anthropic as cloud_script
from trooper.testing import fake_ollama as local_script

SESSION: Final = "demo-session"
MODEL: Final = "claude-sonnet-4-6"
#: Not a key: the fake cloud accepts anything, and nothing leaves the machine.
DEMO_KEY: Final = "sk-ant-demo-not-a-key"
#: Text only local turns see or say. The final check searches the fake cloud's bytes for each.
CANARIES: Final = ("hunter2-CANARY-7731", "LOCAL-REPLY-CANARY-4410", "FALLBACK-REPLY-CANARY-9052")
#: How long the fake cloud's 429 tells Trooper to wait before the cloud is tried again.
RETRY_AFTER: Final = 1


@attrs.frozen
class Turn:
    """One scripted turn: the prompt, what each fake answers, and the route Trooper should choose."""

    prompt: str
    expected_route: str
    cloud: cloud_script.Script | None = None
    local: local_script.Script | None = None
    wait_before: float = 0.0
    explain: str = ""


SCRIPT: Final = (
    Turn(
        "Which database should a three-person team start with?",
        "cloud",
        cloud=cloud_script.text("Postgres: boring, well understood, and it grows with you."),
        explain="an ordinary turn goes to the cloud",
    ),
    Turn(
        f"::local Our staging password is {CANARIES[0]}; write me the connection string.",
        "local",
        local=local_script.Reply(text=f"postgres://app:{CANARIES[0]}@staging-db:5432/app ({CANARIES[1]})"),
        explain="the ::local marker keeps this turn on the local model",
    ),
    Turn(
        "Thanks. How should we back it up?",
        "cloud",
        cloud=cloud_script.text("Nightly pg_dump to object storage, plus WAL archiving for point-in-time restores."),
        explain="the next turn is back in the cloud, with the local turn withheld",
    ),
    Turn(
        "And how often should we test a restore?",
        "local",
        cloud=cloud_script.rate_limited(retry_after=RETRY_AFTER),
        local=local_script.Reply(text=f"Monthly, on a scratch machine ({CANARIES[2]})."),
        explain="the cloud answers 429: the same request is answered locally",
    ),
    Turn(
        "Last one: what should we monitor?",
        "cloud",
        cloud=cloud_script.text("Replication lag, disk, connection count and the age of the last good backup."),
        wait_before=RETRY_AFTER + 0.2,
        explain="retry-after has passed: a probe succeeds and the cloud is back",
    ),
)


@attrs.frozen
class Played:
    """What one turn did, as the client and the fake cloud saw it."""

    prompt: str
    route: str
    reason: str
    state: str
    reply: str
    #: The last messages of the last request the fake cloud received during this turn (role, text).
    cloud_saw: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Outcome:
    turns: tuple[Played, ...]
    leaked: tuple[str, ...]
    cloud_bytes: int
    graph: str
    audit: list[dict[str, Any]]

    @property
    def routes_as_expected(self) -> bool:
        return [turn.route for turn in self.turns] == [turn.expected_route for turn in SCRIPT]

    @property
    def ok(self) -> bool:
        return self.routes_as_expected and not self.leaked


T = TypeVar("T")

# ------------------------------------------------------------------------------------------- stack


@attrs.frozen
class Stack:
    """Trooper and the two fakes it talks to, all on loopback."""

    trooper: LoopbackServer
    cloud: FakeAnthropic
    local: FakeOllama
    engine: Any

    @property
    def url(self) -> str:
        return self.trooper.url

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on Trooper's event loop (its store and engine belong to it)."""
        loop = self.trooper.loop
        assert loop is not None and not loop.is_closed(), "Trooper is not running"
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)

    def settle(self) -> None:
        """Let Trooper finish the bookkeeping (audit, state) of the responses it already sent."""
        self.run(self.engine.settle())


def demo_config(cloud_url: str, local_url: str) -> Config:
    """Trooper's configuration for the demo: the fakes, the in-memory store (acknowledged as ephemeral)."""
    return Config(
        server=ServerConfig(ephemeral=True),
        anthropic=AnthropicConfig(base_url=cloud_url),
        ollama=OllamaConfig(base_url=local_url, model="qwen3"),
        store=StoreConfig(path="memory"),
    )


@contextmanager
def running(cloud: FakeAnthropic | None = None, local: FakeOllama | None = None, *, port: int = 0) -> Iterator[Stack]:
    """Start Trooper on ``port`` (0: a free one) in front of the given fakes, or of new ones."""
    from trooper.engine import Engine
    from trooper.server import UVICORN_OPTIONS, create_app

    own_cloud = cloud is None
    own_local = local is None
    cloud = cloud if cloud is not None else FakeAnthropic(describe=True).start()
    local = local if local is not None else FakeOllama().start()
    try:
        config = demo_config(cloud.url, local.url)
        engine = Engine.from_config(config)
        app = create_app(config, engine, owns_engine=True)
        with LoopbackServer(app, port=port, **UVICORN_OPTIONS) as trooper:
            yield Stack(trooper, cloud, local, engine)
    finally:
        if own_local:
            local.stop()
        if own_cloud:
            cloud.stop()


# -------------------------------------------------------------------------------------------- play


def _flatten(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                parts.append(str(block.get("text") or block.get("type", "")))
        return " ".join(parts)
    return str(content)


def _cloud_saw(cloud: FakeAnthropic, seen_before: int, last: int = 4) -> tuple[tuple[str, str], ...]:
    requests = [r for r in cloud.requests[seen_before:] if r.path == "/v1/messages" and r.method == "POST"]
    if not requests:
        return ()
    messages = requests[-1].json().get("messages", [])
    return tuple((str(m.get("role")), _flatten(m.get("content"))) for m in messages[-last:])


def play(stack: Stack, console: Console) -> Outcome:
    """Play :data:`SCRIPT` against ``stack`` through the ``anthropic`` SDK, printing as it goes."""
    import anthropic

    client = anthropic.Anthropic(
        base_url=stack.url,
        api_key=DEMO_KEY,
        max_retries=0,
        timeout=30,
        default_headers={"X-Trooper-Session": SESSION},
    )
    history: list[dict[str, Any]] = []
    played: list[Played] = []
    for number, turn in enumerate(SCRIPT, start=1):
        if turn.wait_before:
            console.print(f"[dim](waiting {turn.wait_before:g} s for the cloud's retry-after to pass)[/dim]")
            time.sleep(turn.wait_before)
        if turn.cloud is not None:
            stack.cloud.enqueue(turn.cloud)
        if turn.local is not None:
            stack.local.enqueue(turn.local)
        seen = len(stack.cloud.requests)
        history.append({"role": "user", "content": turn.prompt})
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=history)  # type: ignore[arg-type]
        message = raw.parse()
        reply = "".join(block.text for block in message.content if block.type == "text")
        history.append({"role": "assistant", "content": reply})
        result = Played(
            prompt=turn.prompt,
            route=raw.headers.get("x-trooper-route", "?"),
            reason=raw.headers.get("x-trooper-reason", "?"),
            state=raw.headers.get("x-trooper-state", "?"),
            reply=reply,
            cloud_saw=_cloud_saw(stack.cloud, seen),
        )
        played.append(result)
        _print_turn(console, number, turn, result)
    stack.settle()
    received = stack.cloud.received_bytes()
    leaked = tuple(canary for canary in CANARIES if canary.encode() in received)
    return Outcome(tuple(played), leaked, len(received), _graph(stack), stack.run(stack.engine.store.audit(SESSION)))


def _graph(stack: Stack) -> str:
    from trooper.conversation import conversation_from_dict
    from trooper.graph import render

    data = stack.run(stack.engine.store.load_conversation(SESSION))
    return render("mermaid", conversation_from_dict(data) if data is not None else None)


def _short(text: str, width: int = 96) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_turn(console: Console, number: int, turn: Turn, played: Played) -> None:
    verdict = "" if played.route == turn.expected_route else f"  [red](expected {turn.expected_route})[/red]"
    console.print()
    console.print(f"[bold]turn {number}[/bold]: {escape(turn.explain)}")
    console.print(f"  user:   {escape(_short(played.prompt))}")
    console.print(
        f"  route:  [bold]{played.route}[/bold]   reason: [bold]{played.reason}[/bold]   state: {played.state}{verdict}"
    )
    console.print(f"  reply:  {escape(_short(played.reply))}")
    if played.cloud_saw:
        console.print("  the fake cloud received (the last messages of its request):")
        for role, text in played.cloud_saw:
            console.print(f"    {role:>9}: {escape(_short(text, 84))}")
    else:
        console.print("  the fake cloud received nothing for this turn")


def report(outcome: Outcome, console: Console) -> None:
    """The state graph, the audit trail and the final check."""
    from trooper.tables import print_audit

    console.print()
    console.print(f"[bold]state graph of {SESSION}[/bold] (Mermaid; paste into any Mermaid viewer):")
    console.print(escape(outcome.graph), end="", highlight=False)
    console.print()
    print_audit(console, SESSION, outcome.audit)
    console.print()
    routes = " → ".join(f"{turn.route} ({turn.reason})" for turn in outcome.turns)
    console.print(f"routes: {routes}: {'as expected' if outcome.routes_as_expected else '[red]NOT as expected[/red]'}")
    if outcome.leaked:
        console.print(f"check: [red]FAIL[/red]: local text reached the fake cloud: {', '.join(outcome.leaked)}")
    else:
        console.print(
            f"check: ok: none of the {len(CANARIES)} local canaries is in the {outcome.cloud_bytes:,} bytes "
            "the fake cloud received"
        )


def run(console: Console) -> int:
    """``trooper demo``: start everything, play, report; 0 when every route and the check are right."""
    with running() as stack:
        _print_stack(console, stack)
        outcome = play(stack, console)
    report(outcome, console)
    return 0 if outcome.ok else 1


def _print_stack(console: Console, stack: Stack) -> None:
    console.print("[bold]Trooper demo[/bold]: a fake cloud and a fake Ollama on loopback; nothing leaves this machine.")
    console.print(f"  Trooper     {stack.url}")
    console.print(f"  fake cloud  {stack.cloud.url}")
    console.print(f"  fake Ollama {stack.local.url} (model qwen3)")


def serve_hints(stack: Stack) -> Sequence[str]:
    """What ``trooper demo --serve`` prints once the stack is up."""
    return (
        "",
        "The demo stack stays up. Point a client at Trooper:",
        f"ANTHROPIC_BASE_URL={stack.url}",
        f"  Claude Code:  ANTHROPIC_BASE_URL={stack.url} ANTHROPIC_API_KEY={DEMO_KEY} "
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 claude",
        f'  the SDK:      anthropic.Anthropic(base_url="{stack.url}", api_key="{DEMO_KEY}")',
        "Start a prompt with ::local to run that turn on the fake local model. The fake cloud's answers",
        "say how many messages it received and the last user text it saw.",
        f"  admin API:    {stack.url}/trooper/sessions",
        "Ctrl-C stops it.",
    )


__all__ = ["CANARIES", "SCRIPT", "SESSION", "Outcome", "Played", "Stack", "play", "report", "run", "running"]
