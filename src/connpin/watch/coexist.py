"""When the daemon looks for conflicts with other software (issue 12), and which to log.

Pure. Another program changing the nft ruleset (a table that is not connpin's) or a full resync
makes a look due; looks are at most one per INTERVAL seconds (reading the inventory runs nft and
iptables-save); of what a look finds, only the conflicts not logged by the previous look are
logged (one that went away and came back is logged again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

#: Least seconds between two looks for conflicts.
INTERVAL = 10.0


class ConflictWatch:
    def __init__(self, clock: Callable[[], float], interval: float = INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self.dirty = True  # look once at start
        self.last: float | None = None
        self.known: set[tuple[str, str, str]] = set()

    def changed(self) -> None:
        """The ruleset changed under someone else's table, or a resync: look again."""
        self.dirty = True

    def wait(self) -> float | None:
        """Seconds until a look is due (0: now), None when none is."""
        if not self.dirty:
            return None
        if self.last is None:
            return 0.0
        return max(0.0, self.last + self.interval - self.clock())

    def due(self) -> bool:
        return self.wait() == 0.0

    def skip(self) -> None:
        """A look that failed: try again after the interval, keep what was logged."""
        self.dirty, self.last = False, self.clock()

    def seen(self, found: Iterable[Any]) -> list[Any]:
        """Record one look's conflicts; return those to log (new since the previous look)."""
        self.dirty, self.last = False, self.clock()
        found = list(found)
        keys = [(c.kind, c.where, c.message) for c in found]
        new = [c for c, k in zip(found, keys, strict=True) if k not in self.known]
        self.known = set(keys)
        return new
