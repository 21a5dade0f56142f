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
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Final

from trooper.config import Config
from trooper.doctor import Check, upstream_checks

#: What a failed check means for the turns that will be served, said after the check's own words.
_CONSEQUENCE = {
    "cloud": "cloud turns fall back to the local model until it answers",
    "local provider": "local turns fail (closed) until Ollama answers (ollama serve)",
    "local model": "local turns fail (closed) until it is pulled",
}


#: ``mallopt``'s parameter number for the mmap threshold in glibc's ``malloc.h``.
_M_MMAP_THRESHOLD: Final = -3


def return_large_frees_to_the_system() -> bool:
    """Ask glibc's allocator to give large freed blocks back to the system at once.

    The ledger's index rebuilds its sorted arrays as it grows; glibc raises its mmap threshold each
    time such an array is freed, after which freed arrays stay in the process's heap and resident
    memory keeps the high-water mark of every rebuild. A fixed threshold (glibc's own starting
    value) keeps resident memory close to what the index holds. Elsewhere than glibc, nothing.
    """
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1)
    except OSError:
        return False


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
    if config.store.path == "memory" and config.server.workers > 1:
        return (
            "refusing to serve on store.path = memory with several workers: each would keep a ledger of its own, "
            "and a local turn one of them served would not be known to the others; use an SQLite file or Redis"
        )
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


#: A worker that ends this soon after it started counts as failing to start.
_QUICK_DEATH = 2.0


def supervise(count: int, start: Callable[[int, bool], int], echo: Callable[[str], None]) -> int:
    """Run ``count`` worker processes, each ``start(index, first)`` in a fork of this one, until told to stop.

    The listening socket is bound before the fork and shared, so the kernel hands each connection
    to one worker. Each worker builds its own engine and store connection after the fork (nothing
    that holds a connection or a thread crosses it); they share the store, and through it the
    ledger, the cloud's health and the conversations' locks. A worker that dies is replaced — a
    conversation whose lock it held is free at once on SQLite, after ``store.lock_ttl`` on Redis —
    unless workers keep dying as they start (a configuration the checks could not see), which
    stops the whole server with exit status 3. SIGTERM or SIGINT stops the workers gracefully.
    """
    children: dict[int, tuple[int, float]] = {}
    state = {"stopping": False, "code": 0, "quick": 0}

    def spawn(index: int, first: bool) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with_parent()
                code = start(index, first)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        children[pid] = (index, time.monotonic())

    def stop(_signum: int, _frame: FrameType | None) -> None:
        state["stopping"] = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            spawn(index, True)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index, started = children.pop(pid, (-1, 0.0))
            if index < 0 or state["stopping"]:
                continue
            state["quick"] = state["quick"] + 1 if time.monotonic() - started < _QUICK_DEATH else 0
            if state["quick"] >= 3:
                echo("trooper: workers keep ending as they start; stopping (see the lines above)")
                state["code"] = 3
                stop(signal.SIGTERM, None)
                continue
            echo(f"trooper: worker {index} (pid {pid}) ended ({_ending(status)}); starting another")
            spawn(index, False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return state["code"]


def _ending(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _die_with_parent() -> None:
    """On Linux, have the kernel stop this worker if the supervisor dies (even by ``kill -9``), so no
    orphaned worker keeps serving a port nobody supervises."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


__all__ = ["bind", "bind_error", "describe", "is_loopback", "refusal", "report_when_started", "supervise"]
