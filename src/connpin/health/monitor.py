"""The probing loop: which probe to send when (rounds spread over the interval, with jitter,
inside each uplink's packet budget), results to the tracker, transitions to the caller.

`Schedule` is pure (times in, due probes out). `Monitor` ties a Prober (I/O) to trackers: one
shared `Tracker` by default, or one per uplink (the benchmarks run other gateway monitors'
rules side by side). A tracker-like object needs `add(name, targets, now)`,
`interval(name, costs)`, `timeout(name, target)`, `record(name, target, sent_at, rtt, now)`
and `tick(now)`.

Each uplink's round of m targets lasts `interval` seconds (Params.interval: the targets'
packets over the budget, 10/s by default); its targets are probed at evenly spaced offsets
within the round, each moved by up to +-10% of the spacing at random, and each uplink starts at
a random phase, so uplinks' and targets' probes do not bunch up. While the tracker calls an
uplink suspect (`Tracker.suspect`: its last probes were lost) its rounds run `burst` times
faster, starting at once. `hurry` starts the same burst from outside (the passive signal:
unanswered LAN connections), at least at the default budget's pace, until an answer or dead.
"""

from __future__ import annotations

import heapq
import random
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from connpin.health.probe import Prober, Result, Via
from connpin.health.targets import Target
from connpin.health.tracker import DEAD, Params, Tracker, Transition

JITTER = 0.1  # of the spacing between two probes of one uplink
HURRY_RATE = Params.rate  # packets/s a hurried uplink's round is at least paced at (x burst)


class TrackerLike(Protocol):
    def add(self, uplink: Hashable, targets: Iterable[Hashable], now: float) -> None: ...
    def interval(self, uplink: Hashable, costs: Sequence[int] | None = None) -> float: ...
    def timeout(self, uplink: Hashable, target: Hashable) -> float: ...
    def record(self, uplink: Hashable, target: Hashable, sent_at: float, rtt: float | None,
               now: float) -> list[Transition]: ...
    def tick(self, now: float) -> list[Transition]: ...


