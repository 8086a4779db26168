"""Plain-text tables: rows of cells -> aligned lines. Pure; the one column formatter that the
plan, status, `connections` and the lab's demo table share."""

from __future__ import annotations

from collections.abc import Sequence


def columns(rows: Sequence[Sequence[str]], *, indent: str = "", gap: str = "  ",
            rule: str | None = None) -> list[str]:
    """One line per row: each column left-aligned to its widest cell, columns separated by
    `gap`, every line prefixed with `indent` and stripped of trailing blanks. With `rule` (a
    character), a line of it as wide as each column goes under the first row (a header rule).
    Every row has as many cells as the first."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        return (indent + gap.join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    lines = [line(r) for r in rows]
    if rule is not None:
        lines.insert(1, line([rule * w for w in widths]))
    return lines
