"""The core promises, on the real kernel, driven through the CLI as a user would.

Each test builds its own lab (namespaces with a unique prefix, always removed): a LAN host, the
router running connpin, ISPs that drop packets whose source is not their customer's address,
and an internet server. ISP 1 is the preferred uplink (lower metric), ISP 2 the backup.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from helpers import (
    FLAPS,
    KERNEL,
    STALL,
    assert_flowing,
    assert_status_ok,
    fails_without_pinning,
    foreign_iptables,
    rule_band,
    story_inbound,
    story_outbound,
    wait_for,
)

from connpin.lab import Lab
from connpin.model import RULE_BAND

pytestmark = KERNEL


@contextmanager
def pinned(uplinks: tuple[str, ...] = ("ppp", "ppp"), config: str | None = None,
           before_apply=None) -> Iterator[Lab]:
    """A lab with connpin's hooks installed and the pinning applied on the router."""
    with Lab(uplinks=uplinks) as lab:
        lab.write_config(config or lab.default_config(masquerade=True))
        if before_apply:
            before_apply(lab)
        lab.connpin("hooks", "install", "--ppp", "--networkmanager", "--root", lab.hooks_root)
        lab.connpin("apply")
        yield lab


def test_1_outbound_connection_survives_preferred_uplink_return() -> None:
    with pinned() as lab:
        story_outbound(lab)
        assert_status_ok(lab)


def test_2_inbound_connections_on_backup_answer_over_backup() -> None:
    with pinned() as lab:
        story_inbound(lab)


def test_3_lan_to_router_is_unaffected() -> None:
    with pinned() as lab:
        lab.uplink_up(2)
        probe = lab.probe(dst="10.77.0.1", port=7)
        try:
            assert probe.wait_rounds(3, 5.0)
            lab.uplink_up(1)
            lab.uplink_down(2)
            assert_flowing(probe)
            assert lab.connect(src="lan", dst="10.77.0.1", port=7) is not None
            assert lab.connect(src="router", dst="10.77.0.2", port=8080) is not None
        finally:
            probe.close()


def test_4_pinned_connection_survives_flaps_of_the_other_uplink() -> None:
    """`CONNPIN_TEST_FLAPS` flaps (default 10, each with a new address; the soak runs 50 or
    more: `CONNPIN_TEST_FLAPS=50 pytest tests/kernel/test_pinning.py -k flaps`)."""
    with pinned() as lab:
        lab.uplink_up(2)
        probe = lab.probe()
        try:
            assert probe.wait_rounds(3, 5.0) and lab.uplink_of(probe.peer) == 2
            probe.reset_gap()
            for i in range(FLAPS):
                lab.uplink_up(1, address=f"100.64.1.{10 + i % 180}")  # a new address each time
                lab.uplink_down(1)
            lab.uplink_up(1, address="100.64.1.200")
            assert lab.uplink_of(lab.connect()) == 1
            assert probe.max_gap < STALL, f"stalled {probe.max_gap:.2f}s during flaps"
            assert_flowing(probe)
        finally:
            probe.close()
        assert_status_ok(lab)
        band = rule_band(lab, 4)
        # base rules + the mark tree: one goto node over 2 uplinks, one lookup per live uplink
        assert len(band) == 4 + 1 + 2, band
        assert sum("lookup 1" in r for r in band) == 2, band


def test_5_new_connections_fail_over_when_the_pinned_uplink_goes_down() -> None:
    with pinned() as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        assert lab.uplink_of(lab.connect()) == 1
        lab.uplink_down(1)
        assert lab.uplink_of(lab.connect()) == 2
        lab.uplink_up(1)
        assert lab.uplink_of(lab.connect()) == 1
        assert_status_ok(lab)


SNAT = """
table ip admin_snat {
    chain out {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "ppp0" snat to 100.64.1.2
        oifname "ppp1" snat to 100.64.2.2
    }
}
"""


