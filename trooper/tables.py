"""Tables for the CLI that stay readable in an 80-column terminal.

rich shrinks every column evenly when a table is too wide, so at 80 columns ``trooper doctor`` lost
its ok/FAIL column and ``trooper sessions`` cut session ids, which then could not be copied into
``trooper session ID``. Here some columns are *kept*: ids and verdicts are always shown whole, and
only the other columns wrap. When even that does not fit, the table is drawn without rules, and
when that does not fit either, each row becomes a short block whose first line holds the kept cells,
so an id is never wrapped or cut by the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

#: The narrowest a wrapping column is planned at; below it even short words would be cut.
_MIN_FLEXIBLE: int = 4


@attrs.frozen
class Column:
    """A column; ``keep`` ones (ids, verdicts) are never wrapped, shrunk or cut."""

    header: str
    keep: bool = False


def _text(cell: str) -> Text:
    return Text.from_markup(cell)


def _widths(column: Column, cells: Sequence[str]) -> tuple[int, int]:
    """(natural width, smallest sensible width): whole cells for kept columns, the longest word otherwise."""
    texts = [_text(column.header), *(_text(cell) for cell in cells)]
    natural = max(text.cell_len for text in texts)
    if column.keep:
        return natural, natural
    longest_word = max((len(word) for text in texts for word in text.plain.split()), default=1)
    return natural, max(min(longest_word, natural), _MIN_FLEXIBLE)


def print_table(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``title`` in the widest layout that fits ``console.width``.

    The title and cells may hold rich markup (``[green]ok[/green]``); escape text that is not markup.
    """
    measured = [_widths(column, [row[i] for row in rows]) for i, column in enumerate(columns)]
    ruled = 3 * len(columns) + 1  # a rule and two spaces of padding per column, and the closing rule
    compact = 2 * (len(columns) - 1)  # no rules: two spaces between columns
    for overhead, style in ((ruled, box.HEAVY_HEAD), (compact, None)):
        widths = _allocate(measured, console.width - overhead)
        if widths is not None:
            console.print(_table(title, columns, widths, rows, style))
            return
    _print_blocks(console, title, columns, rows)


def _allocate(measured: Sequence[tuple[int, int]], room: int) -> list[int] | None:
    """Column widths within ``room``: every column at least its minimum, the rest shared out by need.

    rich would shrink the widest columns first until all are equal, squeezing the one column that
    needs room (a detail, a path) as narrow as a one-word one; here a column gets room in proportion
    to what it lacks of its natural width. None when even the minimums do not fit.
    """
    minimums = [minimum for _, minimum in measured]
    if sum(minimums) > room:
        return None
    naturals = [natural for natural, _ in measured]
    if sum(naturals) <= room:
        return naturals
    lacking = [natural - minimum for natural, minimum in measured]
    spare = room - sum(minimums)
    widths = [minimum + spare * lack // sum(lacking) for minimum, lack in zip(minimums, lacking, strict=True)]
    return widths


def _table(
    title: str,
    columns: Sequence[Column],
    widths: Sequence[int],
    rows: Sequence[Sequence[str]],
    style: box.Box | None,
) -> Table:
    table = Table(title=title, box=style, pad_edge=style is not None, header_style="bold underline")
    for column, width in zip(columns, widths, strict=True):
        if column.keep:
            table.add_column(column.header, no_wrap=True, width=width, min_width=width)
        else:
            table.add_column(column.header, overflow="fold", width=width)
    for row in rows:
        table.add_row(*row)
    return table


def _print_blocks(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """One block per row: the first and the kept cells on one unwrapped line, the others below as pairs."""
    console.print(Text.from_markup(title, style="italic"))
    lead = [i for i, column in enumerate(columns) if i == 0 or column.keep]
    for row in rows:
        head = Text("  ").join(_text(row[i]) for i in lead)
        console.print(head, soft_wrap=True)
        rest = [
            Text.assemble((f"{columns[i].header}: ", "dim"), _text(row[i]))
            for i in range(len(columns))
            if i not in lead and _text(row[i]).plain
        ]
        for line in _pack(rest, console.width, indent="    ", separator=" · "):
            console.print(line)


def _pack(pairs: Sequence[Text], width: int, *, indent: str, separator: str) -> list[Text]:
    """``pairs`` on as few indented lines as fit ``width``, broken between pairs, never inside one."""
    lines: list[Text] = []
    line = Text(indent)
    for pair in pairs:
        joined = len(line) + len(separator) + len(pair)
        if len(line) > len(indent) and joined > width:
            lines.append(line)
            line = Text(indent)
        if len(line) > len(indent):
            line.append(separator)
        line.append_text(pair)
    if len(line) > len(indent):
        lines.append(line)
    return lines


def when(at: float | None) -> str:
    """A stored timestamp as UTC, to the second; ``-`` when there is none."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


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
                + (", memory " + " ".join(f"{layer}={tokens}" for layer, tokens in layers.items()) if layers else "")
            )
        else:
            what = kind
            details = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("at", "kind"))
        cells.append([when(record.get("at")), kind, escape(what), str(record.get("reason", "")), escape(details)])
    columns = [Column(name) for name in ("time (UTC)", "kind", "route / event", "reason", "details")]
    print_table(console, f"audit trail of {escape(session_id)}", columns, cells)


__all__ = ["Column", "print_audit", "print_table", "when"]
