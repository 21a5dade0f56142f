"""The ``trooper`` command.

A bad configuration ends the command with one line naming the setting and exit status 2 — never a
traceback — because the first thing a new user does is mistype an environment variable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
from rich.console import Console
from rich.markup import escape

from trooper._version import __version__
from trooper.config import Config, ConfigError, SettingError, load_config
from trooper.tables import Column, print_audit, print_table, when


def _fail(message: str) -> NoReturn:
    click.echo(f"trooper: {message}", err=True)
    sys.exit(2)


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(str(exc))


@click.group()
@click.version_option(__version__, prog_name="trooper")
def main() -> None:
    """Trooper: per-turn cloud/local routing in front of the Anthropic Messages API."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file (default: ./trooper.toml when present).",
)
@click.option("--host", default=None, help="Address to bind (overrides TROOPER_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (overrides TROOPER_PORT).")
@click.option(
    "--ephemeral",
    is_flag=True,
    default=None,
    help="Allow TROOPER_STORE=memory, which loses the privacy ledger on restart (server.ephemeral).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Processes serving the port; they share the store (SQLite or Redis) (server.workers).",
)
def serve(
    config_path: str | None, host: str | None, port: int | None, ephemeral: bool | None, workers: int | None
) -> None:
    """Run the proxy. Point ANTHROPIC_BASE_URL at it.

    It binds its port first (a busy port is one line and exit 2), then says whether the cloud, Ollama
    and the local model answer; an unreachable upstream does not stop it.
    """
    config = _config(config_path)

    import attrs

    from trooper.audit import configure_logging
    from trooper.config import store_location
    from trooper.startup import bind, bind_error, refusal, return_large_frees_to_the_system, supervise

    try:
        server_config = attrs.evolve(
            config.server,
            host=host or config.server.host,
            port=config.server.port if port is None else port,
            ephemeral=config.server.ephemeral if ephemeral is None else ephemeral,
            workers=config.server.workers if workers is None else workers,
        )
    except SettingError as exc:
        _fail(f"bad setting server.{exc.field} (from --{exc.field}): {exc.reason}")
    config = attrs.evolve(config, server=server_config)
    problem = refusal(config)
    if problem is not None:
        _fail(problem)
    configure_logging(config.server.log_level)
    return_large_frees_to_the_system()
    try:
        sock = bind(config.server.host, config.server.port)
    except OSError as exc:
        _fail(f"cannot listen on {config.server.host}:{config.server.port}: {bind_error(exc)}")
    count = config.server.workers
    engine = None
    try:
        if count == 1:
            engine = _engine(config)
        else:
            _check_store(config)  # before any fork: a store that cannot be opened is one line, once
    except ConfigError as exc:
        sock.close()
        _fail(str(exc))
    except OSError as exc:
        sock.close()
        _fail(f"cannot open the store at {store_location(config.store.path)}: {exc}")
    bound_port = sock.getsockname()[1]
    url_host = f"[{config.server.host}]" if ":" in config.server.host else config.server.host
    click.echo(
        f"trooper {__version__} listening on http://{url_host}:{bound_port} "
        f"(cloud: {config.anthropic.base_url}, local: {config.ollama.model} at {config.ollama.base_url}, "
        f"store: {store_location(config.store.path)}" + (f", {count} workers" if count > 1 else "") + ")",
        err=True,
    )
    if engine is not None:
        code = _run_server(config, engine, sock, report=True)
    else:

        def worker(index: int, first: bool) -> int:
            return _run_server(config, _engine(config), sock, report=first and index == 0)

        code = supervise(count, worker, lambda line: click.echo(line, err=True))
    sock.close()
    if code:
        sys.exit(code)


def _engine(config: Config) -> Any:
    from trooper.engine import Engine

    return Engine.from_config(config)


def _check_store(config: Config) -> None:
    import asyncio

    from trooper.store import open_store

    store = open_store(config.store)
    asyncio.run(store.close())


