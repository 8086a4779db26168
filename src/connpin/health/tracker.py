"""Health tracking: probe results per uplink and target -> alive / dead / unknown, with
hysteresis, RTT and loss per target (pure: no I/O, no clock of its own; every call carries
its timestamps, so tests drive it with a fake clock).

Rules (defaults in `Params`):

- **unknown** at start (and after `reset`, e.g. the link went away): the first answer from any
  target makes the uplink *alive*; the down rule below can make it *dead*.
- **dead** when EVERY target has lost at least k of its last n probes (a quorum; by default
  k = n = ceil(down_probes / targets), at least 2), counting probes in the order they were sent.
  One target failing (a DNS server down for maintenance) never kills an uplink.
- **alive again** after a stable period: answers from at least one target for `up_after`
  seconds with no moment where every target's latest probe was lost (such a moment restarts the
  period). Flapping is damped: an uplink that dies again within `flap_window` seconds of coming
  back needs twice the previous stable period next time (up to `up_after_max`).
- Per target: last RTT, smoothed RTT and its variation (EWMA, as TCP's RTO: 1/8 and 1/4), loss
  over the last `loss_window` probes, and the probe timeout, clamp(srtt + 4 rttvar,
  timeout_min, timeout_max) (`timeout_initial` until the first answer).
- **suspect**: an uplink that is not dead but lost its last `suspect_after` = 3 probes (any
  targets) is probed `burst` = 3 times faster until an answer comes or it is dead, so the
  evidence for "dead" (the same rule as above) piles up in a fraction of the time. On a healthy
  line this is rare (0.19^3: about one probe in 150 at 10% loss each way) and short, so the
  average stays near the budget; the peak is 30 packets/s for a few tenths of a second.
- **Families**: targets with a `family` (health.targets.Target) are split into an IPv4 and an
  IPv6 side; each side follows the rules above on its own targets only (its quorum from its own
  target count, its own stable period, flap damping and suspect streak). An uplink with one
  family has one side, which is the uplink (nothing changes). With both: the uplink is alive
  while any side is, dead when every side is, unknown otherwise; while no side is dead, the
  rule over all targets together (the one-list rule, its quorum from all of them) takes every
  side down at once, so a blackhole of the whole uplink is as fast as before (also while the
  dead sides died less than RECENT seconds ago: one side's burst may kill it first); once a
  side has been dead longer the other needs its own evidence (an IPv6 that never answers must
  not lower what IPv4 needs). The sides share the uplink's budget, an equal share each (the
  Monitor's lanes; `streaks` tells it where the doubt is).
- Transitions are returned as `Transition(uplink, old, new, at, reason, family)`: family
  "ipv4"/"ipv6" for one side of an uplink with both, "both" for the uplink as a whole (its only
  side, or its overall state, which follows the sides' transitions when it changes).

Why these defaults (the goals of issue 14: a dead uplink detected in <= 1 s p50 and <= 2 s p99;
no false failover at 10% random loss and 100 ms jitter over 10 minutes; <= ~10 probe packets/s
per uplink). The budget sets the round interval: T = max(0.1 s, packets per round / 10/s), so
three ICMP targets are each probed every 0.3 s. Probes share no fate on a healthy line, so with
q the chance that one probe (request + reply) is lost, a false "dead" at a given moment needs
all m targets to lose k of their last n probes: P = B(k, n, q)^m, where
B = P(Binomial(n, q) >= k). 10% loss each way gives q = 1 - 0.9^2 = 0.19. With k = n and
N = k*m ~ down_probes = 9 consecutive losses spread over the targets, the expected number of
false alarms in 10 minutes is at most 600/T * q^(k m) (neighbouring rounds overlap):

    m targets  T      k   false alarms / 10 min (q=0.19)   detection p50 / p99 (fake clock)
                                                             steady pace    with the burst
    1          0.1 s  9   600/0.1 * 0.19^9  = 1.9e-3        1.00 / 1.10 s  0.77 / 0.83 s
    2          0.2 s  5   600/0.2 * 0.19^10 = 1.8e-4        1.13 / 1.20 s  0.81 / 0.87 s
    3          0.3 s  3   600/0.3 * 0.19^9  = 6.5e-4        1.11 / 1.20 s  0.80 / 0.87 s
    4          0.4 s  3   600/0.4 * 0.19^12 = 3.3e-6        1.34 / 1.41 s  0.88 / 0.94 s

Detection was simulated with the real Schedule and Tracker, RTT ~0 (the timeout floor, 0.2 s,
applies) and the blackhole at a random moment: ~9 lost probes at 10/s would take ~0.9 s plus
the timeout, over the 1 s goal; the 3x burst once 3 probes in a row are lost brings it to
~0.8 s. Neither changes the false-alarm figures (they count probes), and the average rate in a
10-minute simulated soak at q = 0.19 stays at 10.06 packets/s. With q = 0.1 (10% loss of the
round trip) every false-alarm figure is 2-3 orders of magnitude smaller. 100 ms of jitter is
absorbed by the timeout: srtt + 4 rttvar ~ base + 50 ms + 4 * 25 ms for a uniform 0-100 ms
delay, above the worst case. Three ICMP targets is the recommended set-up; TCP probes cost 3
packets, so they lengthen the round. The measured figures are in docs/health.md.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

ALIVE = "alive"
DEAD = "dead"
UNKNOWN = "unknown"
STATES = (ALIVE, DEAD, UNKNOWN)
RECENT = 2.0  # s: a side dead this recently still lets the rule over all targets take the rest
BOTH = "both"  # a Transition about the uplink as a whole (not one family side of it)


@dataclass(frozen=True)
class Params:
    """Tunables of health tracking; the defaults meet issue 14's goals (see module docstring)."""

    rate: float = 10.0  # probe packets per second per uplink (the budget)
    min_interval: float = 0.1  # shortest round interval, seconds
    down_probes: int = 9  # consecutive losses the down rule wants, spread over the targets
    down_k: int | None = None  # override: lost probes per target ...
    down_n: int | None = None  # ... out of its last n (None: derived from down_probes)
    up_after: float = 3.0  # seconds of stable answers before a dead uplink is alive again
    up_after_max: float = 60.0  # cap of the doubled stable period of a flapping uplink
    flap_window: float = 60.0  # dying again within this long after recovery counts as a flap
    timeout_min: float = 0.2
    timeout_max: float = 2.0
    timeout_initial: float = 1.0
    loss_window: int = 100  # probes per target in the loss figure
    suspect_after: int = 3  # consecutive lost probes (any targets) that make an uplink suspect
    burst: float = 3.0  # probe rate multiplier while suspect (until an answer or dead)

    def validate(self) -> None:
        """ValueError (one line, naming the tunable) when the values make no sense."""
        if not self.rate > 0:
            raise ValueError(f"rate: {self.rate} must be > 0 probe packets per second")
        if not self.min_interval > 0:
            raise ValueError(f"min_interval: {self.min_interval} must be > 0 seconds")
        if self.down_probes < 1:
            raise ValueError(f"down_probes: {self.down_probes} must be >= 1")
        if (self.down_k is None) != (self.down_n is None):
            raise ValueError("down_k and down_n go together")
        if self.down_k is not None and self.down_n is not None and \
                not 1 <= self.down_k <= self.down_n <= 1000:
            raise ValueError(f"down_k/down_n: need 1 <= k <= n <= 1000, not "
                             f"{self.down_k}/{self.down_n}")
        if not 0 <= self.up_after <= self.up_after_max:
            raise ValueError(f"up_after: {self.up_after} must be in 0..up_after_max "
                             f"({self.up_after_max})")
        if self.flap_window < 0:
            raise ValueError(f"flap_window: {self.flap_window} must be >= 0")
        if not 0 < self.timeout_min <= self.timeout_initial <= self.timeout_max:
            raise ValueError("timeouts: need 0 < timeout_min <= timeout_initial <= timeout_max")
        if self.loss_window < 1:
            raise ValueError(f"loss_window: {self.loss_window} must be >= 1")
        if self.suspect_after < 1:
            raise ValueError(f"suspect_after: {self.suspect_after} must be >= 1")
        if not 1 <= self.burst <= 10:
            raise ValueError(f"burst: {self.burst} must be in 1..10")

    def quorum(self, targets: int) -> tuple[int, int]:
        """(k, n): a target fails when k of its last n probes were lost."""
        if self.down_k is not None and self.down_n is not None:
            return self.down_k, self.down_n
        k = max(2, math.ceil(self.down_probes / max(1, targets)))
        return k, k

    def interval(self, packets_per_round: int, share: float = 1.0) -> float:
        """Seconds between rounds so that the uplink stays within `rate` (a round that gets
        `share` of the budget: one family side's)."""
        return max(self.min_interval, packets_per_round / (self.rate * share))


