"""Per-family health (fake clock, pure): an uplink whose `check` has IPv4 and IPv6 targets keeps
a side per family, each judged on its own targets; the uplink is dead only when every side is,
the rule over all targets together still takes both down at once, and the burst follows the
sides. Detection of a family-only death stays within the p99 goal at the default budget."""

from __future__ import annotations

import heapq
import random
import statistics

from test_health_monitor import FakeProber, run_until
from test_health_tracker import Sim

from connpin.health.monitor import Monitor
from connpin.health.probe import Result, Via
from connpin.health.targets import Target, parse_all
from connpin.health.tracker import ALIVE, BOTH, DEAD, RECENT, UNKNOWN, Params, Tracker

A4, B4, A6 = parse_all(["icmp:192.0.2.1", "icmp:192.0.2.2", "icmp:2001:db8::1"])
V4 = {A4: True, B4: True, A6: False}  # IPv6 blackholed, IPv4 answers
ALL = (A4, B4, A6)


def _events(s: Sim) -> list[tuple[str, str, str]]:
    return [(e.family, e.old, e.new) for e in s.events]


def test_sides_come_alive_and_the_uplink_with_the_first() -> None:
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    assert tr.tick(0.1) == [] and tr.snapshot("isp1").reason == "not probed yet"
    s.round(True)
    assert _events(s) == [("ipv4", UNKNOWN, ALIVE), (BOTH, UNKNOWN, ALIVE),
                          ("ipv6", UNKNOWN, ALIVE)]
    assert tr.family_states("isp1") == {"ipv4": ALIVE, "ipv6": ALIVE}
    snap = tr.snapshot("isp1")
    assert [(f.family, f.state) for f in snap.families] == [("ipv4", ALIVE), ("ipv6", ALIVE)]


def test_ipv6_dies_alone_and_comes_back() -> None:
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.events.clear()
    s.rounds(8, V4)
    assert tr.family_states("isp1")["ipv6"] == ALIVE  # one IPv6 target: 9 losses needed
    s.round(V4)
    assert _events(s) == [("ipv6", ALIVE, DEAD)]
    assert s.events[0].reason == "the target lost 9 of its last 9 probes"
    assert s.state() == ALIVE and tr.snapshot("isp1").reason == "ipv4 alive (ipv6 dead)"
    s.events.clear()
    s.rounds(30, True)
    assert _events(s) == [("ipv6", DEAD, ALIVE)]
    assert s.state() == ALIVE


def test_every_family_dead_makes_the_uplink_dead() -> None:
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.rounds(9, V4)
    s.events.clear()
    s.rounds(5, False)  # two IPv4 targets: k = 5
    assert _events(s) == [("ipv4", ALIVE, DEAD), (BOTH, ALIVE, DEAD)]
    assert s.events[-1].reason == "every family dead"
    s.events.clear()
    s.rounds(12, V4)  # IPv4 back: the uplink is alive, IPv6 still dead
    assert _events(s) == [("ipv4", DEAD, ALIVE), (BOTH, DEAD, ALIVE)]


def test_a_blackhole_of_both_uses_the_rule_over_all_targets() -> None:
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.events.clear()
    s.rounds(2, False)
    assert s.state() == ALIVE
    s.round(False)  # 3 targets together: k = 3, as with one family
    assert _events(s) == [("ipv4", ALIVE, DEAD), ("ipv6", ALIVE, DEAD), (BOTH, ALIVE, DEAD)]
    assert s.events[-1].reason == "all 3 targets lost 3 of their last 3 probes"


def test_the_rule_over_all_targets_waits_while_a_family_is_dead() -> None:
    """An IPv6 that never answers must not lower the evidence IPv4 needs (k=5, not 3)."""
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.rounds(9, V4)
    assert tr.family_states("isp1") == {"ipv4": ALIVE, "ipv6": DEAD}
    s.rounds(7, V4)  # IPv6 dead for longer than RECENT
    s.rounds(4, False)
    assert tr.family_states("isp1")["ipv4"] == ALIVE
    s.round(False)
    assert s.state() == DEAD


