"""IPv6: config keys, per-family desired state, diff and rendering. Pure, no kernel."""

import pytest

from connpin import desired as D
from connpin import hooks, model, reconcile
from connpin.reconcile import Installed
from connpin.render import nft, plan, status

CFG = model.loads("""
[[uplink]]
name = "isp-a"
interface = "ppp0"
masquerade = true
masquerade6 = true
[[uplink]]
name = "isp-b"
interface = "eth1"
gateway = "auto"
nptv6 = { "fd00:77::/64" = "2001:db8:2:77::/64" }
[[uplink]]
name = "isp-c"
interface = "eth2"
gateway = "192.0.2.1"
gateway6 = "fe80::1"
""")


def observed(gateways6=None, **kw) -> D.Observed:
    links = {
        "ppp0": D.Link("ppp0", 5, True, ("100.64.1.2",)),
        "eth1": D.Link("eth1", 6, True, ("198.51.100.2",)),
        "eth2": D.Link("eth2", 7, True, ("192.0.2.2",)),
    }
    g6 = {"ppp0": "fe80::9", "eth1": "fe80::1"} if gateways6 is None else gateways6
    valid = {f"conf/{n}/src_valid_mark": 1 for n in links}
    return D.Observed(links, {"eth1": "198.51.100.1"}, valid, gateways6=g6, **kw)


def st(want: D.Desired, name: str) -> D.UplinkState:
    return next(u for u in want.uplinks if u.uplink == name)


def test_config_keys_are_validated() -> None:
    a, b, c = CFG.uplinks
    assert a.masquerade6 and not b.masquerade6
    assert b.nptv6 == (("fd00:77::/64", "2001:db8:2:77::/64"),)
    assert c.gateway6 == "fe80::1" and c.ethernet6 and b.ethernet6 and not a.ethernet6
    base = '[[uplink]]\nname = "a"\ninterface = "ppp0"\n'
    for extra, field, text in [
        ('gateway6 = "192.0.2.1"', "gateway6", "not an IPv6 address"),
        ('nptv6 = { "fd00:77::1/64" = "2001:db8::/64" }', "nptv6", "host bits zero"),
        ('nptv6 = { "fd00:77::/64" = "2001:db8::/48" }', "nptv6", "same length"),
        ('nptv6 = "fd00::/64"', "nptv6", "must be a table"),
        ("masquerade6 = 1", "masquerade6", "true or false"),
    ]:
        with pytest.raises(model.ConfigError) as e:
            model.loads(base + extra)
        assert e.value.field.endswith(field) and text in e.value.message


def test_ipv6_routes_dev_for_point_to_point_via_gateway_for_ethernet() -> None:
    want = D.compute(CFG, observed())
    a, b, c = st(want, "isp-a"), st(want, "isp-b"), st(want, "isp-c")
    assert a.up6 and str(a.route6) == f"default dev ppp0 table {a.slot.table}"
    assert b.up6 and str(b.route6) == f"default via fe80::1 dev eth1 table {b.slot.table}"
    assert c.up6 and c.route6.gateway == "fe80::1"  # static gateway6, no default in main needed
    assert all(r.family == 6 for r in (a.route6, b.route6, c.route6))
    six = [r for r in want.rules if r.family == 6]
    four = [r for r in want.rules if r.family == 4]
    assert [(r.priority, r.action, r.table, r.fwmark) for r in six] == \
        [(r.priority, r.action, r.table, r.fwmark) for r in four]  # same band, same tables
    assert want.rules.index(six[0]) == len(four)  # IPv4 first


def test_uplink_without_ipv6_default_route_is_ipv4_only() -> None:
    want = D.compute(CFG, observed(gateways6={}))
    b = st(want, "isp-b")
    assert b.up and not b.up6 and "no IPv6 default route" in b.reason6
    assert not [r for r in want.rules if r.family == 6 and r.table == b.slot.table]
    assert st(want, "isp-c").up6  # static gateway6
    # base rules of both families exist (+ 2 tree nodes over 3 uplinks, 1 leaf); the ruleset
    # does not depend on IPv6 state
    assert len([r for r in want.rules if r.family == 6]) == 4 + 2 + 1
    assert want.ruleset == D.compute(CFG, observed()).ruleset


def test_kernel_without_ipv6_gets_no_ipv6_rules() -> None:
    want = D.compute(CFG, observed(ipv6=False))
    assert not [r for r in want.rules if r.family == 6] and not [
        r for r in want.routes if r.family == 6]
    assert all(u.reason6 == "IPv6 is disabled in the kernel" for u in want.uplinks)