def _run_server(config: Config, engine: Any, sock: Any, *, report: bool) -> int:
    """Serve ``engine`` on the bound ``sock`` until stopped; 3 if the app failed its start-up."""
    import uvicorn

    from trooper.server import UVICORN_OPTIONS, create_app
    from trooper.startup import report_when_started

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, engine, owns_engine=True),
            http="httptools",
            loop="uvloop" if sys.platform != "win32" else "asyncio",
            log_level="warning",
            access_log=False,
            lifespan="on",
            **UVICORN_OPTIONS,
        )
    )
    if report:
        report_when_started(
            config, lambda: server.started, lambda: server.should_exit, lambda line: click.echo(line, err=True)
        )
    import contextlib

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shut down cleanly, then re-raised the Ctrl-C
        server.run(sockets=[sock])
    return 0 if server.started else 3  # 3: the app failed its start-up; uvicorn logged why


@main.command()
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid")
@click.option(
    "--write",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Write conversation.mmd, conversation.dot and README.md (the diagrams' legend) into DIR instead of "
    "printing. Files there that trooper graph did not write are never replaced.",
)
@click.option("--session", default=None, help="Draw one stored conversation's path through the machine.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def graph(fmt: str, directory: str | None, session: str | None, config_path: str | None) -> None:
    """Print (or write) the conversation state machine as Mermaid or DOT."""
    from trooper.graph import DiagramConflict, render, write_diagrams

    if directory is not None:
        try:
            written = write_diagrams(Path(directory))
        except DiagramConflict as exc:
            _fail(str(exc))
        for path in written:
            click.echo(str(path))
        return
    conversation = None
    if session is not None:
        from trooper.conversation import conversation_from_dict
        from trooper.store import SyncStore, open_store

        store = SyncStore(open_store(_config(config_path).store))
        data = store.load_conversation(session)
        store.close()
        if data is None:
            _fail(f"no stored conversation {session!r}")
        conversation = conversation_from_dict(data)
    click.echo(render("mermaid" if fmt == "mermaid" else "dot", conversation))


def _open_store(config_path: str | None) -> Any:
    from trooper.store import SyncStore, open_store

    config = _config(config_path)
    from trooper.config import store_location

    try:
        return SyncStore(open_store(config.store))
    except OSError as exc:
        _fail(f"cannot open the store at {store_location(config.store.path)}: {exc}")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def sessions(config_path: str | None, limit: int, as_json: bool) -> None:
    """List stored conversations, most recent first."""
    store = _open_store(config_path)
    rows = store.list_conversations(limit)
    store.close()
    if as_json:
        click.echo(
            orjson.dumps(
                [{k: row.get(k) for k in ("id", "state", "turns", "transitions", "updated")} for row in rows],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    columns = [Column("session", keep=True), Column("state"), Column("turns"), Column("transitions")]
    columns.append(Column("last activity (UTC)"))
    cells = [
        [
            escape(row["id"]),
            row.get("state", "?"),
            str(row.get("turns", 0)),
            str(row.get("transitions", 0)),
            when(row.get("updated")),
        ]
        for row in rows
    ]
    print_table(Console(), "Trooper conversations", columns, cells)


@main.command()
@click.argument("session_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def session(session_id: str, config_path: str | None, as_json: bool) -> None:
    """One conversation: its state, turns and transitions."""
    from trooper.conversation import conversation_from_dict

    store = _open_store(config_path)
    data = store.load_conversation(session_id)
    transitions = [e for e in store.audit(session_id) if e["kind"] == "transition"]
    store.close()
    if data is None:
        _fail(f"no stored conversation {session_id!r}")
    conv = conversation_from_dict(data)
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "id": conv.id,
                    "state": conv.state,
                    "turns": conv.turns,
                    "edge_counts": conv.edge_counts,
                    "transitions": transitions,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    console = Console()
    console.print(
        f"[bold]{escape(conv.id)}[/bold]  state [bold]{conv.state}[/bold]  turns {conv.turns}  "
        f"transitions {conv.transitions}"
    )
    columns = [Column(name) for name in ("time (UTC)", "event", "from", "to", "reason")]
    columns.append(Column("request", keep=True))
    cells = [
        [
            when(entry.get("at")),
            entry.get("event", ""),
            entry.get("source", ""),
            entry.get("dest", ""),
            entry.get("reason", ""),
            entry.get("request_id") or "-",
        ]
        for entry in transitions
    ]
    print_table(console, "transitions", columns, cells)


@main.command()
@click.option("--session", "session_id", required=True, help="The conversation whose audit trail to print.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for scripts.")
def audit(session_id: str, config_path: str | None, as_json: bool) -> None:
    """Every decision Trooper took for one conversation: transitions, turns, guard actions."""
    store = _open_store(config_path)
    records = store.audit(session_id)
    store.close()
    if not records:
        _fail(f"no audit records for {session_id!r}")
    if as_json:
        for record in records:
            click.echo(orjson.dumps(record).decode())
        return
    print_audit(Console(), session_id, records)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def doctor(config_path: str | None) -> None:
    """Check the configuration and whether the cloud and the local model answer."""
    import asyncio

    from trooper.config import redacted
    from trooper.doctor import diagnose

    config = _config(config_path)
    console = Console()
    console.print("[bold]configuration[/bold] (credentials hidden)")
    console.print_json(orjson.dumps(redacted(config)).decode())
    checks = asyncio.run(diagnose(config))
    from trooper.doctor import Check
    from trooper.startup import refusal

    problem = refusal(config)
    checks.insert(1, Check("serve", problem is None, problem or "would start with this configuration"))
    columns = [Column("check", keep=True), Column("result", keep=True), Column("detail")]
    cells = [
        [check.name, "[green]ok[/green]" if check.ok else "[red]FAIL[/red]", escape(check.detail)] for check in checks
    ]
    print_table(console, "checks", columns, cells)
    if not all(check.ok for check in checks):
        sys.exit(1)


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM; both end the command cleanly (exit 0)."""
    import signal
    import time

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


@main.command()
@click.option("--serve", "keep_serving", is_flag=True, help="Keep the stack up afterwards for your own client.")
@click.option("--port", type=int, default=0, show_default=True, help="Trooper's port with --serve (0: a free one).")
def demo(keep_serving: bool, port: int) -> None:
    """See it work with no key, no network and no Ollama.

    Starts a fake cloud, a fake Ollama and a Trooper in front of them on loopback, plays a short
    conversation through the anthropic SDK (cloud, ::local, cloud with the local turn withheld, a
    quota fallback, recovery) and prints each turn's route and reason, what the fake cloud received,
    the state graph and the audit trail. Exits 1 if a route is unexpected or local text reached the
    fake cloud.
    """
    from trooper.audit import configure_logging
    from trooper.demo import _print_stack, play, report, running, serve_hints

    configure_logging("warning")
    console = Console(highlight=False)
    try:
        with running(port=port) as stack:
            _print_stack(console, stack)
            outcome = play(stack, console)
            report(outcome, console)
            if keep_serving:
                for line in serve_hints(stack):
                    click.echo(line)
                _wait_for_interrupt()
    except OSError as exc:
        _fail(f"cannot start the demo: {exc.strerror or exc}")
    sys.exit(0 if outcome.ok else 1)


@main.command()
@click.argument("kind", type=click.Choice(["anthropic", "ollama"]))
@click.option("--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0: a free one).")
@click.option("--model", "models", multiple=True, help="A model the fake Ollama has (repeatable; default qwen3).")
def fake(kind: str, port: int, models: tuple[str, ...]) -> None:
    """Run one of the fake upstreams Trooper's tests use, as a server on loopback.

    The fake Anthropic answers every message with what it received (model, message count, the last
    user text); the fake Ollama answers "local ok". Both record requests in memory only. Point
    Trooper at one with TROOPER_ANTHROPIC_BASE_URL or TROOPER_OLLAMA_BASE_URL. Ctrl-C stops it.
    """
    from trooper.testing import FakeAnthropic, FakeOllama

    server: FakeAnthropic | FakeOllama
    try:
        if kind == "anthropic":
            server = FakeAnthropic(describe=True, port=port).start()
        else:
            server = FakeOllama(models or ("qwen3",), port=port).start()
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port}: {(exc.strerror or str(exc)).lower()}")
    variable = "TROOPER_ANTHROPIC_BASE_URL" if kind == "anthropic" else "TROOPER_OLLAMA_BASE_URL"
    click.echo(f"fake {kind} listening on {server.url}")
    click.echo(f"  point Trooper at it: {variable}={server.url}")
    click.echo("  Ctrl-C stops it")
    try:
        _wait_for_interrupt()
    finally:
        server.stop()
