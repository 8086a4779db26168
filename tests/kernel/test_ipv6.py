"""IPv6 pinning on the real kernel: the core stories for IPv6 connections, NAT66 and NPTv6,
neighbour discovery never pinned, and remove restoring `ip -6 rule` / `ip -6 route` exactly.

The lab runs with ipv6=True: ISP k delegates 2001:db8:k::/48 and drops IPv6 packets from its
customer with any other source (nft counter `spoofed`), the LAN is fd00:77::/64 and the internet
host 2001:db8:ff::10. ISP 1 is the preferred uplink in both families.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from helpers import (
    KERNEL,
    STALL,
    assert_flowing,
    assert_status_ok,
    fails_without_pinning,
    foreign_iptables,
    rule_band,
    wait_for,
)

from connpin.lab import Lab
from connpin.model import RULE_BAND

pytestmark = KERNEL


@contextmanager
def pinned6(uplinks: tuple[str, ...] = ("ppp", "ppp"), nat6: str = "masquerade",
            before_apply=None) -> Iterator[Lab]:
    """An IPv6 lab with connpin's hooks installed (pppd's ipv6-up too) and the pinning applied."""
    with Lab(uplinks=uplinks, ipv6=True) as lab:
        lab.write_config(lab.default_config(masquerade=True, nat6=nat6))
        if before_apply:
            before_apply(lab)
        lab.connpin("hooks", "install", "--ppp", "--networkmanager", "--root", lab.hooks_root)
        lab.connpin("apply")
        yield lab


def story_outbound6(lab: Lab) -> None:
    """1: an IPv6 connection opened over the backup survives the preferred uplink's return."""
    lab.uplink_up(2)
    probe = lab.probe(dst=lab.SERVER6)
    try:
        assert probe.wait_rounds(3, 5.0)
        assert lab.uplink_of(probe.peer) == 2
        lab.uplink_up(1)
        assert lab.uplink_of(lab.connect(dst=lab.SERVER6)) == 1, "new ones take the preferred"
        assert_flowing(probe)
        assert lab.uplink_of(probe.peer) == 2
    finally:
        probe.close()


def story_inbound6(lab: Lab, forward_to: str | None = None) -> None:
    """2: IPv6 connections arriving on the backup (to the router, forwarded) answer over it."""
    lab.uplink_up(2)
    lab.uplink_up(1)
    forward_to = forward_to or lab.address6(2)
    assert lab.connect(src="net", dst=lab.address6(2), port=7) is not None, "to the router"
    assert lab.connect(src="net", dst=forward_to, port=8080) is not None, "port forward"
    probe = lab.probe(src="net", dst=forward_to, port=8080)
    try:
        assert_flowing(probe)
    finally:
        probe.close()


def test_v6_1_2_outbound_and_inbound_stories() -> None:
    """Pinned to the Ethernet backup (via its link-local gateway), failback to PPP (`dev`); the
    flap test covers a PPP backup, the ND test two Ethernet uplinks."""
    with pinned6(("ppp", "eth")) as lab:
        story_outbound6(lab)
        story_inbound6(lab)
        assert_status_ok(lab)
        status = lab.connpin("status").stdout
        assert status.count(" up  ") + status.count(" up\n") >= 2, status


def test_v6_3_lan_to_router_is_unaffected() -> None:
    with pinned6() as lab:
        lab.uplink_up(2)
        probe = lab.probe(dst=lab.LAN_GATEWAY6, port=7)
        try:
            assert probe.wait_rounds(3, 5.0)
            lab.uplink_up(1)
            lab.uplink_down(2)
            assert_flowing(probe)
            assert lab.connect(src="lan", dst=lab.LAN_GATEWAY6, port=7) is not None
            assert lab.connect(src="router", dst=lab.LAN_HOST6, port=8080) is not None
        finally:
            probe.close()


def test_v6_4_pinned_connection_survives_flaps_of_the_other_uplink() -> None:
    with pinned6() as lab:
        lab.uplink_up(2)
        probe = lab.probe(dst=lab.SERVER6)
        try:
            assert probe.wait_rounds(3, 5.0) and lab.uplink_of(probe.peer) == 2
            probe.reset_gap()
            for i in range(5):  # pppd recreates ppp0 each time (ip-up and ipv6-up hooks)
                lab.uplink_up(1, address=f"100.64.1.{10 + i}")
                lab.uplink_down(1)
            lab.uplink_up(1)
            assert lab.uplink_of(lab.connect(dst=lab.SERVER6)) == 1
            assert probe.max_gap < STALL, f"stalled {probe.max_gap:.2f}s during flaps"
            assert_flowing(probe)
        finally:
            probe.close()
        assert_status_ok(lab)
        band = rule_band(lab, 6)
        # base rules + the mark tree: one goto node over 2 uplinks, one lookup per live uplink
        assert len(band) == 4 + 1 + 2, band