def test_a_side_dead_recently_lets_the_rule_over_all_targets_take_the_rest() -> None:
    """A blackhole of the whole uplink where the lone IPv6 target's burst made IPv6 dead
    first: within RECENT seconds IPv4 follows on the rule over all targets (k=3), not 5."""
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.rounds(9, V4)
    assert tr.family_states("isp1") == {"ipv4": ALIVE, "ipv6": DEAD}
    s.events.clear()
    s.rounds(2, False)
    assert tr.family_states("isp1")["ipv4"] == ALIVE
    s.round(False)
    assert _events(s) == [("ipv4", ALIVE, DEAD), (BOTH, ALIVE, DEAD)]
    assert s.events[0].reason == "all 3 targets lost 3 of their last 3 probes"
    assert s.now - tr.snapshot("isp1").families[1].since <= RECENT + 0.3


def test_one_family_keeps_the_old_events() -> None:
    tr = Tracker()
    s = Sim(tr, (A4, B4))  # type: ignore[arg-type]
    s.round(True)
    s.rounds(5, False)
    assert _events(s) == [(BOTH, UNKNOWN, ALIVE), (BOTH, ALIVE, DEAD)]
    assert tr.family_states("isp1") == {BOTH: DEAD} and tr.snapshot("isp1").families == ()


def test_suspect_follows_a_side() -> None:
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.rounds(2, V4)
    assert not tr.suspect("isp1")
    s.round(V4)  # the IPv6 side lost 3 in a row while IPv4 answers
    assert tr.suspect("isp1")
    s.rounds(6, V4)
    assert tr.family_states("isp1")["ipv6"] == DEAD and not tr.suspect("isp1")


class FamilyProber(FakeProber):
    """FakeProber whose line loses every probe of one family (`dead_family` 4 or 6)."""

    dead_family: int | None = None

    def send(self, key, via, target: Target, timeout: float) -> None:  # type: ignore[override]
        if target.family != self.dead_family:
            return super().send(key, via, target, timeout)
        self.packets += target.cost
        self._n += 1
        done = self.now + timeout
        heapq.heappush(self._q, (done, self._n, Result(key, target, self.now, None, done)))
        return None


def _detect(specs: list[str], family: int, runs: int, rate: float = 10.0) -> list[float]:
    targets = parse_all(specs)
    times = []
    rng = random.Random(4)
    for seed in range(runs):
        p = FamilyProber(seed)
        m = Monitor(p, Tracker(Params(rate=rate)), rng=random.Random(seed))  # type: ignore[arg-type]
        m.add("isp1", Via(device="ppp0"), targets)
        run_until(m, p, 3.0)
        t0 = 3.0 + rng.random()
        run_until(m, p, t0)
        p.dead_family = family
        ev: list = []
        while not ev:
            ev = [e for e in m.step(t0 + 5) if e.new == DEAD]
            assert p.now < t0 + 4.9
        assert [(e.family, e.new) for e in ev] == [(f"ipv{family}", DEAD)]
        times.append(ev[0].at - t0)
        run_until(m, p, p.now + 5)
        assert m.tracker.state("isp1") == ALIVE
    return sorted(times)


def test_family_only_death_meets_the_goal_at_the_default_budget() -> None:
    """A family dying alone: dead in <= 1 s p50, <= 2 s p99 at rate 10 (the doubtful side gets
    the other side's probes, then the burst; docs/health.md has the figures)."""
    v4 = ["icmp:192.0.2.1", "icmp:192.0.2.2", "icmp:192.0.2.3"]
    v6 = ["icmp:2001:db8::1", "icmp:2001:db8::2", "icmp:2001:db8::3"]
    for specs, family in ((v4[:2] + v6[:1], 6), (v4[:2] + v6[:1], 4), (v4[:1] + v6[:1], 6),
                          (v4[:2] + v6[:2], 6), (v4 + v6, 4)):
        times = _detect(specs, family, 40)
        assert statistics.median(times) <= 1.0 and max(times) <= 2.0, (specs, family, times)


