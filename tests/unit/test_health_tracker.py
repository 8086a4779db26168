"""The health tracker's rules, driven by a fake clock (pure): unknown at start, the quorum, the
all-targets requirement, the stable period of recovery, flap damping, RTT/loss figures."""

from __future__ import annotations

import random

import pytest

from connpin.health.tracker import ALIVE, DEAD, UNKNOWN, Params, Tracker, Transition

A, B, C = "a", "b", "c"


class Sim:
    """Rounds of probes on one uplink with a fake clock: every target probed each `interval`;
    a lost probe is known at its timeout."""

    def __init__(self, tracker: Tracker, targets: tuple[str, ...] = (A, B, C),
                 interval: float = 0.3, uplink: str = "isp1"):
        self.t, self.now, self.targets, self.interval, self.up = tracker, 0.0, targets, interval, \
            uplink
        self.events: list[Transition] = []
        tracker.add(uplink, targets, 0.0)

    def round(self, answers: dict[str, bool] | bool, rtt: float = 0.01) -> list[Transition]:
        """One round: answers per target (True: answered after rtt), then advance the clock."""
        if isinstance(answers, bool):
            answers = dict.fromkeys(self.targets, answers)
        sent = self.now
        done: list[tuple[float, str, float | None]] = []
        for tg in self.targets:
            if answers.get(tg, False):
                done.append((sent + rtt, tg, rtt))
            else:
                done.append((sent + self.t.timeout(self.up, tg), tg, None))
        out: list[Transition] = []
        for at, tg, r in sorted(done, key=lambda d: d[0]):
            out += self.t.record(self.up, tg, sent, r, at)
        self.now += self.interval
        out += self.t.tick(self.now)
        self.events += out
        return out

    def rounds(self, n: int, answers: dict[str, bool] | bool, rtt: float = 0.01) -> None:
        for _ in range(n):
            self.round(answers, rtt)

    def state(self) -> str:
        return self.t.state(self.up)


def test_unknown_at_start_then_alive_on_first_answer() -> None:
    tr = Tracker()
    s = Sim(tr)
    assert s.state() == UNKNOWN
    assert tr.snapshot("isp1").reason == "not probed yet"
    ev = s.round({A: False, B: True, C: False})
    assert [(e.old, e.new, e.reason) for e in ev] == [(UNKNOWN, ALIVE, "first answer")]


def test_unknown_to_dead_without_any_answer() -> None:
    s = Sim(Tracker())
    s.rounds(2, False)
    assert s.state() == UNKNOWN  # k = ceil(9/3) = 3 rounds are needed
    ev = s.round(False)
    assert [(e.old, e.new) for e in ev] == [(UNKNOWN, DEAD)]
    assert ev[0].reason == "all 3 targets lost 3 of their last 3 probes"


def test_default_quorum_scales_with_targets() -> None:
    p = Params()
    assert [p.quorum(m) for m in (1, 2, 3, 4, 9, 20)] == [(9, 9), (5, 5), (3, 3), (3, 3),
                                                          (2, 2), (2, 2)]
    assert Params(down_k=2, down_n=5).quorum(3) == (2, 5)


def test_interval_respects_the_packet_budget() -> None:
    p = Params()
    assert p.interval(3) == pytest.approx(0.3)
    assert p.interval(1) == pytest.approx(0.1)
    assert p.interval(5) == pytest.approx(0.5)  # 2 icmp + 1 tcp (3 packets)
    assert Params(rate=2).interval(1) == pytest.approx(0.5)
    assert Params(min_interval=1).interval(1) == 1
    tr = Tracker()
    tr.add("u", (A, B), 0)
    assert tr.interval("u") == pytest.approx(0.2)
    assert tr.interval("u", [1, 3]) == pytest.approx(0.4)


def test_dead_after_quorum_of_rounds_of_all_targets() -> None:
    s = Sim(Tracker())
    s.rounds(5, True)
    assert s.state() == ALIVE
    s.rounds(2, False)
    assert s.state() == ALIVE
    ev = s.round(False)
    assert [(e.old, e.new) for e in ev] == [(ALIVE, DEAD)]


def test_one_target_dead_never_kills_the_uplink() -> None:
    s = Sim(Tracker())
    s.rounds(3, True)
    s.rounds(200, {A: False, B: True, C: True})
    s.rounds(200, {A: False, B: False, C: True})
    assert s.state() == ALIVE
    assert [e.new for e in s.events] == [ALIVE]