def test_v6_5_new_connections_fail_over_when_the_pinned_uplink_goes_down() -> None:
    with pinned6(("ppp", "eth")) as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        assert lab.uplink_of(lab.connect(dst=lab.SERVER6)) == 1
        lab.uplink_down(1)
        assert lab.uplink_of(lab.connect(dst=lab.SERVER6)) == 2
        lab.uplink_up(1)
        assert lab.uplink_of(lab.connect(dst=lab.SERVER6)) == 1
        assert_status_ok(lab)


SNAT6 = """
table ip6 admin_snat {
    chain out {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "ppp0" snat to 2001:db8:1::2
        oifname "ppp1" snat to 2001:db8:2::2
    }
}
"""


def test_v6_5b_pinned_connection_fails_closed_when_its_uplink_is_gone() -> None:
    """SNATed IPv6 connections outlive their uplink: they must not leak out of another."""
    with pinned6(nat6="none", before_apply=lambda lab: lab.exec(
            "router", ["nft", "-f", "-"], input=SNAT6)) as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        probe = lab.probe(dst=lab.SERVER6)
        try:
            assert probe.wait_rounds(3, 5.0) and lab.uplink_of(probe.peer) == 1
            before = lab.spoofed6(2)
            lab.uplink_down(1)
            assert not probe.wait_rounds(2, 1.5)
            assert lab.spoofed6(2) == before, "packets with ISP 1's prefix reached ISP 2"
            # the test can tell: without connpin's IPv6 unreachable rule they do leak
            lab.exec("router", ["ip", "-6", "rule", "del", "priority", str(10000 + RULE_BAND - 2)])
            wait_for(lambda: lab.spoofed6(2) > before, 10.0,
                     "the leak the IPv6 unreachable rule prevented")
        finally:
            probe.close()


def test_v6_nptv6_outbound_pinned_and_inbound_on_the_backup() -> None:
    """NPTv6: the LAN's fd00:77::/64 leaves as each ISP's 2001:db8:k:77::/64, pinned."""
    with pinned6(("ppp", "eth"), nat6="nptv6") as lab:
        story_outbound6(lab)
        peer = lab.connect(dst=lab.SERVER6)
        assert peer == "2001:db8:1:77::2", peer  # the LAN host's mapped address, not masquerade
        story_inbound6(lab, forward_to="2001:db8:2:77::2")  # inbound NPTv6 on the backup
        if lab.backend == "nftables":
            nft = lab.exec("router", ["nft", "list", "table", "inet", "connpin"]).stdout
            assert "snat ip6 prefix to ip6 saddr map" in nft and "dnat ip6 prefix" in nft
        else:
            saved = lab.iptables_save(6)
            assert "-j NETMAP --to 2001:db8:2:77::/64" in saved
            assert "-j NETMAP --to fd00:77::/64" in saved


OBSERVER = """
table inet observe {
    counter nd { }
    counter nd_marked { }
    counter tcp_marked { }
    set nd_types {
        type icmpv6_type
        elements = { nd-router-solicit, nd-router-advert, nd-neighbor-solicit,
                     nd-neighbor-advert, nd-redirect }
    }
    chain pre {
        type filter hook prerouting priority 0; policy accept;
        icmpv6 type @nd_types counter name nd
        icmpv6 type @nd_types meta mark and 0xff000000 != 0 counter name nd_marked
        meta nfproto ipv6 meta l4proto tcp meta mark and 0xff000000 != 0 counter name tcp_marked
    }
    chain out {
        type filter hook output priority 0; policy accept;
        icmpv6 type @nd_types counter name nd
        icmpv6 type @nd_types meta mark and 0xff000000 != 0 counter name nd_marked
    }
    chain post {
        type filter hook postrouting priority 0; policy accept;
        icmpv6 type @nd_types meta mark and 0xff000000 != 0 counter name nd_marked
    }
}
"""


def _counter(lab: Lab, name: str) -> int:
    out = lab.exec("router", ["nft", "list", "counter", "inet", "observe", name]).stdout
    return int(re.search(r"packets (\d+)", out).group(1))


