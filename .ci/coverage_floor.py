"""Fail when a module of the pure core falls under the coverage floor (statements and branches).

The pure core is the list the layer test enforces (``tests/test_layers.py``), so the two cannot
drift apart. Reads the ``.coverage`` data the test run left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = 90.0


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.test_layers import PURE

    include = ",".join(f"trooper/{name}" if name.endswith(".py") else f"trooper/{name}/*" for name in PURE)
    report = ROOT / ".coverage.json"
    subprocess.run(
        [sys.executable, "-m", "coverage", "json", "-q", "--include", include, "-o", str(report)], check=True, cwd=ROOT
    )
    files = json.loads(report.read_text())["files"]
    report.unlink()
    low = []
    for path, data in sorted(files.items()):
        percent = data["summary"]["percent_covered"]
        if data["summary"]["num_statements"] and percent < FLOOR:
            low.append((path, percent))
    total = sum(d["summary"]["covered_lines"] + d["summary"]["covered_branches"] for d in files.values())
    possible = sum(d["summary"]["num_statements"] + d["summary"]["num_branches"] for d in files.values())
    print(f"pure core: {len(files)} modules, {100 * total / possible:.1f} % of statements and branches covered")
    for path, percent in low:
        print(f"  {path}: {percent:.1f} % is under the {FLOOR:g} % floor")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