def test_all_targets_must_fail_but_not_in_the_same_rounds() -> None:
    s = Sim(Tracker(Params(down_k=2, down_n=4)))
    s.rounds(4, True)
    # each target loses 2 of its last 4, in different rounds: every target has its quorum
    s.round({A: False, B: True, C: True})
    s.round({A: False, B: False, C: True})
    s.round({A: True, B: False, C: False})
    assert s.state() == ALIVE
    s.round({A: True, B: True, C: False})
    assert s.state() == DEAD


def test_quorum_k_of_n_tolerates_isolated_answers() -> None:
    # 3 of the last 4 lost per target: a single answer leaking through does not hold it up
    s = Sim(Tracker(Params(down_k=3, down_n=4)), targets=(A,), interval=0.1)
    s.rounds(5, True)
    for answers in (False, True, False, False):
        s.round(answers)
    assert s.state() == DEAD


def test_consecutive_default_needs_an_unbroken_run() -> None:
    s = Sim(Tracker(), targets=(A,), interval=0.1)  # k = n = 9
    s.rounds(10, True)
    for _ in range(5):
        s.rounds(8, False)
        s.round(True)
    assert s.state() == ALIVE
    s.rounds(9, False)
    assert s.state() == DEAD


def test_recovery_needs_a_stable_period() -> None:
    s = Sim(Tracker())  # up_after 3 s
    s.rounds(3, True)
    s.rounds(5, False)
    assert s.state() == DEAD
    dead_at = s.t.snapshot("isp1").since
    s.round(True)
    first = s.now - s.interval
    while s.state() == DEAD:
        s.round(True)
        assert s.now < 10
    ev = s.events[-1]
    assert (ev.old, ev.new) == (DEAD, ALIVE) and ev.reason.startswith("answers for")
    assert 3.0 <= ev.at - first < 3.0 + s.interval + 0.05 and ev.at > dead_at


def test_total_silence_restarts_the_stable_period_but_partial_loss_does_not() -> None:
    s = Sim(Tracker())
    s.rounds(3, True)
    s.rounds(4, False)
    s.rounds(8, True)  # 2.4 s of answers
    s.round(False)  # a moment with every target's latest probe lost
    s.rounds(8, True)
    assert s.state() == DEAD  # restarted: only 2.4 s stable again
    s.rounds(3, {A: True, B: False, C: False})  # partial loss: still stable
    assert s.state() == ALIVE


def test_flapping_doubles_the_stable_period() -> None:
    tr = Tracker(Params(up_after=2.0, up_after_max=8.0, flap_window=60))
    s = Sim(tr)
    s.rounds(2, True)
    periods = []
    for _ in range(4):
        s.rounds(3, False)
        assert s.state() == DEAD
        needed = tr.snapshot("isp1").up_after
        start = s.now
        while s.state() == DEAD:
            s.round(True)
        periods.append((needed, s.now - start))
    assert [p for p, _ in periods] == [2.0, 4.0, 8.0, 8.0]  # the first death is not a flap
    for needed, took in periods:
        assert needed <= took <= needed + 0.7
    # alive for longer than flap_window: the next death starts from up_after again
    s.rounds(int(61 / 0.3), True)
    s.rounds(3, False)
    assert tr.snapshot("isp1").up_after == 2.0


def test_reset_makes_it_unknown_and_forgets() -> None:
    tr = Tracker()
    s = Sim(tr)
    s.rounds(3, True)
    ev = tr.reset("isp1", s.now, "link down")
    assert [(e.old, e.new, e.reason) for e in ev] == [(ALIVE, UNKNOWN, "link down")]
    snap = tr.snapshot("isp1")
    assert snap.state == UNKNOWN and all(t.probes == 0 for t in snap.targets)
    assert tr.reset("isp1", s.now) == []