def test_5b_pinned_connection_fails_closed_when_its_uplink_is_gone() -> None:
    """SNATed connections outlive their uplink in conntrack: they must not leak via another."""
    with pinned(config=None) as lab:
        lab.write_config(lab.default_config(masquerade=False))
        lab.exec("router", ["nft", "-f", "-"], input=SNAT)
        lab.connpin("apply")
        lab.uplink_up(1)
        lab.uplink_up(2)
        probe = lab.probe()
        try:
            assert probe.wait_rounds(3, 5.0) and lab.uplink_of(probe.peer) == 1
            before = lab.netstat("isp2").get("TcpExt.IPReversePathFilter", 0)
            lab.uplink_down(1)
            assert not probe.wait_rounds(2, 1.5)
            leaked = lab.netstat("isp2").get("TcpExt.IPReversePathFilter", 0) - before
            assert leaked == 0, f"{leaked} packets with ISP 1's address reached ISP 2"
            # the test can tell: without connpin's unreachable rule they do leak
            lab.exec("router", ["ip", "rule", "del", "priority", str(10000 + RULE_BAND - 2)])
            wait_for(lambda: lab.netstat("isp2").get("TcpExt.IPReversePathFilter", 0) > before,
                     10.0, "the leak the unreachable rule prevented")
        finally:
            probe.close()


def test_5c_down_after_the_interface_is_gone() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.uplink_up(1)
        lab.connpin("apply")
        lab.uplink_down(1)  # no hooks installed: the interface just vanishes
        p = lab.connpin("down", "ppp0")
        assert p.returncode == 0
        assert_status_ok(lab)


FOREIGN = """
table inet foreign {
    counter kept { }
    chain early {
        type filter hook prerouting priority -160; policy accept;
        meta mark set meta mark or 0x0000ca6c
        ct mark set ct mark or 0x00000100
    }
    chain late {
        type filter hook prerouting priority 0; policy accept;
        meta mark and 0x0000ca6c == 0x0000ca6c counter name kept
        meta mark set meta mark or 0x00400000
    }
}
"""


def test_6_foreign_mark_users_keep_their_bits_and_pinning_works() -> None:
    def foreign(lab: Lab) -> None:
        lab.exec("router", ["nft", "-f", "-"], input=FOREIGN)

    with pinned(before_apply=foreign) as lab:
        story_outbound(lab)
        out = lab.exec("router", ["conntrack", "-L", "-p", "tcp"]).stdout
        marks = [int(w.split("=")[1]) for line in out.splitlines() for w in line.split()
                 if w.startswith("mark=") and "dport=7 " in line]
        assert marks, out
        pinned_marks = [m for m in marks if m & 0xFF000000]
        assert pinned_marks, "connpin's bits are set"
        assert all(m & 0x100 for m in marks), "the foreign ct mark bit survived"
        counters = lab.exec("router", ["nft", "list", "counter", "inet", "foreign", "kept"]).stdout
        assert "packets 0 " not in counters, "the foreign packet mark bits survived connpin"


def test_7_strict_rp_filter_on_the_router_does_not_break_pinning() -> None:
    def strict(lab: Lab) -> None:
        lab.set_sysctl("router", "net.ipv4.conf.all.rp_filter", 1)
        lab.set_sysctl("router", "net.ipv4.conf.default.rp_filter", 1)

    with pinned(before_apply=strict) as lab:
        story_outbound(lab)
        story_inbound(lab)


def test_8_ethernet_uplinks_with_gateway_auto() -> None:
    with pinned(uplinks=("eth", "eth")) as lab:
        story_outbound(lab)
        story_inbound(lab)
        assert_status_ok(lab)


def test_8b_mixed_ppp_and_ethernet_backup() -> None:
    with pinned(uplinks=("ppp", "eth")) as lab:
        story_outbound(lab)
        story_inbound(lab)


