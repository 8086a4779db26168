"""Plain-text tables: rows of cells -> aligned lines. Pure; the one column formatter that the
plan, status, `connections` and the lab's demo table share."""

from __future__ import annotations

from collections.abc import Sequence


def columns(rows: Sequence[Sequence[str]], *, indent: str = "", gap: str = "  ",
            rule: str | None = None, width: int | None = None) -> list[str]:
    """One line per row: each column left-aligned to its widest cell, columns separated by
    `gap`, every line prefixed with `indent` and stripped of trailing blanks. With `rule` (a
    character), a line of it as wide as each column goes under the first row (a header rule).
    Every row has as many cells as the first.

    With `width`, lines that would be wider have their first column narrowed to what the other
    columns leave (at least its header's width): a first cell longer than that goes on a line of
    its own, and the rest of its row on the next line under the narrowed column. (Long names
    then cost a line, never the width.)"""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if width is not None and len(widths) > 1:
        rest = len(indent) + sum(widths[1:]) + len(gap) * (len(widths) - 1)
        widths[0] = min(widths[0], max(len(rows[0][0]), width - rest))

    def line(cells: Sequence[str]) -> str:
        return (indent + gap.join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    lines = []
    for r in rows:
        if len(r[0]) > widths[0]:
            lines.append((indent + r[0]).rstrip())
            r = ("", *r[1:])
        lines.append(line(r))
    if rule is not None:
        lines.insert(1, line([rule * w for w in widths]))
    return lines


def wrap(text: str, width: int, *, indent: str = "", sep: str = ", ") -> list[str]:
    """`text` cut after each `sep` into lines of at most `width` characters (a part longer than
    a line stays whole); continuation lines are prefixed with `indent` (not counted in
    `width`: the first line's own prefix is the caller's)."""
    parts = text.split(sep)
    lines: list[str] = []
    cur = ""
    for p in parts:
        nxt = f"{cur}{sep}{p}" if cur else p
        if cur and len(nxt) > width:
            lines.append(cur + sep.rstrip())
            cur = p
        else:
            cur = nxt
    lines.append(cur)
    return [lines[0]] + [indent + ln for ln in lines[1:]]