def test_rtt_loss_and_timeout_figures() -> None:
    tr = Tracker(Params(loss_window=10))
    s = Sim(tr, targets=(A, B))
    assert tr.timeout("isp1", A) == Params().timeout_initial
    s.rounds(1, True, rtt=0.040)
    t = tr.snapshot("isp1").targets[0]
    assert (t.rtt, t.srtt, t.rttvar) == (0.040, 0.040, 0.020)
    assert tr.timeout("isp1", A) == pytest.approx(0.2)  # 0.04 + 4 * 0.02 = 0.12 -> min 0.2
    s.rounds(1, True, rtt=0.400)
    t = tr.snapshot("isp1").targets[0]
    assert t.rtt == 0.400
    assert t.srtt == pytest.approx(0.875 * 0.040 + 0.125 * 0.400)
    assert t.rttvar == pytest.approx(0.75 * 0.020 + 0.25 * 0.360)
    assert tr.timeout("isp1", A) == pytest.approx(t.srtt + 4 * t.rttvar)
    s.rounds(2, {A: False, B: True})
    snap = tr.snapshot("isp1")
    assert snap.targets[0].loss == pytest.approx(0.5) and snap.targets[1].loss == 0
    assert (snap.targets[0].probes, snap.targets[0].lost) == (4, 2)
    s.rounds(10, True, rtt=0.010)
    assert tr.snapshot("isp1").targets[0].loss == 0  # the window has moved on
    s.rounds(40, True, rtt=5.0)
    assert tr.timeout("isp1", A) == Params().timeout_max


def test_late_results_keep_send_order() -> None:
    tr = Tracker(Params(down_k=2, down_n=2))
    tr.add("u", (A,), 0)
    tr.record("u", A, 0.0, 0.01, 0.01)
    tr.record("u", A, 0.2, None, 0.5)
    assert tr.state("u") == ALIVE
    # the probe sent at 0.1 times out after the one sent at 0.2: still the 2 latest by send order
    ev = tr.record("u", A, 0.1, None, 0.6)
    assert [e.new for e in ev] == [DEAD]


def test_results_for_unknown_uplinks_or_targets_are_ignored() -> None:
    tr = Tracker()
    tr.add("u", (A,), 0)
    assert tr.record("v", A, 0, 0.1, 0.1) == [] and tr.record("u", "zz", 0, 0.1, 0.1) == []
    tr.remove("u")
    assert tr.uplinks == ()


@pytest.mark.parametrize("bad", [
    dict(rate=0), dict(min_interval=0), dict(down_probes=0), dict(down_k=2),
    dict(down_k=3, down_n=2), dict(up_after=100), dict(flap_window=-1),
    dict(timeout_min=0), dict(timeout_min=3), dict(loss_window=0),
])
def test_params_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError) as e:
        Tracker(Params(**bad))  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


def test_add_needs_targets() -> None:
    with pytest.raises(ValueError, match="no targets"):
        Tracker().add("u", (), 0)


def test_blackhole_detection_time_by_target_count() -> None:
    # the figures of the module docstring, with the fake clock: blackhole at a random phase
    rng = random.Random(1)
    for m, limit in ((1, 1.15), (2, 1.25), (3, 1.15), (4, 1.45)):
        targets = tuple(f"t{i}" for i in range(m))
        times = []
        for _ in range(50):
            tr = Tracker()
            s = Sim(tr, targets=targets, interval=Params().interval(m))
            s.rounds(20, True)
            t0 = s.now - rng.random() * s.interval  # the previous round was already answered
            while s.state() != DEAD:
                s.round(False)
            times.append(tr.snapshot("isp1").since - t0)
        assert max(times) <= limit, (m, max(times))


def test_no_false_alarm_at_10_percent_loss_each_way() -> None:
    rng = random.Random(7)
    for m in (1, 2, 3):
        targets = tuple(f"t{i}" for i in range(m))
        s = Sim(Tracker(), targets=targets, interval=Params().interval(m))
        for _ in range(int(600 / s.interval)):  # 10 minutes
            s.round({t: rng.random() < 0.9 and rng.random() < 0.9 for t in targets},
                    rtt=0.01 + rng.random() * 0.1)
        assert [e.new for e in s.events] == [ALIVE], m


def test_suspect_after_consecutive_losses_until_an_answer_or_dead() -> None:
    tr = Tracker()
    s = Sim(tr)
    s.rounds(2, True)
    assert not tr.suspect("isp1")
    tr.record("isp1", A, s.now, None, s.now + 0.2)
    tr.record("isp1", B, s.now, None, s.now + 0.2)
    assert not tr.suspect("isp1")
    tr.record("isp1", C, s.now, None, s.now + 0.2)
    assert tr.suspect("isp1")  # 3 in a row, any targets
    tr.record("isp1", A, s.now + 0.1, 0.01, s.now + 0.11)
    assert not tr.suspect("isp1")
    s.rounds(4, False)  # (A's answer above was sent after the next round's probes)
    assert tr.state("isp1") == DEAD and not tr.suspect("isp1")  # dead: normal pace again
