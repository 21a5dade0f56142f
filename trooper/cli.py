"""The ``trooper`` command.

A bad configuration ends the command with one line naming the setting and exit status 2 — never a
traceback — because the first thing a new user does is mistype an environment variable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from trooper import __version__
from trooper.config import Config, ConfigError, load_config


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
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (default: ./trooper.toml when present).")
@click.option("--host", default=None, help="Address to bind (overrides TROOPER_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (overrides TROOPER_PORT).")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the proxy. Point ANTHROPIC_BASE_URL at it."""
    config = _config(config_path)

    import attrs
    import uvicorn

    from trooper.audit import configure_logging
    from trooper.engine import Engine
    from trooper.server import create_app

    server = attrs.evolve(config.server, host=host or config.server.host,
                          port=config.server.port if port is None else port)
    config = attrs.evolve(config, server=server)
    configure_logging(config.server.log_level)
    try:
        engine = Engine.from_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot open the store at {config.store.path}: {exc}")
    click.echo(f"trooper {__version__} listening on http://{config.server.host}:{config.server.port} "
               f"(cloud: {config.anthropic.base_url}, local: {config.ollama.model} at {config.ollama.base_url})",
               err=True)
    try:
        uvicorn.run(
            create_app(config, engine), host=config.server.host, port=config.server.port,
            http="httptools", loop="uvloop" if sys.platform != "win32" else "asyncio",
            log_level="warning", access_log=False, lifespan="on",
        )
    except OSError as exc:
        _fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc}")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid")
@click.option("--write", "directory", type=click.Path(file_okay=False), default=None,
              help="Write diagrams/conversation.{mmd,dot} into this directory instead of printing.")
@click.option("--session", default=None, help="Draw one stored conversation's path through the machine.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def graph(fmt: str, directory: str | None, session: str | None, config_path: str | None) -> None:
    """Print (or write) the conversation state machine as Mermaid or DOT."""
    from trooper.graph import render, write_diagrams

    if directory is not None:
        for path in write_diagrams(Path(directory)):
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