@dataclass(frozen=True)
class Transition:
    uplink: Hashable
    old: str
    new: str
    at: float
    reason: str
    # which selection it is about: "ipv4" / "ipv6" (one family side of an uplink whose `check`
    # has both), BOTH (the uplink as a whole: its only side, or its overall state)
    family: str = "both"


@dataclass(frozen=True)
class TargetHealth:
    target: Hashable
    rtt: float | None  # last answer's RTT, seconds
    srtt: float | None  # smoothed
    rttvar: float | None
    loss: float | None  # fraction lost over the last loss_window probes (None: no probe yet)
    probes: int  # results recorded in total
    lost: int
    last_answer: float | None  # when the last answer arrived


@dataclass(frozen=True)
class FamilyHealth:
    family: str  # "ipv4" | "ipv6"
    state: str
    since: float
    reason: str


@dataclass(frozen=True)
class UplinkHealth:
    uplink: Hashable
    state: str
    since: float
    reason: str
    targets: tuple[TargetHealth, ...]
    up_after: float  # the stable period the next recovery needs
    # per family side (only when the uplink's targets have both families): its own state
    families: tuple[FamilyHealth, ...] = ()


@dataclass
class _Target:
    window: int
    results: deque[tuple[float, bool]] = field(default_factory=deque)  # (sent_at, ok), by sent
    rtt: float | None = None
    srtt: float | None = None
    rttvar: float | None = None
    probes: int = 0
    lost: int = 0
    last_answer: float | None = None

    def add(self, sent_at: float, ok: bool) -> None:
        r = self.results
        if not r or sent_at >= r[-1][0]:
            r.append((sent_at, ok))
        else:  # a late result of an earlier probe: keep send order
            items = list(r)
            bisect.insort(items, (sent_at, ok))
            r.clear()
            r.extend(items)
        while len(r) > self.window:
            r.popleft()

    def failing(self, k: int, n: int) -> bool:
        recent = list(self.results)[-n:]
        return sum(1 for _, ok in recent if not ok) >= k

    def latest_lost(self) -> bool:
        return bool(self.results) and not self.results[-1][1]