def test_a_doubtful_side_gets_the_other_sides_probes_then_the_burst() -> None:
    """Equal shares per side (the lone IPv6 target as often as both IPv4 targets together);
    after its first loss, the IPv4 lane's probes go to the IPv6 target (no extra packet);
    after its second, its lane bursts; the IPv4 side is not probed meanwhile."""
    p = FamilyProber(3)
    m = Monitor(p, Tracker(), rng=random.Random(3))  # type: ignore[arg-type]
    m.add("isp1", Via(device="ppp0"), ALL)
    sent: list[tuple[float, Target]] = []
    send = p.send
    p.send = lambda key, via, target, timeout: (sent.append((p.now, target)),  # type: ignore
                                                 send(key, via, target, timeout))[1]
    run_until(m, p, 4.0)
    assert sorted(sum(1 for _, t in sent if t == x) for x in ALL) == [10, 10, 20]  # 10/s
    assert [sum(1 for _, t in sent if t == x) for x in (A4, B4)] == [10, 10]
    p.dead_family, sent[:] = 6, []
    streaks: list[int] = []
    while m.tracker.family_states("isp1")["ipv6"] != DEAD:
        m.step(p.now + 1)
        streaks.append(m.tracker.streaks("isp1")["ipv4"] if
                       m.tracker.family_states("isp1")["ipv6"] != DEAD else 0)
    first = next(at for at, t in sent if t == A6) + 0.2  # its loss is known at the timeout
    after = [t for at, t in sent if at > first + 0.01]
    assert after and all(t == A6 for t in after), after
    assert sent[-1][0] - first < 0.6 and max(streaks) == 0


# -- the daemon's side: figures, dead set, hooks, status, metrics ---------------------------------

def _figures() -> dict:
    """A snapshot of an uplink alive in IPv4 whose IPv6 side is dead (watch.health.snapshot)."""
    from connpin.watch import health

    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.rounds(9, V4)
    return health.snapshot(tr.snapshot("isp1"), "wan1", lambda: s.now)


def test_snapshot_and_dead_set_carry_the_family() -> None:
    from connpin import choice

    snap = _figures()
    assert snap["state"] == ALIVE and snap["reason"] == "ipv4 alive (ipv6 dead)"
    assert {f: v["state"] for f, v in snap["families"].items()} == {"ipv4": ALIVE, "ipv6": DEAD}
    assert choice.dead_of({"isp1": snap}) == {"isp1/ipv6"}
    assert choice.dead_of({"isp1": {**snap, "state": DEAD}}) == {"isp1"}
    one = {"state": DEAD, "targets": []}  # checked in one family: no "families"
    assert choice.dead_of({"a": one, "b": {"state": ALIVE}}) == {"a"}
    assert choice.is_dead(frozenset({"isp1/ipv6"}), "isp1", 6)
    assert not choice.is_dead(frozenset({"isp1/ipv6"}), "isp1", 4)


def test_hooks_and_log_line_name_the_family(tmp_path) -> None:  # noqa: ANN001
    from connpin.health.tracker import Transition
    from connpin.watch import health

    t = Transition("isp1", ALIVE, DEAD, 1.0, "the target lost 9 of its last 9 probes", "ipv6")
    assert health.transition_line(t) == \
        "health: isp1 ipv6 alive -> dead (the target lost 9 of its last 9 probes)"
    out = tmp_path / "out"
    hook = tmp_path / "10-hook"
    hook.write_text(f'#!/bin/sh\necho "$CONNPIN_UPLINK $CONNPIN_FAMILY $CONNPIN_NEW" >> {out}\n')
    hook.chmod(0o755)
    hooks = health.Hooks(print, str(tmp_path))
    hooks.run(t)
    hooks.run(Transition("isp1", ALIVE, DEAD, 2.0, "every family dead"))
    hooks.close()
    assert out.read_text().splitlines() == ["isp1 ipv6 dead", "isp1 both dead"]


