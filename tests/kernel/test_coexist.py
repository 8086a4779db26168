"""Safe on a crowded router: with another tool's real rules loaded into the lab's router, the
default config pins as promised and the other tool's marked traffic still reaches its own
routing; a deliberately overlapping mask is refused by `apply` (nothing changes) and named by
`check`; connpin never takes a table, rule or route it did not create.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_pinning import assert_status_ok, story_inbound, story_outbound

from connpin.lab import Lab
from connpin.lab import foreign as F
from connpin.lab.commands import HookError

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def snapshot(lab: Lab) -> dict[str, str]:
    def run(*argv: str) -> str:
        return lab.exec("router", list(argv)).stdout

    return {"nft": run("nft", "list", "ruleset"), "rules": run("ip", "rule"),
            "rules6": run("ip", "-6", "rule"),
            "routes": run("ip", "route", "show", "table", "all"),
            "iptables": re.sub(r"^#.*\n|\[\d+:\d+\]", "", run("iptables-save"), flags=re.M)}


def assert_own_routing(lab: Lab, f: F.Foreign) -> None:
    """The other tool's marked packets still go where its own rules send them."""
    if f.probe_dst is None:
        return
    uplinks = {lab.iface(k) for k in lab.ks}
    unmarked = F.route_get(lab, f.probe_dst)
    marked = F.route_get(lab, f.probe_dst, f.probe_mark)
    assert unmarked == f.unmarked_dev if f.unmarked_dev else unmarked in uplinks, unmarked
    assert marked == f.expect_dev if f.expect_dev else marked in uplinks, marked


@contextmanager
def lab_with(tool: str, **pinning: object) -> Iterator[tuple[Lab, F.Foreign]]:
    """A lab whose router runs `tool`'s rules, with connpin's config and hooks (not applied)."""
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True, **pinning))
        f = F.LOADERS[tool](lab)
        lab.connpin("hooks", "install", "--ppp", "--root", lab.hooks_root)
        yield lab, f


@pytest.mark.parametrize("tool", ["tailscale", "wg-quick", "kube-proxy", "mwan3"])
def test_default_config_pins_and_the_other_tool_keeps_its_routing(tool: str) -> None:
    with lab_with(tool) as (lab, f):
        check = lab.connpin("check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        lab.connpin("apply")
        if tool == "wg-quick":  # a full tunnel: new connections go to wg0 by design
            lab.uplink_up(1)
            lab.uplink_up(2)
        else:
            story_outbound(lab)
        story_inbound(lab)
        assert_own_routing(lab, f)
        assert_status_ok(lab)


@pytest.mark.parametrize("tool,mask", [("tailscale", 0x00FF0000), ("kube-proxy", 0x0000FF00),
                                       ("mwan3", 0x0000FF00)])
def test_an_overlapping_mask_is_refused_and_named(tool: str, mask: int) -> None:
    named = {"tailscale": "ts-forward", "kube-proxy": "KUBE-MARK-MASQ",
             "mwan3": "mwan3_iface_in_wan1"}[tool]
    with lab_with(tool, mark_mask=mask) as (lab, f):
        for k in (1, 2):  # pppd's ip-up hook refuses like apply, naming the other tool's rule
            with pytest.raises(HookError, match=f"connpin up: conflict: .*{named}"):
                lab.uplink_up(k)
        assert "table inet connpin" not in snapshot(lab)["nft"], "a refused hook changed nothing"
        before = snapshot(lab)
        p = lab.connpin("apply", check=False)
        assert p.returncode == 2, p.stdout + p.stderr
        lines = [ln for ln in p.stderr.splitlines() if "conflict:" in ln]
        assert lines and "nothing changed" in p.stderr
        assert snapshot(lab) == before, "a refused apply changed nothing"
        check = lab.connpin("check", check=False)
        assert check.returncode == 2
        assert named in check.stdout, check.stdout
        assert "suggested mark_mask = 0xff000000" in check.stdout, check.stdout
        doc = json.loads(lab.connpin("check", "--json", check=False).stdout)
        assert doc["conflicts"] and doc["suggested_mask"] == "0xff000000"
        assert_own_routing(lab, f)


OTHER_NFT = """table inet other {
\tchain pre {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tiifname "lan0" meta mark set meta mark | 0x01000000
\t}
}
"""


def test_hooks_refuse_a_mark_user_that_came_after_apply_and_name_it() -> None:
    """Another tool's nft rule writing connpin's mark bits, loaded after `apply`: `up` and
    `down` (pppd's hooks, `connpin dhclient`) refuse like apply, exit 2, one line naming the
    rule, and change nothing; once it is gone they work again."""
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.uplink_up(1)
        lab.connpin("apply")
        lab.connpin("hooks", "install", "--ppp", "--root", lab.hooks_root)
        lab.exec("router", ["nft", "-f", "-"], input=OTHER_NFT)
        where = "nft table inet other chain pre handle"
        with pytest.raises(HookError, match=f"connpin up: conflict: {where} \\d+: writes "
                           "meta mark: bits 0x01000000; overlaps mark_mask 0xff000000"):
            lab.uplink_up(2)
        before = snapshot(lab)
        pinned_ppp1 = re.compile(r"dev ppp1 table \d+ proto 201")
        assert not pinned_ppp1.search(before["routes"]), before["routes"]
        for argv in (("up", "ppp1"), ("down", "ppp0"), ("dhclient", "ppp1", "BOUND")):
            p = lab.connpin(*argv, check=False)
            assert p.returncode == 2, (argv, p.stdout, p.stderr)
            lines = p.stderr.splitlines()
            cmd = "up" if argv[0] == "dhclient" else argv[0]
            assert len(lines) == 2 and lines[0].startswith(f"connpin {cmd}: conflict: {where}")
            assert lines[1].startswith(f"connpin {cmd}: nothing changed"), lines
            assert snapshot(lab) == before, argv
        doc = json.loads(lab.connpin("up", "ppp1", "--json", check=False).stdout)
        assert doc["error"]["kind"] == "conflict", doc
        lab.exec("router", ["nft", "delete", "table", "inet", "other"])
        lab.connpin("up", "ppp1")
        assert pinned_ppp1.search(snapshot(lab)["routes"])


def test_allow_shared_bits_lets_an_intended_overlap_through() -> None:
    with lab_with("kube-proxy", mark_mask=0x0000FF00, allow_shared_bits=0x0000C000) as (lab, _):
        assert lab.connpin("check", check=False).returncode == 0
        lab.connpin("apply")
        story_outbound(lab)


def test_a_tool_started_after_connpin_shows_in_status() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True, mark_mask=0x00FF0000))
        lab.connpin("apply")
        assert lab.connpin("status", check=False).returncode == 0
        F.tailscale(lab)
        p = lab.connpin("status", check=False)
        assert p.returncode == 3 and "conflict:" in p.stdout and "ts-forward" in p.stdout
        report = json.loads(lab.connpin("status", "--json", check=False).stdout)
        assert any("ts-forward" in c["where"] for c in report["conflicts"])