def test_8c_gateway_auto_follows_a_dhcp_renumbering() -> None:
    with pinned(uplinks=("eth", "eth")) as lab:
        lab.uplink_up(1)
        table = lab.connpin("plan", "--json")
        tid = {u["interface"]: u["table"] for u in json.loads(table.stdout)["uplinks"]}["wan1"]
        shown = lab.exec("router", ["ip", "route", "show", "table", str(tid)]).stdout
        assert "via 198.51.100.17 dev wan1" in shown
        # the DHCP client moves the default route to another gateway, then calls the hook
        lab.exec("router", ["ip", "route", "replace", "default", "via", "198.51.100.19",
                            "dev", "wan1", "metric", "10"])
        p = lab.connpin("up", "wan1")
        assert "ip route replace default via 198.51.100.19 dev wan1" in p.stdout
        shown = lab.exec("router", ["ip", "route", "show", "table", str(tid)]).stdout
        assert "via 198.51.100.19 dev wan1" in shown and "198.51.100.17" not in shown
        assert_status_ok(lab)


def _snapshot(lab: Lab) -> dict[str, str]:
    def run(*argv: str) -> str:
        return lab.exec("router", list(argv)).stdout

    return {
        "nft": re.sub(r"counter packets \d+ bytes \d+", "counter", run("nft", "list", "ruleset")),
        "rules": run("ip", "-4", "rule", "show"),
        "routes": run("ip", "-4", "route", "show", "table", "all"),
        "sysctl": run("sysctl", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.ppp0.rp_filter",
                      "net.ipv4.conf.ppp0.src_valid_mark"),
        "iptables": lab.iptables_save(4),
        "ip6tables": lab.iptables_save(6),
    }


def test_9_apply_is_idempotent_and_remove_restores_everything() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.exec("router", ["nft", "-f", "-"], input=FOREIGN)
        lab.exec("router", ["ip", "rule", "add", "priority", "9000", "fwmark", "0xca6c",
                            "lookup", "51820"])
        lab.exec("router", ["ip", "rule", "add", "priority", "20000", "from", "10.9.0.0/16",
                            "lookup", "main"])
        lab.exec("router", ["ip", "route", "add", "blackhole", "default", "table", "51820"])
        lab.set_sysctl("router", "net.ipv4.conf.all.rp_filter", 1)
        foreign_iptables(lab)
        lab.uplink_up(1)
        lab.uplink_up(2)
        before = _snapshot(lab)
        first = lab.connpin("apply")
        assert "verified" in first.stdout
        applied = _snapshot(lab)
        second = lab.connpin("apply")
        assert "nothing to change" in second.stdout
        assert _snapshot(lab) == applied
        assert "table inet foreign" in applied["nft"] and "9000:" in applied["rules"]
        assert "lookup 51820" in applied["rules"] and "20000:" in applied["rules"]
        lab.connpin("remove")
        assert _snapshot(lab) == before
        assert "nothing to change" in lab.connpin("remove").stdout


def test_9c_changing_connpins_slice_moves_everything() -> None:
    """New priorities, tables and table name: what was installed under the old ones goes."""
    with Lab(uplinks=("ppp", "ppp")) as lab:
        foreign_iptables(lab)
        lab.uplink_up(1)
        lab.uplink_up(2)
        before = _snapshot(lab)
        lab.write_config(lab.default_config(masquerade=True))
        lab.connpin("apply")
        lab.write_config(lab.default_config(masquerade=True, rule_priority=20000,
                                            table_base=2000, nft_table="pins"))
        lab.connpin("apply")
        after = _snapshot(lab)
        if lab.backend == "nftables":
            assert "table inet connpin" not in after["nft"] and "table inet pins" in after["nft"]
        assert "10000:" not in after["rules"] and "20000:" in after["rules"]
        assert " table 1" not in after["routes"] and " table 2" in after["routes"]
        assert_status_ok(lab)
        lab.connpin("remove")
        assert _snapshot(lab) == before


