"""The Monitor loop with a fake prober and a fake clock (pure): a blackhole is detected within
the goal thanks to the burst while suspect, the pace goes back to normal afterwards, and the
packet budget holds on a lossy line."""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Hashable

from connpin.health.monitor import Monitor
from connpin.health.probe import Result, Via
from connpin.health.targets import Target, parse_all
from connpin.health.tracker import ALIVE, DEAD, Tracker

T3 = parse_all(["icmp:192.0.2.1", "icmp:192.0.2.2", "icmp:192.0.2.3"])


class FakeProber:
    """Answers after `rtt` unless the line is dead or the probe is lost (then: its timeout)."""

    def __init__(self, seed: int = 1, loss: float = 0.0):
        self.now = 0.0
        self.dead = False
        self.loss = loss
        self.rng = random.Random(seed)
        self.packets = 0
        self._q: list[tuple[float, int, Result]] = []
        self._n = 0

    def clock(self) -> float:
        return self.now

    def send(self, key: Hashable, via: Via, target: Target, timeout: float) -> None:
        self.packets += target.cost
        rtt = 0.02 + self.rng.random() * 0.1
        lost = self.dead or self.rng.random() < self.loss or rtt > timeout
        done = self.now + (timeout if lost else rtt)
        self._n += 1
        heapq.heappush(self._q, (done, self._n, Result(key, target, self.now,
                                                        None if lost else rtt, done)))

    def poll(self, until: float) -> list[Result]:
        nxt = self._q[0][0] if self._q else until
        self.now = max(self.now, min(until, nxt))
        out = []
        while self._q and self._q[0][0] <= self.now:
            out.append(heapq.heappop(self._q)[2])
        return out


def run_until(m: Monitor, p: FakeProber, t: float) -> list:
    out = []
    while p.now < t:
        out += m.step(t)
    return out


def test_blackhole_detected_within_the_goal_with_the_burst() -> None:
    times = []
    rng = random.Random(4)
    for seed in range(40):
        p = FakeProber(seed)
        m = Monitor(p, Tracker(), rng=random.Random(seed))  # type: ignore[arg-type]
        m.add("isp1", Via(device="ppp0"), T3)
        assert [e.new for e in run_until(m, p, 3.0)] == [ALIVE]
        t0 = 3.0 + rng.random()
        run_until(m, p, t0)
        p.dead = True
        ev = []
        while not ev:
            ev = [e for e in m.step(t0 + 5) if e.new == DEAD]
        times.append(ev[0].at - t0)
        packets = p.packets
        run_until(m, p, p.now + 10)  # dead: back to the normal pace (3 probes per 0.3 s)
        assert (p.packets - packets) / 10 <= 10.5
    assert statistics.median(times) <= 0.9 and max(times) <= 1.0, sorted(times)


def test_budget_and_no_false_alarm_on_a_lossy_line() -> None:
    p = FakeProber(9, loss=0.19)
    m = Monitor(p, Tracker(), rng=random.Random(9))  # type: ignore[arg-type]
    m.add("isp1", Via(device="ppp0"), T3)
    ev = run_until(m, p, 600.0)
    assert [e.new for e in ev] == [ALIVE]
    assert p.packets / 600 <= 10.2
