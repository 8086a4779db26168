"""An ISP whose gateway still answers ARP but nothing else (issue 14, Proof: "one that stops
answering after the router's gateway but still answers ARP"), on an Ethernet-like uplink: the
link is up, the gateway's MAC stays resolved, and yet no IP packet gets an answer, not even a
ping of the gateway. `connpin watch` declares the uplink dead and new connections move to the
next tier; once the ISP answers again they come back. Deadlines, not sleeps.
"""

from __future__ import annotations

import time

from helpers import KERNEL, wait_for
from pyroute2 import IPRoute
from test_health_watch import tiered_watch, until_new_by, wait_health

from connpin.health.probe import Prober, Via
from connpin.health.targets import parse
from connpin.kernel import netns
from connpin.lab import Lab, faults

pytestmark = KERNEL

NUD_RESOLVED = 0x02 | 0x04 | 0x08 | 0x10  # REACHABLE, STALE, DELAY, PROBE: the MAC is known
MOVE_DEADLINE = 15.0  # generous on a busy machine; the goal (<= 2 s p99) is bench/health.py's


def neighbour(lab: Lab, ip: str) -> tuple[int, str | None]:
    """The router's neighbour entry for ip: (NUD state, MAC) or (0, None)."""
    with netns.inside(lab.ns("router")):
        ipr = IPRoute()
    try:
        for n in ipr.get_neighbours(dst=ip):
            return n["state"], n.get_attr("NDA_LLADDR")
        return 0, None
    finally:
        ipr.close()


def ping_gateway(lab: Lab) -> bool:
    """One ICMP echo from the router to ISP 1's gateway, out of the uplink's interface."""
    with Prober(lab.ns("router")) as prober:
        prober.send(1, Via(device=lab.iface(1), source=lab.address(1)),
                    parse(f"icmp:{lab.gateway(1)}"), 1.0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for r in prober.poll(deadline):
                return r.rtt is not None
    raise AssertionError("the probe never finished")


def test_a_silent_gateway_still_answers_arp_but_no_ip() -> None:
    with Lab(("eth",), lab_masquerade=True) as lab:
        lab.uplink_up(1)
        assert ping_gateway(lab), "control: the gateway answers pings without the fault"
        assert lab.uplink_of(lab.connect(timeout=5.0)) == 1, "control: the internet answers"
        faults.silent_gateway(lab, 1)
        lab.exec("router", ["ip", "neigh", "flush", "dev", lab.iface(1)])
        assert neighbour(lab, lab.gateway(1))[1] is None
        assert not ping_gateway(lab), "the gateway must not answer a ping"
        wait_for(lambda: neighbour(lab, lab.gateway(1))[0] & NUD_RESOLVED, 5,
                 "the gateway's MAC resolved by ARP")
        assert neighbour(lab, lab.gateway(1))[1], "ARP answered: the MAC is known"
        assert faults.dropped(lab, 1) >= 1
        assert lab.connect(timeout=1.0) is None, "nothing beyond the gateway answers either"
        faults.clear(lab, 1)
        assert lab.uplink_of(lab.connect(timeout=5.0)) == 1


def test_watch_moves_new_connections_off_a_gateway_that_answers_only_arp() -> None:
    with Lab(("eth", "ppp")) as lab, tiered_watch(lab) as daemon:

        started = time.monotonic()
        faults.silent_gateway(lab, 1)
        moved = until_new_by(lab, 2, started, MOVE_DEADLINE, daemon)
        print(f"\nsilent gateway -> first new connection by isp2 {moved:.2f} s")
        got = wait_health(lab, {"isp1": "dead", "isp2": "alive"}, daemon, 10)
        assert all(t["loss"] > 0 for t in got["isp1"]["targets"])
        assert {lab.uplink_of(lab.connect(timeout=5.0)) for _ in range(5)} == {2}
        state, mac = neighbour(lab, lab.gateway(1))
        assert state & NUD_RESOLVED and mac, "the gateway's MAC stayed resolved (ARP)"

        faults.clear(lab, 1)
        wait_health(lab, {"isp1": "alive"}, daemon, 15)
        until_new_by(lab, 1, time.monotonic(), 10, daemon)
