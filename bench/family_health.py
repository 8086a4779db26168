"""Detection time of per-family health (docs/health.md#per-family-health): the real Schedule,
Tracker and Monitor under a fake clock (pure simulation: no namespace, deterministic seeds), a
`check` list with IPv4 and IPv6 targets, the whole uplink or one family blackholed at a random
moment; the one-family list (3 IPv4 targets) is the baseline of the same run, ratios to its p50.

    .venv/bin/python bench/family_health.py [--quick] [--out DIR]

Goal (issue 14): dead in <= 1 s p50 and <= 2 s p99, ~10 probe packets/s, no false alarm at 10%
loss each way. The families share the uplink's probe budget (`[health] rate`, an equal share
each); a side that loses while the other answers gets the other's probes, then the burst. Each
set-up also runs on a line losing 19% of its probes (10 simulated minutes, 2 with --quick):
packets/s and false alarms. The rows at `rate = 20` show what raising the budget buys.
"""

from __future__ import annotations

import heapq
import random
import statistics
import sys
from collections.abc import Hashable

import _common as C
from connpin.health.monitor import Monitor
from connpin.health.probe import Result, Via
from connpin.health.targets import Target, parse_all
from connpin.health.tracker import DEAD, Params, Tracker

V4 = ["icmp:192.0.2.1", "icmp:192.0.2.2", "icmp:192.0.2.3"]
V6 = ["icmp:2001:db8::1", "icmp:2001:db8::2", "icmp:2001:db8::3"]
SETUPS = [("3 IPv4 (one family: baseline)", V4, 10.0), ("2 IPv4 + 1 IPv6", V4[:2] + V6[:1], 10.0),
          ("1 IPv4 + 1 IPv6", V4[:1] + V6[:1], 10.0), ("2 IPv4 + 2 IPv6", V4[:2] + V6[:2], 10.0),
          ("3 IPv4 + 3 IPv6", V4 + V6, 10.0), ("2 IPv4 + 1 IPv6", V4[:2] + V6[:1], 20.0),
          ("2 IPv4 + 2 IPv6", V4[:2] + V6[:2], 20.0)]


class Line:
    """A fake prober: answers after 20-120 ms, or nothing (known at the timeout) for the
    families in `dead`."""

    def __init__(self, seed: int, loss: float = 0.0):
        self.now, self.dead, self.packets, self._n, self.loss = 0.0, set(), 0, 0, loss
        self.rng = random.Random(seed)
        self._q: list[tuple[float, int, Result]] = []

    def clock(self) -> float:
        return self.now

    def send(self, key: Hashable, via: Via, target: Target, timeout: float) -> None:
        self.packets += target.cost
        rtt = 0.02 + self.rng.random() * 0.1
        lost = target.family in self.dead or rtt > timeout or (
            self.loss > 0 and self.rng.random() < self.loss)
        done = self.now + (timeout if lost else rtt)
        self._n += 1
        heapq.heappush(self._q, (done, self._n, Result(key, target, self.now,
                                                        None if lost else rtt, done)))

    def poll(self, until: float) -> list[Result]:
        self.now = max(self.now, min(until, self._q[0][0] if self._q else until))
        out = []
        while self._q and self._q[0][0] <= self.now:
            out.append(heapq.heappop(self._q)[2])
        return out


def detect(specs: list[str], dead: set[int], rate: float, runs: int) -> tuple[list[float], float]:
    """Seconds from the fault to the transition of what died, per run; probe packets/s of
    the healthy uplink (before the fault)."""
    targets = parse_all(specs)
    families = {t.family for t in targets}
    want = "both" if dead >= families else f"ipv{next(iter(dead))}"
    times, rates, rng = [], [], random.Random(4)
    for seed in range(runs):
        line = Line(seed)
        m = Monitor(line, Tracker(Params(rate=rate)), rng=random.Random(seed))  # type: ignore[arg-type]
        m.add("isp1", Via(device="ppp0"), targets)
        t0 = 3.0 + rng.random()
        while line.now < t0:
            m.step(t0)
        rates.append(line.packets / line.now)
        line.dead = set(dead)
        hit: list = []
        while not hit:
            hit = [e for e in m.step(t0 + 10) if e.new == DEAD and e.family == want]
            if line.now >= t0 + 10:
                raise SystemExit(f"{specs} {dead}: not dead after 10 s")
        times.append(hit[0].at - t0)
    return sorted(times), statistics.median(rates)


def soak(specs: list[str], rate: float, seconds: float, seed: int = 9) -> tuple[float, int]:
    """A lossy line (19% of probes lost: 10% each way) for `seconds`: probe packets/s and dead
    transitions (false alarms)."""
    line = Line(seed, loss=0.19)
    m = Monitor(line, Tracker(Params(rate=rate)), rng=random.Random(seed))  # type: ignore[arg-type]
    m.add("isp1", Via(device="ppp0"), parse_all(specs))
    dead = 0
    while line.now < seconds:
        dead += sum(1 for e in m.step(seconds) if e.new == DEAD)
    return line.packets / line.now, dead


def p99(values: list[float]) -> float:
    return values[int(0.99 * (len(values) - 1))]


def main() -> int:
    args = C.parse_args(__doc__.splitlines()[0])
    runs = 40 if args.quick else 200
    headers = ["check", "rate", "dead", "p50 s", "p99 s", "p50 / baseline", "goal",
               "packets/s healthy", "packets/s at 19% loss", "false alarms"]
    seconds = 120.0 if args.quick else 600.0
    rows, base = [], None
    for name, specs, rate in SETUPS:
        fams = sorted({t.family for t in parse_all(specs)})
        lossy, false = soak(specs, rate, seconds)
        for dead in [set(fams)] + ([{6}, {4}] if len(fams) == 2 else []):
            times, pps = detect(specs, dead, rate, runs)
            p50 = statistics.median(times)
            base = base or p50
            what = "all" if dead == set(fams) else f"ipv{next(iter(dead))} alone"
            met = "met" if p50 <= 1.0 and p99(times) <= 2.0 else (
                "p99 met" if p99(times) <= 2.0 else "NOT met")
            rows.append([name, f"{rate:g}", what, f"{p50:.2f}", f"{p99(times):.2f}",
                         f"{p50 / base:.2f}", met, f"{pps:.1f}", f"{lossy:.2f}", str(false)])
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(C.table(headers, rows))
    C.write_csv(args.out, "family_health", headers, rows)
    C.write_md(args.out, "family_health", "\n".join([
        "## Per-family health: detection time (fake clock)", "",
        f"{runs} simulated blackholes per row (the real Schedule, Tracker and Monitor, RTT "
        "20-120 ms), the whole uplink or one family; ratio to the one-family list's p50. Goal: "
        "<= 1 s p50, <= 2 s p99. Then each set-up on a line losing 19% of its probes for "
        f"{seconds:.0f} s: probe packets/s and dead transitions (false alarms).", "",
        C.table(headers, rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
