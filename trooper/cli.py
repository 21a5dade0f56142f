"""The ``trooper`` command.

A bad configuration ends the command with one line naming the setting and exit status 2 — never a
traceback — because the first thing a new user does is mistype an environment variable.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
from rich.console import Console
from rich.markup import escape

from trooper import __version__
from trooper.config import Config, ConfigError, load_config
from trooper.tables import Column, print_table


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
def serve(config_path: str | None, host: str | None, port: int | None, ephemeral: bool | None) -> None:
    """Run the proxy. Point ANTHROPIC_BASE_URL at it.

    It binds its port first (a busy port is one line and exit 2), then says whether the cloud, Ollama
    and the local model answer; an unreachable upstream does not stop it.
    """
    config = _config(config_path)

    import attrs
    import uvicorn

    from trooper.audit import configure_logging
    from trooper.engine import Engine
    from trooper.server import UVICORN_OPTIONS, create_app
    from trooper.startup import bind, bind_error, refusal, report_when_started

    server_config = attrs.evolve(
        config.server,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        ephemeral=config.server.ephemeral if ephemeral is None else ephemeral,
    )
    config = attrs.evolve(config, server=server_config)
    problem = refusal(config)
    if problem is not None:
        _fail(problem)
    configure_logging(config.server.log_level)
    try:
        sock = bind(config.server.host, config.server.port)
    except OSError as exc:
        _fail(f"cannot listen on {config.server.host}:{config.server.port}: {bind_error(exc)}")
    try:
        engine = Engine.from_config(config)
    except ConfigError as exc:
        sock.close()
        _fail(str(exc))
    except OSError as exc:
        sock.close()
        _fail(f"cannot open the store at {config.store.path}: {exc}")
    bound_port = sock.getsockname()[1]
    url_host = f"[{config.server.host}]" if ":" in config.server.host else config.server.host
    click.echo(
        f"trooper {__version__} listening on http://{url_host}:{bound_port} "
        f"(cloud: {config.anthropic.base_url}, local: {config.ollama.model} at {config.ollama.base_url}, "
        f"store: {config.store.path})",
        err=True,
    )
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
    report_when_started(
        config, lambda: server.started, lambda: server.should_exit, lambda line: click.echo(line, err=True)
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn shut down cleanly, then re-raised the Ctrl-C it had caught
    finally:
        sock.close()
    if not server.started:
        sys.exit(3)  # the app failed its start-up; uvicorn logged why


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
        from trooper.store import open_store

        store = open_store(_config(config_path).store.path)
        data = store.load_conversation(session)
        store.close()
        if data is None:
            _fail(f"no stored conversation {session!r}")
        conversation = conversation_from_dict(data)
    click.echo(render("mermaid" if fmt == "mermaid" else "dot", conversation))


def _open_store(config_path: str | None) -> Any:
    from trooper.store import open_store

    config = _config(config_path)
    try:
        return open_store(config.store.path)
    except OSError as exc:
        _fail(f"cannot open the store at {config.store.path}: {exc}")


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


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
            _when(row.get("updated")),
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
            _when(entry.get("at")),
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


def print_audit(console: Console, session_id: str, records: list[dict[str, Any]]) -> None:
    """One conversation's audit trail as a table (also what ``trooper demo`` ends with)."""
    cells: list[list[str]] = []
    for record in records:
        kind = record["kind"]
        if kind == "transition":
            what, details = f"{record['event']}: {record['source']} → {record['dest']}", ""
        elif kind == "turn":
            what = f"{record.get('route')} ({record.get('provider')} {record.get('model')})"
            layers = record.get("memory") or {}
            details = (
                f"status {record.get('status')}, withheld {record.get('withheld_blocks', 0)} blocks, "
                f"guard hits {record.get('guard_hits', 0)}, {record.get('duration_ms')} ms"
                + (f", memory {layers}" if layers else "")
            )
        else:
            what = kind
            details = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("at", "kind"))
        cells.append([_when(record.get("at")), kind, escape(what), str(record.get("reason", "")), escape(details)])
    columns = [Column(name) for name in ("time (UTC)", "kind", "route / event", "reason", "details")]
    print_table(console, f"audit trail of {escape(session_id)}", columns, cells)


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
    columns = [Column("check", keep=True), Column("result", keep=True), Column("detail")]
    cells = [
        [check.name, "[green]ok[/green]" if check.ok else "[red]FAIL[/red]", escape(check.detail)] for check in checks
    ]
    print_table(console, "checks", columns, cells)
    if not all(check.ok for check in checks):
        sys.exit(1)
