"""The benchmarks name only what Trooper has: a refactor that moves a name breaks them here, not at
the next measurement (they import inside their sections, so only running a section would show it)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _imports() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trooper":
                found.extend((path.name, node.lineno, node.module, alias.name) for alias in node.names)
    return found


@pytest.mark.parametrize(("script", "line", "module", "name"), _imports())
def test_every_name_a_benchmark_imports_exists(script: str, line: int, module: str, name: str) -> None:
    imported = importlib.import_module(module)
    if not hasattr(imported, name):
        importlib.import_module(f"{module}.{name}")  # a submodule, else ModuleNotFoundError names it
