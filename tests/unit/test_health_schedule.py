"""The probe schedule (pure): rounds spread over the interval with bounded jitter, every target
once per round, the packet budget kept; and the health core imports nothing that touches the
machine."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from connpin.health.monitor import JITTER, Schedule
from connpin.health.targets import parse_all
from connpin.health.tracker import Params

T3 = parse_all(["icmp:192.0.2.1", "icmp:192.0.2.2", "tcp:192.0.2.3:443"])


def run(s: Schedule, until: float, step: float = 0.01) -> list[tuple[float, object, object]]:
    out, now = [], 0.0
    while now < until:
        out += [(now, u, t) for u, t in s.due(now)]
        now += step
    return out


def test_each_target_once_per_round_evenly_spread() -> None:
    s = Schedule(random.Random(3))
    interval = Params().interval(sum(t.cost for t in T3))  # 5 packets -> 0.5 s
    assert interval == pytest.approx(0.5)
    s.add("isp1", T3, interval, 0.0)
    sent = run(s, 60.0)
    for t in T3:
        times = [at for at, _, tg in sent if tg == t]
        assert 118 <= len(times) <= 121
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        spacing = interval / len(T3)
        assert all(interval - 2 * JITTER * spacing - 0.02 <= g <= interval + 2 * JITTER * spacing
                   + 0.02 for g in gaps), (min(gaps), max(gaps))
    # probes of one round are spread, not bunched: consecutive probes ~ interval/3 apart
    times = sorted(at for at, _, _ in sent)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= interval / 3 * (1 - 2 * JITTER) - 0.02


def test_packet_budget_per_uplink() -> None:
    s = Schedule(random.Random(5))
    for name, targets in (("a", T3), ("b", T3[:1]), ("c", T3[:2])):
        s.add(name, targets, Params().interval(sum(t.cost for t in targets)), 0.0)
    sent = run(s, 30.0)
    for name in "abc":
        packets = sum(t.cost for _, u, t in sent if u == name)  # type: ignore[attr-defined]
        assert packets / 30.0 <= Params().rate * 1.05, (name, packets)


def test_random_phase_and_removal() -> None:
    s = Schedule(random.Random(9))
    s.add("a", T3[:1], 1.0, 0.0)
    s.add("b", T3[:1], 1.0, 0.0)
    first = {u: at for at, u, _ in reversed(run(s, 1.2))}
    assert first["a"] != first["b"]
    s.remove("a")
    assert {u for _, u, _ in run(s, 5.0)} == {"b"}
    s.add("b", T3, 0.3, 0.0)  # re-adding replaces the targets
    assert {t for _, _, t in run(s, 3.0)} == set(T3)


def test_repace_sends_nothing_at_once_and_keeps_the_order() -> None:
    """A lane's pace changing back and forth (a lossy line's short doubts) costs no probe: the
    next one comes one new spacing after the last one sent, the round's order goes on."""
    s = Schedule(random.Random(4))
    s.add("a", T3, 0.6, 0.0, phase=0.0)
    sent = [(at, t) for at, _, t in run(s, 0.25)]  # 0.0 and ~0.2: T3[0], T3[1]
    assert [t for _, t in sent] == list(T3[:2])
    s.repace("a", 0.3, 0.25)  # spacing 0.1 from the last probe (~0.2): T3[2] at ~0.3
    more = [(round(at, 2), t) for at, _, t in run(s, 0.75) if at >= 0.25]
    assert more[0][1] == T3[2] and 0.27 <= more[0][0] <= 0.33, more
    assert [t for _, t in more[:4]] == [T3[2], T3[0], T3[1], T3[2]]
    last = max(at for at, _ in more if at < 0.75)
    s.repace("a", 0.6, 0.75)
    later = [at for at, _, _ in run(s, 1.2) if at >= 0.75]
    assert later[0] >= last + 0.2 - 0.03, (last, later)  # slower: not at once


def test_the_health_core_touches_nothing() -> None:
    code = ("import sys\nimport connpin.health, connpin.health.targets, connpin.health.tracker\n"
            "bad = [m for m in ('pyroute2', 'subprocess', 'socket', 'selectors', "
            "'connpin.kernel', 'connpin.health.probe') if m in sys.modules]\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