class Schedule:
    """When each (uplink, target) probe is due (pure; times are the caller's clock)."""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        # (due, sequence, uplink, target index, start of its round)
        self._heap: list[tuple[float, int, Hashable, int, float]] = []
        self._uplinks: dict[Hashable, tuple[tuple[Target, ...], float]] = {}
        self._seq = 0

    def add(self, uplink: Hashable, targets: Sequence[Target], interval: float,
            now: float, phase: float | None = None) -> None:
        """(Re)start `uplink`'s rounds `phase` seconds from `now` (default: at random within
        one interval)."""
        self.remove(uplink)
        self._uplinks[uplink] = (tuple(targets), interval)
        start = now + (self.rng.random() * interval if phase is None else phase)
        for i in range(len(targets)):
            self._push(start, uplink, i)

    def remove(self, uplink: Hashable) -> None:
        if self._uplinks.pop(uplink, None) is not None:
            self._heap = [e for e in self._heap if e[2] != uplink]
            heapq.heapify(self._heap)

    def _push(self, round_start: float, uplink: Hashable, i: int) -> None:
        targets, interval = self._uplinks[uplink]
        spacing = interval / len(targets)
        at = round_start + i * spacing + (self.rng.random() * 2 - 1) * JITTER * spacing
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, uplink, i, round_start))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[Hashable, Target]]:
        """Probes due by `now`, oldest first (each is rescheduled one interval later)."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, _, uplink, i, start = heapq.heappop(self._heap)
            targets, interval = self._uplinks[uplink]
            out.append((uplink, targets[i]))
            self._push(start + interval, uplink, i)
        return out


@dataclass
class _Uplink:
    via: Via
    targets: tuple[Target, ...]
    tracker: Any
    interval: float
    fast: bool = False
    hurried: float | None = None  # `hurry` (when): burst until a later probe is answered or dead


class Monitor:
    """Probe uplinks through a Prober and feed the results to their trackers."""

    def __init__(self, prober: Prober, tracker: Tracker | None = None,
                 rng: random.Random | None = None):
        self.prober = prober
        self.clock = prober.clock
        self.tracker = tracker or Tracker()
        self.schedule = Schedule(rng)
        self._uplinks: dict[Hashable, _Uplink] = {}
        self.results: list[Result] = []  # kept only while `keep_results` is set
        self.keep_results = False

    def add(self, name: Hashable, via: Via, targets: Sequence[Target],
            tracker: TrackerLike | None = None) -> None:
        tr = tracker if tracker is not None else self.tracker
        now = self.clock()
        tr.add(name, targets, now)
        interval = tr.interval(name, [t.cost for t in targets])
        self._uplinks[name] = _Uplink(via, tuple(targets), tr, interval)
        self.schedule.add(name, targets, interval, now)

    def _pace(self, name: Hashable, u: _Uplink, now: float,
              answered: float | None = None) -> None:
        """Probe `burst` times faster while the tracker calls the uplink suspect (or it was
        hurried, and no probe sent since was answered (`answered`: its send time), nor did it
        die)."""
        if u.hurried is not None and ((answered is not None and answered >= u.hurried)
                                      or u.tracker.state(name) == DEAD):
            u.hurried = None
        suspect = getattr(u.tracker, "suspect", None)
        fast = bool(suspect is not None and suspect(name)) or u.hurried is not None
        if fast != u.fast:
            u.fast = fast
            self.schedule.add(name, u.targets, self._fast(u) if fast else u.interval, now,
                              phase=0.0)

    def _fast(self, u: _Uplink) -> float:
        """The burst's round: `burst` times faster, and while hurried at least as fast as
        the default budget would make it (a slow `rate` must not slow a hurried check)."""
        p = u.tracker.params
        base = u.interval
        if u.hurried is not None:
            base = min(base, max(p.min_interval, sum(t.cost for t in u.targets) / HURRY_RATE))
        return base / p.burst

    def hurry(self, name: Hashable) -> bool:
        """Burst `name`'s probes now (the passive signal called it suspect): its next round
        starts at once (also when lost probes already made it suspect: at a slow `rate` that
        pace is slow). False when it is not probed, dead, or already hurried."""
        u = self._uplinks.get(name)
        if u is None or u.hurried is not None or u.tracker.state(name) == DEAD:
            return False
        now = self.clock()
        u.hurried, u.fast = now, True
        self.schedule.add(name, u.targets, self._fast(u), now, phase=0.0)
        return True

    def remove(self, name: Hashable) -> None:
        self._uplinks.pop(name, None)
        self.schedule.remove(name)

    def tracker_of(self, name: Hashable) -> Any:
        return self._uplinks[name].tracker

    def step(self, until: float) -> list[Transition]:
        """Send what is due, wait for results until the next probe is due or `until`; return
        the transitions this caused."""
        out: list[Transition] = []
        now = self.clock()
        for name, target in self.schedule.due(now):
            u = self._uplinks.get(name)
            if u is not None:
                self.prober.send(name, u.via, target, u.tracker.timeout(name, target))
        nxt = self.schedule.next_due()
        wait_until = until if nxt is None else min(until, nxt)
        for r in self.prober.poll(wait_until):
            u = self._uplinks.get(r.key)
            if u is None:
                continue
            if self.keep_results:
                self.results.append(r)
            out += u.tracker.record(r.key, r.target, r.sent_at, r.rtt, r.done_at)
            self._pace(r.key, u, r.done_at, None if r.rtt is None else r.sent_at)
        now = self.clock()
        seen: set[int] = set()
        for u in self._uplinks.values():
            if id(u.tracker) not in seen:
                seen.add(id(u.tracker))
                out += u.tracker.tick(now)
        return out

    def run(self, stop: threading.Event,
            on_transition: Callable[[Transition], None] | None = None,
            until: float | None = None) -> None:
        """Loop until `stop` is set (or the clock passes `until`)."""
        while not stop.is_set():
            now = self.clock()
            if until is not None and now >= until:
                return
            limit = now + 0.2 if until is None else min(until, now + 0.2)
            for t in self.step(limit):
                if on_transition is not None:
                    on_transition(t)