@dataclass
class _Side:
    """The targets of one family (or all of them, when there is one family): the rules apply
    here."""

    targets: dict[Hashable, _Target]
    state: str = UNKNOWN
    since: float = 0.0
    reason: str = "not probed yet"
    recovering_since: float | None = None
    flaps: int = 0
    recovered_at: float | None = None  # last dead -> alive transition
    streak: int = 0  # consecutive lost results, any target, in the order they became known


@dataclass
class _Uplink:
    sides: dict[str, _Side]  # family ("ipv4" / "ipv6", BOTH for targets without one) -> side
    side_of: dict[Hashable, str]  # target -> its side
    state: str = UNKNOWN  # overall: the only side's, or derived from the sides (`_overall`)
    since: float = 0.0
    reason: str = "not probed yet"

    @property
    def targets(self) -> dict[Hashable, _Target]:
        return {t: self.sides[f].targets[t] for t, f in self.side_of.items()}


def family_of(target: Hashable) -> str:
    """"ipv4" / "ipv6" for a target with a `family` (health.targets.Target), else BOTH."""
    f = getattr(target, "family", None)
    return f"ipv{f}" if f in (4, 6) else BOTH


class Tracker:
    """Per-uplink health from probe results; see the module docstring for the rules."""

    def __init__(self, params: Params | None = None):
        self.params = params or Params()
        self.params.validate()
        self._uplinks: dict[Hashable, _Uplink] = {}

    # -- configuration ----------------------------------------------------------------------------
    def add(self, uplink: Hashable, targets: Iterable[Hashable], now: float) -> None:
        """Start tracking `uplink` (state unknown); a second add replaces its targets. Its
        targets are split by family: each family side is judged on its own targets."""
        names = list(dict.fromkeys(targets))
        if not names:
            raise ValueError(f"uplink {uplink!r}: no targets")
        side_of = {t: family_of(t) for t in names}
        sides: dict[str, _Side] = {}
        for fam in dict.fromkeys(side_of.values()):
            mine = [t for t in names if side_of[t] == fam]
            window = max(self.params.loss_window, self.params.quorum(len(mine))[1])
            sides[fam] = _Side({t: _Target(window) for t in mine}, since=now)
        self._uplinks[uplink] = _Uplink(sides, side_of, since=now)

    def remove(self, uplink: Hashable) -> None:
        self._uplinks.pop(uplink, None)

    def reset(self, uplink: Hashable, now: float, reason: str = "reset") -> list[Transition]:
        """Forget results (the link went away or came back): the uplink is unknown again."""
        u = self._uplinks[uplink]
        old = u.state
        self.add(uplink, list(u.side_of), now)
        nu = self._uplinks[uplink]
        nu.reason = reason
        for side in nu.sides.values():
            side.reason = reason
        return [] if old == UNKNOWN else [Transition(uplink, old, UNKNOWN, now, reason)]

    @property
    def uplinks(self) -> tuple[Hashable, ...]:
        return tuple(self._uplinks)

    def targets(self, uplink: Hashable) -> tuple[Hashable, ...]:
        return tuple(self._uplinks[uplink].side_of)

    # -- what the prober needs --------------------------------------------------------------------
    def timeout(self, uplink: Hashable, target: Hashable) -> float:
        u = self._uplinks[uplink]
        p, t = self.params, u.sides[u.side_of[target]].targets[target]
        if t.srtt is None or t.rttvar is None:
            return p.timeout_initial
        return min(p.timeout_max, max(p.timeout_min, t.srtt + 4 * t.rttvar))

    def interval(self, uplink: Hashable, costs: Sequence[int] | None = None) -> float:
        """Seconds between rounds of `uplink` (costs: packets per probe of each target): the
        family sides share the uplink's budget."""
        u = self._uplinks[uplink]
        return self.params.interval(sum(costs) if costs else len(u.side_of))

    # -- results ----------------------------------------------------------------------------------
    def record(self, uplink: Hashable, target: Hashable, sent_at: float, rtt: float | None,
               now: float) -> list[Transition]:
        """One probe's result: answered after `rtt` seconds, or lost (None) as known at `now`."""
        u = self._uplinks.get(uplink)
        if u is None or target not in u.side_of:
            return []  # a result for something no longer tracked
        side = u.sides[u.side_of[target]]
        t = side.targets[target]
        t.probes += 1
        if rtt is None:
            t.lost += 1
        else:
            rtt = max(0.0, rtt)
            t.rtt = rtt
            t.last_answer = now
            if t.srtt is None or t.rttvar is None:
                t.srtt, t.rttvar = rtt, rtt / 2
            else:
                t.rttvar = 0.75 * t.rttvar + 0.25 * abs(t.srtt - rtt)
                t.srtt = 0.875 * t.srtt + 0.125 * rtt
        t.add(sent_at, rtt is not None)
        side.streak = 0 if rtt is not None else side.streak + 1
        return self._judge(uplink, u, now, u.side_of[target], rtt is not None)

    def tick(self, now: float) -> list[Transition]:
        """Let time pass: completes recoveries whose stable period has elapsed."""
        out: list[Transition] = []
        for name, u in self._uplinks.items():
            out += self._judge(name, u, now, None, False)
        return out

    # -- rules ------------------------------------------------------------------------------------
    def _all_failing(self, targets: dict[Hashable, _Target]) -> bool:
        k, n = self.params.quorum(len(targets))
        return all(t.failing(k, n) for t in targets.values())

    def _stable_needed(self, side: _Side) -> float:
        p = self.params
        return min(p.up_after_max, p.up_after * 2 ** side.flaps)

    def _go(self, side: _Side, new: str, now: float, reason: str) -> tuple[str, str]:
        old = side.state
        side.state, side.since, side.reason = new, now, reason
        side.recovering_since = None
        if old == DEAD and new == ALIVE:
            side.recovered_at = now
        return old, new

    def _down_reason(self, targets: dict[Hashable, _Target]) -> str:
        k, n = self.params.quorum(len(targets))
        return (f"all {len(targets)} targets lost {k} of their last {n} probes"
                if len(targets) > 1 else f"the target lost {k} of its last {n} probes")

    def _die(self, side: _Side, now: float, reason: str) -> tuple[str, str]:
        flap = side.recovered_at is not None and now - side.recovered_at < self.params.flap_window
        side.flaps = side.flaps + 1 if flap else 0
        return self._go(side, DEAD, now, reason)

    def _evaluate(self, side: _Side, now: float, answered: bool) -> tuple[str, str] | None:
        """The rules on one side: (old, new) when its state changed."""
        if side.state == UNKNOWN:
            if answered:
                return self._go(side, ALIVE, now, "first answer")
            if self._all_failing(side.targets):
                return self._go(side, DEAD, now, self._down_reason(side.targets))
            return None
        if side.state == ALIVE:
            if self._all_failing(side.targets):
                return self._die(side, now, self._down_reason(side.targets))
            return None
        # DEAD: wait for a stable period of answers
        if all(t.latest_lost() for t in side.targets.values()):
            side.recovering_since = None
            return None
        if side.recovering_since is None:
            if not answered:
                return None
            side.recovering_since = now
        if now - side.recovering_since >= self._stable_needed(side):
            stable = now - side.recovering_since
            return self._go(side, ALIVE, now, f"answers for {stable:.1f} s")
        return None

    def _judge(self, name: Hashable, u: _Uplink, now: float, touched: str | None,
               answered: bool) -> list[Transition]:
        """Apply the rules to the touched side (None: every side), then the uplink's."""
        changed: list[tuple[str, str, str]] = []  # (family, old, new)
        for fam, side in u.sides.items():
            if touched is None or fam == touched:
                ch = self._evaluate(side, now, answered and fam == touched)
                if ch is not None:
                    changed.append((fam, *ch))
        if len(u.sides) == 1:
            side = next(iter(u.sides.values()))
            u.state, u.since, u.reason = side.state, side.since, side.reason
            return [Transition(name, old, new, now, side.reason) for _, old, new in changed]
        # several families: while none is dead, the rule over all targets together (the
        # single-list rule, its quorum from all of them) takes every side down at once
        # (or while the dead sides died within RECENT seconds: a blackhole of the whole uplink
        # where one side's evidence came first, a burst on its targets)
        targets = u.targets
        if all(s.state != DEAD or now - s.since <= RECENT for s in u.sides.values()) and \
                any(s.state != DEAD for s in u.sides.values()) and self._all_failing(targets):
            reason = self._down_reason(targets)
            for fam, side in u.sides.items():
                if side.state != DEAD:
                    old = side.state
                    self._die(side, now, reason)
                    changed = [c for c in changed if c[0] != fam] + [(fam, old, DEAD)]
        out = [Transition(name, old, new, now, u.sides[fam].reason, fam)
               for fam, old, new in changed if old != new]
        state, reason = self._overall(u)
        if state != u.state:
            out.append(Transition(name, u.state, state, now, reason))
            u.state, u.since = state, now
        u.reason = reason  # says which family is what, even when the uplink's state stays
        return out

    @staticmethod
    def _overall(u: _Uplink) -> tuple[str, str]:
        """Several families: alive while any side is, dead when every side is."""
        states = {f: s.state for f, s in u.sides.items()}
        if ALIVE in states.values():
            alive = [f for f, st in states.items() if st == ALIVE]
            others = [f"{f} {st}" for f, st in states.items() if st != ALIVE]
            return ALIVE, (f"{', '.join(alive)} alive" + (f" ({', '.join(others)})"
                                                           if others else ""))
        if all(st == DEAD for st in states.values()):
            reasons = {s.reason for s in u.sides.values()}
            return DEAD, (reasons.pop() if len(reasons) == 1 else "every family dead")
        reasons = {s.reason for s in u.sides.values()}
        if set(states.values()) == {UNKNOWN} and len(reasons) == 1:
            return UNKNOWN, reasons.pop()  # "not probed yet", a reset's reason
        return UNKNOWN, ", ".join(f"{f} {st}" for f, st in states.items())

    # -- figures ----------------------------------------------------------------------------------
    def state(self, uplink: Hashable) -> str:
        return self._uplinks[uplink].state

    def family_states(self, uplink: Hashable) -> dict[str, str]:
        """Family side -> its state (one entry, BOTH, for an uplink with one family)."""
        u = self._uplinks[uplink]
        return {f: s.state for f, s in u.sides.items()} if len(u.sides) > 1 else {BOTH: u.state}

    def suspect(self, uplink: Hashable) -> bool:
        """Some family side is not dead (yet) but its last `suspect_after` probes were lost:
        probe the uplink faster."""
        return any(s.state != DEAD and s.streak >= self.params.suspect_after
                   for s in self._uplinks[uplink].sides.values())

    def streaks(self, uplink: Hashable) -> dict[str, int]:
        """Family side (BOTH for a one-family uplink) -> its lost probes in a row, for the sides
        that are not dead."""
        return {f: s.streak for f, s in self._uplinks[uplink].sides.items() if s.state != DEAD}

    def snapshot(self, uplink: Hashable) -> UplinkHealth:
        u, p = self._uplinks[uplink], self.params
        targets = []
        for name, t in u.targets.items():
            recent = list(t.results)[-p.loss_window:]
            loss = (sum(1 for _, ok in recent if not ok) / len(recent)) if recent else None
            targets.append(TargetHealth(name, t.rtt, t.srtt, t.rttvar, loss, t.probes, t.lost,
                                        t.last_answer))
        families = tuple(FamilyHealth(f, s.state, s.since, s.reason) for f, s in u.sides.items()
                         ) if len(u.sides) > 1 else ()
        return UplinkHealth(uplink, u.state, u.since, u.reason, tuple(targets),
                            max(self._stable_needed(s) for s in u.sides.values()), families)