def test_going_down_takes_both_families() -> None:
    want = D.compute(CFG, observed(), going_down=frozenset({"ppp0"}))
    a = st(want, "isp-a")
    assert not a.up and not a.up6 and a.route6 is None


def test_gateway6_change_is_a_replace_in_its_family_only() -> None:
    want = D.compute(CFG, observed())
    moved = D.compute(CFG, observed({"ppp0": None, "eth1": "fe80::2"}))
    steps = reconcile.diff(moved, observed(), Installed(want.rules, want.routes, "l",
                                                         reconcile.sha(want.ruleset)))
    assert [str(s) for s in steps] == [
        f"ip -6 route replace default via fe80::2 dev eth1 table {st(want, 'isp-b').slot.table}"]
    assert reconcile.undo(steps[0]).route.gateway == "fe80::1"


def test_remove_deletes_both_families() -> None:
    want = D.compute(CFG, observed())
    have = Installed(want.rules, want.routes, "listing", "x")
    steps = reconcile.diff(D.nothing(CFG), observed(), have)
    text = [str(s) for s in steps]
    assert sum(t.startswith("ip -6 rule del") for t in text) == 4 + 2 + 3  # base, nodes, leaves
    assert sum(t.startswith("ip -6 route del") for t in text) == 3


def test_ruleset_pins_ipv6_but_never_nd_link_local_or_multicast() -> None:
    text = D.compute(CFG, observed()).ruleset
    for chain in ("prerouting", "output", "postrouting"):
        body = text.split(f"chain {chain} {{")[1].split("\n\t}")[0]
        assert "meta nfproto ipv6" in body
        nd = body.index("icmpv6 type { nd-router-solicit")
        assert nd < body.index("meta nfproto ipv6")  # exclusions come before any v6 pinning
        assert "ip6 saddr @never_pinned6 accept" in body
    assert "elements = { fe80::/10, ff00::/8 }" in text
    assert "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect" in text
    assert 'meta nfproto ipv6 oifname @masq6_ifaces masquerade' in text
    assert 'oifname "eth1" snat ip6 prefix to ip6 saddr map ' \
           '{ fd00:77::/64 : 2001:db8:2:77::/64 }' in text
    assert 'iifname "eth1" dnat ip6 prefix to ip6 daddr map ' \
           '{ 2001:db8:2:77::/64 : fd00:77::/64 }' in text
    # IPv4 lines are unchanged
    assert "meta nfproto ipv4 ct state new iifname vmap @uplink_by_iface" in text
    assert nft.NEVER_PINNED6 == ("fe80::/10", "ff00::/8")


def test_plan_and_status_show_both_families() -> None:
    result = reconcile.run(CFG, reconcile.Imagined(), effects=False)
    txt = plan.text(CFG, result, live=False)
    assert "ip -6 rule add priority 10000 fwmark 0x0/0xff000000 goto 11023" in txt
    assert "ip -6 route add default via <auto> dev eth1" in txt
    assert "ip -6 route add default via fe80::1 dev eth2" in txt
    d = plan.as_dict(CFG, result, live=False)
    assert len(d["rules6"]) == 4 + 2 + 3 and len(d["routes6"]) == 3
    assert d["uplinks"][0]["ipv6"]["up"] is True
    want = D.compute(CFG, observed(gateways6={}))
    have = Installed(want.rules, want.routes, "l", reconcile.sha(want.ruleset))
    res = reconcile.Result(want, observed(), have, [])
    rep = status.build(CFG, res)
    b = next(u for u in rep["uplinks"] if u["uplink"] == "isp-b")
    assert b["ipv6"]["up"] is False and b["ipv6"]["rule_in_place"]
    from connpin.render import status_text

    assert "ipv6: off, since: not recorded: no IPv6 default route in main (IPv4-only)" in (
        status_text.text(rep, verbose=True))


def test_ppp_hooks_cover_ipv6_up_and_down(tmp_path) -> None:
    written = hooks.install(["ppp"], str(tmp_path))
    names = sorted(p.split("etc/ppp/")[1] for p in written)
    assert names == ["ip-down.d/connpin", "ip-up.d/connpin", "ipv6-down.d/connpin",
                     "ipv6-up.d/connpin"]
    assert '"$PPP_IFACE"' in (tmp_path / "etc/ppp/ipv6-up.d/connpin").read_text()
    assert len(hooks.remove(["ppp"], str(tmp_path))) == 4
    nm = hooks.script(hooks.NETWORKMANAGER[0], None)
    assert "dhcp6-change" in nm  # a new IPv6 gateway (RA/DHCPv6) re-reads the kernel
