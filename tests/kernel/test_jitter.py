"""100 ms of jitter on the real kernel, with or without netem: round trips through a jittered
ISP (TCP connects and ICMP echoes) spread over 0-100 ms with nothing lost, the NFQUEUE delay
line fails open when it dies and leaves nothing behind when cleared, and a 30 s soak of 10%
loss each way plus 100 ms of jitter on two uplinks gives connpin's health monitor no dead
transition (issue 14; the 10-minute soak against mwan3's and dpinger's rules is
bench/health.py).

`faults.jitter(how="auto")` uses netem where the kernel has it, else the delay line
(`connpin.lab.delay`); the NFQUEUE tests force the delay line so they run on every kernel.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest

from connpin.health.probe import Prober, Via
from connpin.health.targets import parse, parse_all
from connpin.health.tracker import ALIVE, Params, Tracker
from connpin.kernel import netns
from connpin.lab import Lab, faults
from connpin.lab.monitoring import Recorder

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

EXTRA = ("203.0.113.11", "203.0.113.12")  # more internet addresses, on the net host's lo
TARGETS = parse_all([f"icmp:{Lab.SERVER}", *(f"icmp:{a}" for a in EXTRA)])
#: a released packet may be late by the delay line's (or netem's) scheduling on a busy machine
SLACK_MS = 150


def connect_ms(lab: Lab, n: int) -> list[float]:
    """n TCP connects from the router to the internet host, one after the other: each one's
    round trip (SYN out, SYN-ACK back) in ms. A lost SYN would show as >= 1 s."""
    out = []
    for _ in range(n):
        with netns.socket_in(lab.ns("router")) as s:
            s.settimeout(5)
            t0 = time.monotonic()
            s.connect((lab.SERVER, 7))
            out.append((time.monotonic() - t0) * 1000)
    return out


def echo_ms(lab: Lab, n: int) -> list[float | None]:
    """n ICMP echoes through uplink 1 (connpin's prober), one after the other, in ms."""
    out: list[float | None] = []
    with Prober(lab.ns("router")) as prober:
        via = Via(device=lab.iface(1), source=lab.address(1))
        for _ in range(n):
            prober.send(1, via, parse(f"icmp:{lab.SERVER}"), 2.0)
            deadline = time.monotonic() + 3
            got = []
            while prober.pending and time.monotonic() < deadline:
                got += prober.poll(deadline)
            out += [None if r.rtt is None else r.rtt * 1000 for r in got]
    return out


def spread_of(ms: list[float], what: str) -> None:
    ms = sorted(ms)
    med = statistics.median(ms)
    print(f"{what}: min {ms[0]:.1f} median {med:.1f} max {ms[-1]:.1f} ms over {len(ms)}")
    # uniform 0..100 ms: with 60 samples min < 25 and max > 75 fail by chance with p ~ 1e-7
    assert ms[0] < 25 and ms[-1] > 75, ms
    assert 25 < med < 75 + SLACK_MS / 3, ms
    assert ms[-1] < 100 + SLACK_MS, ms  # nothing lost and retransmitted (>= 1 s)


@pytest.mark.parametrize("how", ["auto", "nfqueue"])
def test_round_trips_through_a_jittered_isp_spread_over_0_to_100_ms(how: str) -> None:
    with Lab(("ppp",)) as lab:
        lab.uplink_up(1)
        clean = connect_ms(lab, 10)
        netem = how == "auto" and faults.netem_missing(lab, 1) is None
        made = faults.jitter(lab, 1, 100, how=how)
        assert made == "netem" if netem else made.startswith("nfqueue via "), made
        spread_of(connect_ms(lab, 60), f"{made}: TCP connect")
        echoes = echo_ms(lab, 60)
        assert None not in echoes, echoes
        spread_of([e for e in echoes if e is not None], f"{made}: ICMP echo")
        words = faults.clear_jitter(lab, 1)
        print(words)
        assert faults.jittered(lab, 1) is None
        assert statistics.median(connect_ms(lab, 10)) < statistics.median(clean) + 20


def test_the_delay_line_fails_open_when_it_dies_and_clear_leaves_nothing() -> None:
    with Lab(("ppp",)) as lab:
        lab.uplink_up(1)
        made = faults.jitter(lab, 1, 100, how="nfqueue", delay_ms=200)
        proc = faults.delay_line(lab, 1)
        assert proc is not None
        assert min(connect_ms(lab, 3)) >= 190  # delayed: the queue rule and its reader work
        proc.kill()
        proc.wait(5)
        # bypass: with no reader on the queue, packets pass undelayed instead of being dropped
        assert max(connect_ms(lab, 5)) < 150
        faults.clear(lab, 1)
        rules = lab.exec("isp1", ["nft", "list", "ruleset"]).stdout
        assert "queue" not in rules and faults.jittered(lab, 1) is None, rules
        print(f"{made}: fails open, clear removes the rule")


def test_no_false_failover_at_10_percent_loss_and_100_ms_jitter() -> None:
    seconds = 30
    with Lab(("ppp", "eth")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        for a in EXTRA:
            lab.exec("net", ["ip", "addr", "add", f"{a}/32", "dev", "lo"])
        with Recorder(lab.ns("router"), Tracker(Params())) as rec:
            for k in lab.ks:
                rec.monitor.add(k, Via(device=lab.iface(k), source=lab.address(k)), TARGETS)
            rec.start()
            for k in lab.ks:
                assert rec.wait(k, ALIVE, time.monotonic() + 10) is not None, rec.events
            made = set()
            for k in lab.ks:
                faults.loss(lab, k, 10)
                made.add(faults.jitter(lab, k, 100))
            p0, t0 = rec.prober.packets, time.monotonic()
            end = t0 + seconds
            with rec.cond:
                while time.monotonic() < end and len(rec.events) == 2:
                    rec.cond.wait(end - time.monotonic())
            assert [t.new for t in rec.events] == [ALIVE, ALIVE], rec.events
            rate = (rec.prober.packets - p0) / (time.monotonic() - t0) / len(lab.ks)
            for k in lab.ks:
                assert faults.dropped(lab, k) > 0
                snap = rec.monitor.tracker.snapshot(k).targets
                assert all(t.loss is not None and 0.05 < t.loss < 0.4 for t in snap), snap
                # the jitter is seen: smoothed RTTs around its 50 ms mean, and a wide rttvar
                assert all(t.srtt and 0.02 < t.srtt < 0.12 for t in snap), snap
                assert all(t.rttvar and t.rttvar > 0.01 for t in snap), snap
            words = [faults.clear_jitter(lab, k) for k in lab.ks]
        print(f"{made}: 0 dead transitions in {seconds} s, {rate:.2f} packets/s per uplink; "
              f"{words}")
        assert rate <= Params().rate * 1.1, rate
