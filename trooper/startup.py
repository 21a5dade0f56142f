"""``trooper serve``'s start-up: refuse what cannot work, bind first, then say what was found.

A new user's first ``trooper serve`` used to print one banner line and nothing else: it said
"listening on…" even when the port was taken (uvicorn then failed to bind), and it did not say that
the cloud or Ollama could not be reached or that the model was not pulled. Here the socket is bound
before anything is announced, so a busy port is one line and a non-zero exit, and once the server
runs, one line per upstream reports what :func:`trooper.doctor.upstream_checks` found. An
unreachable upstream never stops start-up: the cloud may come back, Ollama may be started later.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Callable

from trooper.config import Config
from trooper.doctor import Check, upstream_checks

#: What a failed check means for the turns that will be served, said after the check's own words.
_CONSEQUENCE = {
    "cloud": "cloud turns fall back to the local model until it answers",
    "local provider": "local turns fail (closed) until Ollama answers (ollama serve)",
    "local model": "local turns fail (closed) until it is pulled",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(config: Config) -> str | None:
    """Why ``serve`` must not start with ``config`` (one line), or None.

    The in-memory store loses the provenance ledger on restart, and with it the record of what must
    never reach the cloud, so serving on it needs ``server.ephemeral``. A non-loopback address
    exposes the admin API, so it needs an admin token.
    """
    if config.store.path == "memory" and not config.server.ephemeral:
        return (
            "refusing to serve on store.path = memory: it loses the privacy ledger (what must never reach the "
            "cloud) on restart; set TROOPER_STORE to an SQLite file, or accept the loss with --ephemeral "
            "(TROOPER_SERVER_EPHEMERAL=1)"
        )
    if not is_loopback(config.server.host) and not config.server.admin_token:
        return (
            f"refusing to listen on {config.server.host} without an admin token: set TROOPER_ADMIN_TOKEN "
            "(the admin API shows sessions and health) or listen on 127.0.0.1"
        )
    return None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` for uvicorn to serve; raises :class:`OSError`."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        # On Linux this only allows rebinding over connections in TIME_WAIT, never a port in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def bind_error(exc: OSError) -> str:
    """An ``OSError`` from :func:`bind` in a user's words."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address ({exc.strerror})"
    reason = (exc.strerror or str(exc)).lower()
    return reason + (" (another process listens there; pick another port with --port)" if exc.errno == 98 else "")


def describe(check: Check) -> str:
    """One start-up line for a check: the verdict first, so a failing upstream stands out."""
    line = f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}"
    if not check.ok and check.name in _CONSEQUENCE:
        line += f"; {_CONSEQUENCE[check.name]}"
    return line


def report_when_started(
    config: Config, started: Callable[[], bool], stopping: Callable[[], bool], echo: Callable[[str], None]
) -> threading.Thread:
    """Once ``started()`` is true, run the upstream checks and ``echo`` one line per upstream.

    A thread with its own event loop, so the checks add nothing to the server's request path and a
    slow upstream (a DNS lookup that times out) never delays serving.
    """

    def run() -> None:
        deadline = time.monotonic() + 60
        while not started():
            if stopping() or time.monotonic() > deadline:
                return
            time.sleep(0.02)
        for check in asyncio.run(upstream_checks(config, seconds=5.0)):
            if stopping():
                return
            echo(describe(check))

    thread = threading.Thread(target=run, name="trooper-startup-checks", daemon=True)
    thread.start()
    return thread


__all__ = ["bind", "bind_error", "describe", "is_loopback", "refusal", "report_when_started"]
