"""Desired state and the diff against what is installed: pure, no kernel."""

from connpin import desired as D
from connpin import model, reconcile
from connpin.reconcile import Installed

CFG = model.loads("""
[[uplink]]
name = "isp-a"
interface = "ppp0"
masquerade = true
[[uplink]]
name = "isp-b"
interface = "eth1"
gateway = "auto"
""")


def observed(**kw) -> D.Observed:
    links = {
        "ppp0": D.Link("ppp0", 5, True, ("100.64.1.2",)),
        "eth1": D.Link("eth1", 6, True, ("198.51.100.2",)),
    }
    links.update(kw.pop("links", {}))
    sysctls = {"conf/ppp0/src_valid_mark": 1, "conf/eth1/src_valid_mark": 1}
    sysctls.update(kw.pop("sysctls", {}))
    gateways = kw.pop("gateways", {"eth1": "198.51.100.1"})
    return D.Observed({k: v for k, v in links.items() if v}, gateways, sysctls)


def uplink(want: D.Desired, name: str) -> D.UplinkState:
    return next(u for u in want.uplinks if u.uplink == name)


def test_up_uplinks_get_route_and_rule() -> None:
    want = D.compute(CFG, observed())
    a, b = uplink(want, "isp-a"), uplink(want, "isp-b")
    assert a.up and str(a.route) == f"default dev ppp0 table {a.slot.table}"
    assert b.up and str(b.route) == f"default via 198.51.100.1 dev eth1 table {b.slot.table}"
    lookups = [r for r in want.rules if r.action == "lookup" and r.fwmark]
    assert {(r.fwmark, r.table) for r in lookups} == {(a.slot.mark, a.slot.table),
                                                      (b.slot.mark, b.slot.table)}


def test_base_rules_skip_unmarked_keep_main_and_fail_closed() -> None:
    rules = [str(r) for r in D.compute(CFG, observed()).rules]
    assert rules[0] == "priority 10000 fwmark 0x0/0xff0000 goto 10004"
    assert rules[1] == "priority 10001 lookup main suppress_prefixlength 0"
    assert rules[-2:] == ["priority 10003 unreachable", "priority 10004 nop"]


def test_down_reasons() -> None:
    gone = D.compute(CFG, observed(links={"ppp0": None}))
    assert uplink(gone, "isp-a").reason == "no such interface"
    nogw = D.compute(CFG, observed(gateways={}))
    assert not uplink(nogw, "isp-b").up and "gateway" in uplink(nogw, "isp-b").reason
    hook = D.compute(CFG, observed(), going_down=frozenset({"ppp0"}))
    assert not uplink(hook, "isp-a").up
    noaddr = D.compute(CFG, observed(links={"ppp0": D.Link("ppp0", 5, True, ())}))
    assert uplink(noaddr, "isp-a").reason == "no IPv4 address"
    # the ruleset does not depend on which exact uplinks are up
    assert gone.ruleset == nogw.ruleset == hook.ruleset == D.compute(CFG, observed()).ruleset


def test_sysctls_loose_only_where_strict_and_stable() -> None:
    strict = D.compute(CFG, observed(sysctls={"conf/all/rp_filter": 1}))
    assert ("conf/ppp0/rp_filter", 2) in strict.sysctls
    assert ("conf/ppp0/src_valid_mark", 1) in strict.sysctls
    off = D.compute(CFG, observed(sysctls={"conf/all/rp_filter": 0}))
    assert not [k for k, _ in off.sysctls if k.endswith("rp_filter")]
    already = D.compute(CFG, observed(sysctls={"conf/ppp0/rp_filter": 2}))
    assert ("conf/ppp0/rp_filter", 2) in already.sysctls
    quiet = model.loads("[pinning]\nsysctl = false\n" + '[[uplink]]\nname="a"\ninterface="ppp0"\n')
    assert D.compute(quiet, observed(sysctls={"conf/all/rp_filter": 1})).sysctls == ()


def installed_from(want: D.Desired) -> Installed:
    return Installed(want.rules, want.routes, "listing", reconcile.sha(want.ruleset))


def test_diff_is_empty_when_installed_matches() -> None:
    want = D.compute(CFG, observed())
    assert reconcile.diff(want, observed(), installed_from(want)) == []


def test_diff_orders_routes_before_rules_and_removes_stale() -> None:
    want = D.compute(CFG, observed())
    steps = [str(s) for s in reconcile.diff(want, observed(), Installed())]
    assert steps[0].startswith("nft replace table inet connpin")
    first_rule = next(i for i, s in enumerate(steps) if s.startswith("ip rule"))
    assert all(s.startswith("ip route add") for s in steps[1:first_rule])
    # uplink a goes away: its rule goes before its route
    now = D.compute(CFG, observed(links={"ppp0": None}))
    steps = [str(s) for s in reconcile.diff(now, observed(), installed_from(want))]
    assert steps[0].startswith("ip rule del") and steps[1].startswith("ip route del")


def test_gateway_change_is_a_replace() -> None:
    want = D.compute(CFG, observed())
    moved = D.compute(CFG, observed(gateways={"eth1": "198.51.100.9"}))
    steps = reconcile.diff(moved, observed(), installed_from(want))
    assert [(s.kind, s.op) for s in steps] == [("route", "replace")]
    undo = reconcile.undo(steps[0])
    assert undo.obj.gateway == "198.51.100.1"


def test_remove_is_built_from_the_same_slice() -> None:
    want = D.compute(CFG, observed())
    have = Installed(want.rules, want.routes, "listing", "x", {"conf/ppp0/rp_filter": 1})
    obs = observed(sysctls={"conf/ppp0/rp_filter": 2})
    steps = reconcile.diff(D.nothing(CFG), obs, have)
    kinds = [(s.kind, s.op) for s in steps]
    assert kinds.count(("rule", "del")) == len(want.rules)
    assert kinds.count(("route", "del")) == len(want.routes)
    assert ("sysctl", "restore") in kinds
    assert kinds[-1] == ("nft", "connpin") and steps[-1].obj is None


def test_foreign_rules_in_band_are_drift() -> None:
    want = D.compute(CFG, observed())
    stray = D.Rule(10005, "lookup", table=77)
    have = Installed(want.rules + (stray,), want.routes, "l", reconcile.sha(want.ruleset))
    steps = reconcile.diff(want, observed(), have)
    assert [str(s) for s in steps] == ["ip rule del priority 10005 lookup 77"]


def test_duplicate_rules_are_collapsed() -> None:
    want = D.compute(CFG, observed())
    have = Installed(want.rules + want.rules[:1], want.routes, "l", reconcile.sha(want.ruleset))
    assert len(reconcile.diff(want, observed(), have)) == 1


def test_drift_that_differs_only_in_unset_fields_sorts() -> None:
    want = D.compute(CFG, observed())
    lookup = next(r for r in want.rules if r.fwmark)
    twin = D.Rule(lookup.priority, "lookup", table=lookup.table)  # same, but no fwmark
    route = want.routes[0]
    other = D.Route(route.table, route.oif, "192.0.2.9" if route.gateway is None else None,
                    "10.0.0.0/8")
    have = Installed(want.rules + (twin,), want.routes + (other,), "l",
                     reconcile.sha(want.ruleset))
    steps = [str(s) for s in reconcile.diff(want, observed(), have)]
    assert steps == [f"ip rule del {twin}", f"ip route del {other}"]