def test_status_shows_a_family_dead_and_keeps_the_other_choosing() -> None:
    from test_status_render import NOW, load, machine

    from connpin.render import status, status_text

    config = load("long-names")
    fibre = config.uplinks[0].name
    m = machine(config, down=set(), dead={f"{fibre}/ipv6"})
    fig = m["watch"]["health"][fibre]
    fig["families"] = {"ipv4": {"state": ALIVE, "at": NOW - 754, "reason": "first answer"},
                       "ipv6": {"state": DEAD, "at": NOW - 60,
                                "reason": "the target lost 9 of its last 9 probes"}}
    fig["reason"] = "ipv4 alive (ipv6 dead)"
    rep = status.build(config, m["result"], m["pinned"], watch=m["watch"], since=m["since"],
                       counters=m["counters"], main=m["main"], now=NOW)
    row = rep["uplinks"][0]
    assert row["state"] == "up" and row["health"]["families"]["ipv6"]["state"] == DEAD
    assert row["health"]["families"]["ipv6"]["since"] == status.iso(NOW - 60)
    default = {c["family"]: [s["uplink"] for s in c["uplinks"]]
               for c in rep["new_connections"]["classes"] if c["class"] == "default"}
    assert fibre in default[4] and fibre not in default.get(6, [])
    text = status_text.text(rep)
    assert "alive/dead6" in text and "ipv6 dead: the target lost 9 of its last 9" in text
    assert "    ipv6: dead, since" in status_text.text(rep, True)
    code, line = status_text.nagios(rep)
    assert code == status_text.WARNING and f"{fibre} ipv6 dead" in line, line


def test_metrics_family_gauge_only_for_uplinks_checked_in_both() -> None:
    from test_metrics_collector import scrape

    from connpin.metrics import collector

    m = collector.Metrics("connpin", ["isp1", "b"], reader=dict)
    m.health({"isp1": _figures(), "b": {"state": ALIVE, "targets": []}})
    got = scrape(m)
    assert got["connpin_uplink_family_alive"] == {
        (("family", "ipv4"), ("uplink", "isp1")): 1.0,
        (("family", "ipv6"), ("uplink", "isp1")): 0.0}
    assert got["connpin_uplink_alive"][(("uplink", "isp1"),)] == 1.0
    m.health({"b": {"state": ALIVE, "targets": []}})
    assert "connpin_uplink_family_alive" not in scrape(m)


def test_no_false_alarm_per_family_on_a_lossy_line() -> None:
    """10 simulated minutes at 19% probe loss (10% each way): no side dies, budget kept (the
    probes lent to a doubtful side cost nothing; its burst a little)."""
    for seed, targets in ((9, ALL), (10, ALL), (11, parse_all(["icmp:192.0.2.1",
                                                               "icmp:2001:db8::1"]))):
        p = FakeProber(seed, loss=0.19)
        m = Monitor(p, Tracker(), rng=random.Random(seed))  # type: ignore[arg-type]
        m.add("isp1", Via(device="ppp0"), targets)
        ev = run_until(m, p, 600.0)
        assert [e.new for e in ev] == [ALIVE] * 3, ev
        assert p.packets / 600 <= 10.3  # ~10.15


def test_reset_forgets_both_sides() -> None:
    tr = Tracker()
    s = Sim(tr, ALL)  # type: ignore[arg-type]
    s.round(True)
    s.rounds(9, V4)
    ev = tr.reset("isp1", s.now, "ppp0 came back")
    assert [(e.family, e.old, e.new) for e in ev] == [(BOTH, ALIVE, UNKNOWN)]
    assert tr.family_states("isp1") == {"ipv4": UNKNOWN, "ipv6": UNKNOWN}
    tr.tick(s.now + 0.1)
    assert tr.snapshot("isp1").reason == "ppp0 came back"