def test_9b_a_failed_apply_keeps_the_previous_state(tmp_path) -> None:
    with pinned() as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        good = _snapshot(lab)
        fake = tmp_path / "nft"
        fake.write_text("#!/bin/sh\ncase \"$1\" in -f) echo 'Error: injected' >&2; exit 1;; "
                        "esac\nexec nft \"$@\"\n")
        fake.chmod(0o755)
        lab.write_config(lab.default_config(masquerade=False))  # a ruleset change is needed
        p = lab.connpin("apply", check=False, env={"CONNPIN_NFT": str(fake)})
        assert p.returncode == 1
        assert "injected" in p.stderr and "previous state kept" in p.stderr
        assert _snapshot(lab) == good


def _flap_story(lab: Lab) -> None:
    lab.uplink_up(2)
    probe = lab.probe()
    try:
        assert probe.wait_rounds(3, 5.0)
        for i in range(3):
            lab.uplink_up(1, address=f"100.64.1.{10 + i % 180}")
            lab.uplink_down(1)
        lab.uplink_up(1)
        assert_flowing(probe, rounds=3)
    finally:
        probe.close()


def test_10_control_without_pinning_fails_the_stories() -> None:
    """Plain routing and masquerade: the tests can tell pinning from no pinning."""
    assert fails_without_pinning(story_outbound), "1 must fail without pinning"
    assert fails_without_pinning(story_inbound), "2 must fail without pinning"
    assert fails_without_pinning(_flap_story), "4 must fail without pinning"


def test_10b_the_same_flap_story_passes_with_pinning() -> None:
    with pinned() as lab:
        _flap_story(lab)


def test_hooks_at_the_same_moment_are_serialized() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.connpin("apply")
        for _ in range(3):
            lab.uplink_up(1)  # no hooks installed: the lab only creates the interfaces
            lab.uplink_up(2)
            with ThreadPoolExecutor(2) as pool:  # two PPP sessions' ip-up at the same moment
                results = list(pool.map(
                    lambda i: lab.connpin("up", lab.iface(i), check=False), (1, 2)))
            assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
            assert_status_ok(lab)
            lab.uplink_down(1)
            lab.uplink_down(2)
            downs = [lab.connpin("down", lab.iface(i)) for i in (1, 2)]
            assert all(d.returncode == 0 for d in downs)


def test_golden_rulesets_load_in_the_kernel(tmp_path) -> None:
    from pathlib import Path

    from connpin import model, reconcile
    from connpin.render import nft

    golden = Path(__file__).parent.parent / "golden"
    with Lab(uplinks=("ppp",)) as lab:
        for case in sorted(p for p in golden.iterdir() if (p / "connpin.toml").exists()):
            config = model.load(case / "connpin.toml")
            want = reconcile.run(config, reconcile.Imagined(), effects=False).desired
            script = nft.transaction(config.pinning.nft_table, want.ruleset)
            lab.exec("router", ["nft", "-f", "-"], input=script)
            lab.exec("router", ["nft", "-f", "-"], input=script)  # replace, not add
            lab.exec("router", ["nft", "delete", "table", "inet", config.pinning.nft_table])


def test_status_reports_drift_and_apply_repairs_it() -> None:
    with pinned() as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        assert_status_ok(lab)
        # a stray rule of connpin's own (its protocol: foreign ones are test_coexist's)
        lab.exec("router", ["ip", "rule", "add", "priority", "10005", "lookup", "1234",
                            "protocol", "201"])
        if lab.backend == "iptables":
            lab.exec("router", [os.environ["CONNPIN_IPTABLES"], "-t", "mangle", "-F",
                                "CONNPIN-PRE"])
        else:
            lab.exec("router", ["nft", "flush", "chain", "inet", "connpin", "prerouting"])
        p = lab.connpin("status", check=False)
        assert p.returncode == 3
        assert "ip rule del priority 10005 lookup 1234" in p.stdout
        assert "NOT as planned" in p.stdout
        lab.connpin("apply")
        assert_status_ok(lab)