USER_FILTER = """table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\ttcp dport 22 accept
\t}
}
"""


def test_nft_table_naming_the_users_table_is_refused_and_left_byte_identical() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True, nft_table="filter"))
        lab.exec("router", ["nft", "-f", "-"], input=USER_FILTER)
        lab.uplink_up(1)
        before = lab.exec("router", ["nft", "list", "table", "inet", "filter"]).stdout
        for argv in (("apply",), ("up", lab.iface(1)), ("remove",)):
            p = lab.connpin(*argv, check=False)
            assert p.returncode == 2, (argv, p.stdout, p.stderr)
            assert "nft table inet filter" in p.stderr and "not created by connpin" in p.stderr
            after = lab.exec("router", ["nft", "list", "table", "inet", "filter"]).stdout
            assert after == before, argv
        check = lab.connpin("check", check=False)
        assert check.returncode == 2 and "nft table inet filter" in check.stdout


def test_foreign_rule_in_the_band_and_route_in_the_range_survive_apply_and_remove() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.uplink_up(1)
        lab.uplink_up(2)
        lab.connpin("apply")
        rules = lab.exec("router", ["ip", "rule"]).stdout
        assert "proto 201" in rules and "10000:" in rules
        routes = lab.exec("router", ["ip", "route", "show", "table", "all"]).stdout
        assert re.search(r"table 1\d\d\d proto 201", routes), routes
        # another tool takes a priority inside the band and a table inside the range
        lab.exec("router", ["ip", "rule", "add", "priority", "10500", "from", "10.9.0.0/16",
                            "lookup", "main"])
        lab.exec("router", ["ip", "route", "add", "192.0.2.0/24", "dev", "lan0", "table",
                            "1200"])

        def foreign() -> tuple[list[str], list[str]]:
            r = [ln for ln in lab.exec("router", ["ip", "rule"]).stdout.splitlines()
                 if ln.startswith("10500:")]
            t = lab.exec("router", ["ip", "route", "show", "table", "1200"]).stdout.splitlines()
            return r, t

        there = foreign()
        assert there[0] and there[1]
        p = lab.connpin("apply", check=False)
        assert p.returncode == 2 and "10500" in p.stderr and "table 1200" in p.stderr
        assert foreign() == there
        check = lab.connpin("check", check=False)
        assert check.returncode == 2 and "10500" in check.stdout
        lab.connpin("remove")
        assert foreign() == there, "remove took only connpin's own rules and routes"
        rules = lab.exec("router", ["ip", "rule"]).stdout
        assert "proto 201" not in rules, rules


def test_iptables_nft_remove_restores_the_nft_ruleset_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNPIN_IPTABLES", "iptables-nft")
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True, backend="iptables"))
        lab.uplink_up(1)
        lab.uplink_up(2)
        before = lab.exec("router", ["nft", "list", "ruleset"]).stdout
        assert "table ip mangle" not in before and "table ip nat" not in before
        lab.connpin("apply")
        applied = lab.exec("router", ["nft", "list", "ruleset"]).stdout
        for table in ("table ip mangle", "table ip6 mangle", "table ip nat"):
            assert table in applied, table
        lab.connpin("remove")
        assert lab.exec("router", ["nft", "list", "ruleset"]).stdout == before


def test_iptables_nft_remove_keeps_tables_that_existed_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNPIN_IPTABLES", "iptables-nft")
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True, backend="iptables"))
        lab.exec("router", ["iptables-nft", "-t", "mangle", "-N", "USERCHAIN"])
        lab.uplink_up(1)
        before = lab.exec("router", ["nft", "list", "ruleset"]).stdout
        lab.connpin("apply")
        lab.connpin("remove")
        assert lab.exec("router", ["nft", "list", "ruleset"]).stdout == before
