"""The passive signal inside `connpin watch` (docs/health.md "The passive signal"): the health
thread reads connpin's `sent_I_U` / `answered_I_U` nft counters every PERIOD seconds (one
netlink dump of the table's counter objects, kernel/counters.py), feeds the totals to a
`health.passive.Detector` and hurries the probes of the uplinks it calls suspect
(`Monitor.hurry`). Never a verdict of its own: the probes decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from connpin.health.passive import Detector, PassiveParams, rendered
from connpin.render import passive as render

PERIOD = 0.2  # seconds between counter readings

Reader = Callable[[str], dict[str, tuple[int, int]]]


@dataclass(frozen=True)
class Spec:
    """What the thread needs: the tunables and connpin's nft table."""

    params: PassiveParams
    table: str


def spec(config: Any) -> Spec | None:
    """The passive signal of a config (None: off, or no uplink has `check`)."""
    if not rendered(config):
        return None
    return Spec(config.passive, config.pinning.nft_table)


def _read(table: str) -> dict[str, tuple[int, int]]:
    from connpin.kernel import counters

    return counters.read_raw(None, table)


class Watcher:
    """Owned by the health thread: counters in, hurries out, figures for the record."""

    def __init__(self, log: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 reader: Reader | None = None):
        self.log, self.clock = log, clock
        self.reader = reader or _read
        self.spec: Spec | None = None
        self.detector: Detector | None = None
        self.hurries: dict[str, int] = {}
        self._next = float("-inf")
        self._failing = False

    def configure(self, s: Spec | None) -> None:
        if s != self.spec:
            self.spec = s
            self.detector = None if s is None else Detector(s.params)
            self.hurries = {}

    def poll(self, monitor: Any, probed: Container[str]) -> None:
        """Read the counters when due; hurry the probes of uplinks that became suspect."""
        now = self.clock()
        if self.spec is None or self.detector is None or now < self._next:
            return
        self._next = now + PERIOD
        try:
            raw = self.reader(self.spec.table)
        except OSError as e:
            if not self._failing:
                self.log(f"health: passive signal: cannot read nft counters ({e}); retrying")
            self._failing = True
            return
        self._failing = False
        totals = {n: v for n, v in render.per_uplink(raw).items() if n in probed}
        for name in self.detector.observe(totals, now):
            r = self.detector.readings[name]
            if monitor.hurry(name):
                self.hurries[name] = self.hurries.get(name, 0) + 1
                self.log(f"health: {name} suspect: {r.unanswered} new connections unanswered "
                         "(passive signal); probing faster")

    def figures(self, name: str) -> dict | None:
        """sent, answered, unanswered, hurries of one uplink (None: not read yet)."""
        r = None if self.detector is None else self.detector.readings.get(name)
        if r is None:
            return None
        return {"sent": r.sent, "answered": r.answered, "unanswered": r.unanswered,
                "hurries": self.hurries.get(name, 0)}
