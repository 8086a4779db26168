"""IPv6 health checks on the real kernel, in a dual-stack lab (issue 14): `check` targets with
IPv6 addresses (`icmp:2001:db8::1`, `tcp:[2001:db8::1]:443`) are probed through their uplink
with the uplink's own IPv6 source (each lab ISP drops IPv6 packets from its customer whose
source is outside the prefix it delegated: an answer proves the source) by mark alone or by
device alone, whatever main's IPv6 default says; and in `connpin watch` an uplink whose IPv6
targets go dead leaves the IPv6 selection: new IPv6 connections move to the next tier and come
back after recovery.

The daemon's probes carry the uplink's mark and are bound to its interface; their IPv6 source
is the kernel's choice for that interface (RFC 6724 rule 5: an address of the outgoing
interface), which is the uplink's own address. A `check` list of one family decides for the
whole uplink: here the dead uplink leaves both families' selection; with targets of both
families each family is judged on its own (tests/kernel/test_family_health.py).
"""

from __future__ import annotations

from collections import Counter

from helpers import KERNEL, wait_for
from test_health import probe_once
from test_health_watch import wait_health
from test_select import uplinks_of
from test_watch import watching

from connpin import alloc
from connpin.health.probe import Prober, Via
from connpin.lab import Lab, faults
from connpin.model import DEFAULT_MARK_MASK

pytestmark = KERNEL

SPECS6 = [f"icmp:{Lab.SERVER6}", f"tcp:[{Lab.SERVER6}]:7", f"tcp:[{Lab.SERVER6}]:443"]


def mark(k: int) -> int:
    return alloc.deposit(k, DEFAULT_MARK_MASK)


def config(lab: Lab, keys: dict[int, str]) -> str:
    text = lab.default_config(masquerade=True)
    for k in lab.ks:
        text = text.replace(f'name = "isp{k}"\n',
                            f'name = "isp{k}"\nmark = {mark(k):#x}\n{keys.get(k, "")}\n')
    return text


def test_ipv6_probes_by_mark_or_device_leave_with_the_uplinks_own_source() -> None:
    with Lab(("ppp", "eth"), ipv6=True) as lab, Prober(lab.ns("router")) as prober:
        for k in lab.ks:
            lab.uplink_up(k)
        lab.write_config(config(lab, {}))
        lab.connpin("apply")
        faults.blackhole(lab, 1)  # main's IPv6 default (isp1, metric 10) is dead beyond its peer
        for how in (Via(mark=mark(2)), Via(device=lab.iface(2)),
                    Via(device=lab.iface(2), mark=mark(2))):
            got = probe_once(prober, 2, how, SPECS6)
            assert all(r.rtt is not None for r in got.values()), (how, got)
        assert lab.spoofed6(2) == 0, "the sources were isp2's own prefix"
        lost = probe_once(prober, 1, Via(), SPECS6[:1])  # unmarked, unbound: main's default
        assert all(r.rtt is None for r in lost.values()), lost
        faults.clear(lab, 1)
        faults.blackhole(lab, 2)
        got = probe_once(prober, 1, Via(device=lab.iface(1), mark=mark(1)), SPECS6)
        assert all(r.rtt is not None for r in got.values()), got
        assert lab.spoofed6(1) == 0


def test_watch_ipv6_targets_dead_move_new_ipv6_connections_and_back() -> None:
    checks = f'check = ["icmp:{Lab.SERVER6}", "tcp:[{Lab.SERVER6}]:443"]\nweight = 1'
    with Lab(("ppp", "eth"), ipv6=True) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        lab.write_config(config(lab, {k: f"priority = {k}\n{checks}" for k in lab.ks}))
        with watching(lab) as daemon:
            wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 15)
            assert uplinks_of(lab, 10, dst=lab.SERVER6) == Counter({1: 10})
            faults.blackhole(lab, 1)
            got = wait_health(lab, {"isp1": "dead", "isp2": "alive"}, daemon, 15)
            assert [t["target"] for t in got["isp1"]["targets"]] == [
                f"icmp:{Lab.SERVER6}", f"tcp:[{Lab.SERVER6}]:443"]
            assert all(t["rtt_ms"] is not None for t in got["isp2"]["targets"])
            wait_for(lambda: lab.uplink_of(lab.connect(dst=lab.SERVER6, timeout=0.5)) == 2, 10,
                     "a new IPv6 connection by isp2 (the daemon's converge after the verdict)")
            assert uplinks_of(lab, 10, dst=lab.SERVER6) == Counter({2: 10})
            assert lab.spoofed6(1) == 0 and lab.spoofed6(2) == 0
            faults.clear(lab, 1)
            wait_health(lab, {"isp1": "alive"}, daemon, 15)
            wait_for(lambda: lab.uplink_of(lab.connect(dst=lab.SERVER6, timeout=5)) == 1, 10,
                     "new IPv6 connections back on isp1")
            assert uplinks_of(lab, 10, dst=lab.SERVER6) == Counter({1: 10})