def test_v6_neighbour_discovery_is_never_pinned() -> None:
    """Pinned connections over Ethernet uplinks, neighbour caches flushed again and again: ND
    keeps working (the probe flows) and no ND packet carries connpin's mark, while the
    connection's own packets do (control)."""
    with pinned6(("eth", "eth"), before_apply=lambda lab: lab.exec(
            "router", ["nft", "-f", "-"], input=OBSERVER)) as lab:
        lab.uplink_up(2)
        probe = lab.probe(dst=lab.SERVER6)
        inbound = None
        try:
            assert probe.wait_rounds(3, 5.0) and lab.uplink_of(probe.peer) == 2
            lab.uplink_up(1)
            inbound = lab.probe(src="net", dst=lab.address6(2), port=7)
            assert inbound.wait_rounds(3, 5.0)
            nd_before = _counter(lab, "nd")
            for _ in range(5):
                for dev in ("wan1", "wan2", "lan0"):
                    lab.exec("router", ["ip", "-6", "neigh", "flush", "dev", dev])
                lab.exec("isp2", ["ip", "-6", "neigh", "flush", "dev", "cust0"])
                assert_flowing(probe, rounds=2)
                assert_flowing(inbound, rounds=2)
            assert lab.uplink_of(probe.peer) == 2
            assert _counter(lab, "nd") > nd_before, "the test saw neighbour discovery"
            assert _counter(lab, "tcp_marked") > 0, "pinned IPv6 packets carry the mark"
            assert _counter(lab, "nd_marked") == 0, "no ND packet carries connpin's mark"
        finally:
            probe.close()
            if inbound:
                inbound.close()
        ct = lab.exec("router", ["conntrack", "-L", "-f", "ipv6", "-p", "icmpv6"],
                      check=False).stdout
        assert not [ln for ln in ct.splitlines() if "type=13" in ln and "mark=" in ln
                    and int(ln.split("mark=")[1].split()[0]) & 0xFF000000], ct


def _snapshot6(lab: Lab) -> dict[str, str]:
    def run(*argv: str) -> str:
        return lab.exec("router", list(argv)).stdout

    return {
        "nft": re.sub(r"counter packets \d+ bytes \d+", "counter", run("nft", "list", "ruleset")),
        "iptables": lab.iptables_save(4),
        "ip6tables": lab.iptables_save(6),
        "rules": run("ip", "-4", "rule", "show"),
        "rules6": run("ip", "-6", "rule", "show"),
        "routes": run("ip", "-4", "route", "show", "table", "all"),
        "routes6": re.sub(r" expires \d+sec", "",
                          run("ip", "-6", "route", "show", "table", "all")),
    }


def test_v6_apply_is_idempotent_and_remove_restores_ip6_rules_and_routes() -> None:
    with Lab(uplinks=("ppp", "eth"), ipv6=True) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.exec("router", ["ip", "-6", "rule", "add", "priority", "9000", "fwmark", "0xca6c",
                            "lookup", "51820"])
        lab.exec("router", ["ip", "-6", "rule", "add", "priority", "20000", "from",
                            "2001:db8:99::/48", "lookup", "main"])
        lab.exec("router", ["ip", "-6", "route", "add", "blackhole", "default", "table",
                            "51820"])
        foreign_iptables(lab)
        lab.uplink_up(1)
        lab.uplink_up(2)
        before = _snapshot6(lab)
        assert "verified" in lab.connpin("apply").stdout
        applied = _snapshot6(lab)
        assert "10002:" in applied["rules6"] and "table 1" in applied["routes6"]
        assert "nothing to change" in lab.connpin("apply").stdout
        assert _snapshot6(lab) == applied
        assert_status_ok(lab)
        lab.connpin("remove")
        assert _snapshot6(lab) == before
        assert "nothing to change" in lab.connpin("remove").stdout


def test_v6_ipv4_only_uplink_and_drift_repair() -> None:
    """An uplink without an IPv6 default route is IPv4-only; a lost IPv6 route is put back."""
    with pinned6(("ppp", "eth")) as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        lab.exec("router", ["ip", "-6", "route", "del", "default", "dev", "wan2"])
        p = lab.connpin("status", check=False)
        assert p.returncode == 3 and "ip -6 rule del" in p.stdout, p.stdout
        lab.connpin("up", "wan2")
        status = lab.connpin("status", "-v").stdout
        assert "no IPv6 default route in main" in status
        assert lab.connect(src="net", dst=lab.address(2), port=7) is not None  # IPv4 still
        table = lab.exec("router", ["ip", "-6", "route", "show", "table", "all"]).stdout
        assert not re.search(r"dev wan2 table \d", table), table
        tid = next(m for m in re.findall(r"table (\d+)", table) if int(m) >= 1000)
        lab.exec("router", ["ip", "-6", "route", "flush", "table", tid])
        assert lab.connpin("status", check=False).returncode == 3
        assert "ip -6 route add default" in lab.connpin("apply").stdout
        assert_status_ok(lab)


def test_v6_control_without_pinning_fails_the_stories() -> None:
    """Plain routing and masquerade (both families): the IPv6 tests can tell."""
    assert fails_without_pinning(story_outbound6, ipv6=True), "1 must fail without pinning"
    assert fails_without_pinning(story_inbound6, ipv6=True), "2 must fail without pinning"
