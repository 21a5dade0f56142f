"""The layer rule, enforced: the pure core imports no I/O, no clock, no edge of Trooper's.

The turn core, the wire format, the controls, the ledger and its provenance and content matching,
session identity, the conversation's state machine and the memory are plain synchronous code over
values (``trooper/turn.py`` says why). This test reads their imports — every ``import`` statement,
including those inside functions — and fails on one that reaches for asyncio, the clock, a network
or HTTP library, the store, a provider, the server or the engine.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "trooper"
PURE = [
    "turn.py",
    "controls.py",
    "ledger.py",
    "lineage.py",
    "spans.py",
    "keyset.py",
    "text.py",
    "_memo.py",
    "identity.py",
    "conversation.py",
    "wire",
    "memory",
]
FORBIDDEN = (
    "asyncio",
    "time",
    "threading",
    "socket",
    "sqlite3",
    "aiohttp",
    "httpx",
    "httpx2",
    "redis",
    "starlette",
    "uvicorn",
    "structlog",
    "trooper.engine",
    "trooper.server",
    "trooper.cli",
    "trooper.providers",
    "trooper.store",
    "trooper.recorder",
    "trooper.relay",
    "trooper.admin",
    "trooper.books",
    "trooper.local_run",
    "trooper.cloud_watch",
    "trooper.context",
    "trooper.health",
    "trooper.testing",
)


def _modules() -> list[Path]:
    found: list[Path] = []
    for name in PURE:
        path = ROOT / name
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return found


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_a_pure_module_imports_no_io_and_no_edge(path: Path) -> None:
    bad = [name for name in _imports(path) if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_importing_the_pure_core_loads_no_http_client() -> None:
    """``import trooper.turn`` (through ``trooper/__init__``) must not pull in the edges."""
    probe = (
        "import sys, trooper.turn, trooper.ledger, trooper.wire;"
        "print(sorted(m for m in ('aiohttp', 'httpx', 'httpx2', 'starlette', 'uvicorn', 'trooper.engine',"
        " 'trooper.providers.base', 'trooper.store') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_public_api_is_all_there() -> None:
    import trooper

    for name in trooper.__all__:
        assert getattr(trooper, name) is not None
