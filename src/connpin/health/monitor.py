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

An uplink whose targets have both families (judged per family side by the Tracker) has one
round per side (a `Lane`), each with an equal share of the budget, and the budget goes where the
doubt is (`Monitor._lane_paces`): a side whose last probe was lost while the other answers gets
the other lane's probes; after `SIDE_SUSPECT` lost in a row its lane bursts; every side losing
is the whole round's burst. So a family dying alone is dead in under a second at the default
budget (docs/health.md#per-family-health has the figures and the false-alarm bounds).
"""

from __future__ import annotations

import heapq
import random
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from connpin.health.probe import Prober, Result, Via
from connpin.health.targets import Target
from connpin.health.tracker import DEAD, Params, Tracker, Transition, family_of

JITTER = 0.1  # of the spacing between two probes of one uplink
SIDE_SUSPECT = 2  # lost in a row on one side, while the other answers, that start its burst
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
        self._last: dict[Hashable, tuple[float, int]] = {}  # uplink -> (last probe's time, index)
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
            self._last.pop(uplink, None)
            self._drop(uplink)

    def _drop(self, uplink: Hashable) -> None:
        self._heap = [e for e in self._heap if e[2] != uplink]
        heapq.heapify(self._heap)

    def repace(self, uplink: Hashable, interval: float, now: float) -> None:
        """Change the pace of `uplink`'s rounds without a probe at once: the next probe comes
        one new spacing after the last one sent (not before `now`), the round's order goes on.
        So changing paces back and forth sends no more than the paces say."""
        targets, _ = self._uplinks[uplink]
        self._drop(uplink)
        self._uplinks[uplink] = (targets, interval)
        n, spacing = len(targets), interval / len(targets)
        last_at, last_i = self._last.get(uplink, (now - spacing, -1))
        start = max(now, last_at + spacing)
        for j in range(n):
            i = (last_i + 1 + j) % n
            self._push(start + (j - i) * spacing, uplink, i)

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
            self._last[uplink] = (now, i)
            self._push(start + interval, uplink, i)
        return out


class Lane(NamedTuple):
    """The schedule's key for one family side of an uplink checked in both families."""

    uplink: Hashable
    family: str


@dataclass
class _Uplink:
    via: Via
    targets: tuple[Target, ...]
    tracker: Any
    interval: float  # the pace of the whole round (one lane) or of each lane's, without burst
    # family side -> its targets, when the tracker judges sides (one entry: one lane, the round)
    lanes: dict[str, tuple[Target, ...]] = field(default_factory=dict)
    paces: dict[str, float] = field(default_factory=dict)  # lane -> its round interval now
    normal: dict[str, float] = field(default_factory=dict)  # lane -> without burst
    lend: dict[str, str] = field(default_factory=dict)  # lane -> the lane its probes go to
    turn: dict[str, int] = field(default_factory=dict)  # lane -> its last target lent to
    credit: int = 0  # packets lent and not spent yet
    fast: bool = False
    hurried: float | None = None  # `hurry` (when): burst until a later probe is answered or dead


def _cost(targets: Sequence[Target]) -> int:
    return sum(t.cost for t in targets)


def _hurried(p: Params, normal: float, packets: float) -> float:
    """A hurried round's interval: `burst` times faster than `normal`, or than a round of
    `packets` at the default budget (HURRY_RATE) when that is faster (a slow `rate` must not
    slow a hurried check)."""
    return min(normal, max(p.min_interval, packets / HURRY_RATE)) / p.burst


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
        self.remove(name)
        tr.add(name, targets, now)
        interval = tr.interval(name, [t.cost for t in targets])
        u = _Uplink(via, tuple(targets), tr, interval)
        lanes: dict[str, list[Target]] = {}
        for t in targets:
            lanes.setdefault(family_of(t), []).append(t)
        self._uplinks[name] = u
        if len(lanes) < 2 or not hasattr(tr, "streaks"):  # a tracker without family sides
            self.schedule.add(name, targets, interval, now)
            return
        # one lane per family side, each with an equal share of the uplink's budget: a side's
        # lone target is probed as often as the other side's targets together
        u.lanes = {f: tuple(ts) for f, ts in lanes.items()}
        share = 1 / len(lanes)
        u.normal = {f: tr.params.interval(_cost(ts), share) for f, ts in u.lanes.items()}
        u.paces = dict(u.normal)
        for f, ts in u.lanes.items():
            self.schedule.add(Lane(name, f), ts, u.paces[f], now)

    def _pace(self, name: Hashable, u: _Uplink, now: float,
              answered: float | None = None) -> None:
        """Probe `burst` times faster while the tracker calls the uplink suspect (or it was
        hurried, and no probe sent since was answered (`answered`: its send time), nor did it
        die)."""
        if u.hurried is not None and ((answered is not None and answered >= u.hurried)
                                      or u.tracker.state(name) == DEAD):
            u.hurried = None
        if u.lanes:
            self._pace_lanes(name, u, now)
            return
        suspect = getattr(u.tracker, "suspect", None)
        fast = bool(suspect is not None and suspect(name)) or u.hurried is not None
        if fast != u.fast:
            u.fast = fast
            self.schedule.add(name, u.targets, self._fast(u) if fast else u.interval, now,
                              phase=0.0)

    def _lane_paces(self, name: Hashable, u: _Uplink) -> tuple[dict[str, float],
                                                                 dict[str, str]]:
        """Each lane's round interval now, and which lanes lend their probes to which: the
        budget goes where the doubt is. A side that lost its last probe while the others
        answer gets the others' probes (same packets, its targets probed 2x as often); after
        SIDE_SUSPECT lost in a row its lane also gets the burst's budget (burst x rate, less
        what the lenders spend). Every side that is not dead losing, `suspect_after` lost in
        a row over them (a blackhole of the whole uplink), or hurried: every lane `burst`
        times faster, as one round would be (a dead side's lane keeps its pace)."""
        p = u.tracker.params
        if u.hurried is not None:  # each lane at its share (1/n) of the default budget
            return {f: _hurried(p, u.normal[f], _cost(ts) * len(u.lanes))
                    for f, ts in u.lanes.items()}, {}
        streaks = u.tracker.streaks(name)  # the sides that are not dead
        doubt = sorted(f for f, n in streaks.items() if n >= 1)
        if len(doubt) == len(streaks):  # every live side losing (or none live)
            if sum(streaks.values()) >= p.suspect_after:
                return {f: v / p.burst if f in streaks else v
                        for f, v in u.normal.items()}, {}
            return dict(u.normal), {}
        lend = {f: doubt[0] for f in streaks if f not in doubt} if doubt else {}
        suspect = {f for f in doubt if streaks[f] >= SIDE_SUSPECT}
        if not suspect:
            return dict(u.normal), lend
        others = sum(_cost(ts) / u.normal[f] for f, ts in u.lanes.items() if f not in suspect)
        spare = p.burst * p.rate - others  # packets/s the suspect sides may use
        mine = sum(_cost(u.lanes[f]) for f in suspect)
        return {f: max(p.min_interval / p.burst, mine / spare) if f in suspect else v
                for f, v in u.normal.items()}, lend

    def _pace_lanes(self, name: Hashable, u: _Uplink, now: float, force: bool = False) -> None:
        paces, lend = self._lane_paces(name, u)
        if lend != u.lend:
            u.lend, u.credit = lend, 0
        u.fast = paces != u.normal
        for f, v in paces.items():
            if force or v != u.paces[f]:
                u.paces[f] = v
                if force:
                    self.schedule.add(Lane(name, f), u.lanes[f], v, now, phase=0.0)
                else:
                    self.schedule.repace(Lane(name, f), v, now)

    def _lent(self, u: _Uplink, lane: str, target: Target) -> Target | None:
        """The target a lane's due probe goes to: its own, or the next of the lane it lends
        to (in turn), paid with the packets its own probe would have cost (a TCP target, 3
        packets, takes 3 slots of ICMP targets; None: this slot is saved for it)."""
        to = u.lend.get(lane)
        if to is None:
            return target
        ts = u.lanes[to]
        nxt = ts[(u.turn.get(to, -1) + 1) % len(ts)]
        u.credit += target.cost
        if u.credit < nxt.cost:
            return None
        u.credit -= nxt.cost
        u.turn[to] = ts.index(nxt)
        return nxt

    def _fast(self, u: _Uplink) -> float:
        """The burst's round: `burst` times faster (`_hurried` while hurried)."""
        p = u.tracker.params
        if u.hurried is not None:
            return _hurried(p, u.interval, _cost(u.targets))
        return u.interval / p.burst

    def hurry(self, name: Hashable) -> bool:
        """Burst `name`'s probes now (the passive signal called it suspect): its next round
        starts at once (also when lost probes already made it suspect: at a slow `rate` that
        pace is slow). False when it is not probed, dead, or already hurried."""
        u = self._uplinks.get(name)
        if u is None or u.hurried is not None or u.tracker.state(name) == DEAD:
            return False
        now = self.clock()
        u.hurried, u.fast = now, True
        if u.lanes:
            self._pace_lanes(name, u, now, force=True)
        else:
            self.schedule.add(name, u.targets, self._fast(u), now, phase=0.0)
        return True

    def remove(self, name: Hashable) -> None:
        u = self._uplinks.pop(name, None)
        self.schedule.remove(name)
        for f in u.lanes if u is not None else ():
            self.schedule.remove(Lane(name, f))

    def tracker_of(self, name: Hashable) -> Any:
        return self._uplinks[name].tracker

    def step(self, until: float) -> list[Transition]:
        """Send what is due, wait for results until the next probe is due or `until`; return
        the transitions this caused."""
        out: list[Transition] = []
        now = self.clock()
        for key, target in self.schedule.due(now):
            name = key.uplink if isinstance(key, Lane) else key
            u = self._uplinks.get(name)
            if u is None:
                continue
            to = self._lent(u, key.family, target) if isinstance(key, Lane) else target
            if to is not None:
                self.prober.send(name, u.via, to, u.tracker.timeout(name, to))
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
