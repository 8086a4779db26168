"""Desired state and the diff against what is installed: pure, no kernel."""

import pytest

from connpin import alloc, model, reconcile
from connpin import desired as D
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
    assert rules[0] == "priority 10000 fwmark 0x0/0xff000000 goto 11023"
    assert rules[1] == "priority 10001 lookup main suppress_prefixlength 0"
    assert rules[-2:] == ["priority 11022 unreachable", "priority 11023 nop"]


def walk(rules: tuple[D.Rule, ...], mark: int, routed: set[int],
         family: int = 4) -> tuple[str, int]:
    """How the kernel's fib_rules_lookup treats a packet with `mark`: rules in priority order, a
    goto jumps to the first rule of its target priority (falls through when there is none), a
    lookup ends the walk only when its table (in `routed`) has a route. Returns (outcome, rules
    looked at); main's suppressed lookup never ends the walk here."""
    order = sorted((r for r in rules if r.family == family), key=D.sort_key)
    i, seen = 0, 0
    while i < len(order):
        r = order[i]
        seen += 1
        if r.fwmark is None or mark & r.fwmask == r.fwmark:
            if r.action == "goto":
                j = next((k for k, x in enumerate(order) if x.priority == r.goto), None)
                if j is not None:
                    i = j
                    continue
            elif r.action == "lookup" and r.table in routed:
                return f"table {r.table}", seen
            elif r.action == "unreachable":
                return "unreachable", seen
        i += 1
    return "fell out", seen


def many(n: int, mask: int = 0x01FF0000, spread: int = 1) -> model.Config:
    text = f"[pinning]\nmark_mask = {mask:#x}\n"
    for i in range(n):
        mark = alloc.deposit(1 + (i * spread) % alloc.capacity(mask), mask)
        text += f'[[uplink]]\nname = "u{i}"\ninterface = "up{i}"\nmark = {mark:#x}\n'
    return model.loads(text)


def all_up(config: model.Config) -> D.Observed:
    links = {f"up{i}": D.Link(f"up{i}", i + 10, True, ("100.64.0.2",))
             for i in range(len(config.uplinks))}
    return D.Observed(links, {}, {})


@pytest.mark.parametrize(("n", "spread"), [(1, 1), (2, 1), (5, 37), (16, 1), (64, 29),
                                           (256, 1), (300, 3)])
def test_mark_tree_reaches_every_uplink_in_log_rules(n: int, spread: int) -> None:
    config = many(n, spread=spread)
    want = D.compute(config, all_up(config))
    routed = {u.slot.table for u in want.uplinks}
    bits = bin(config.pinning.mark_mask).count("1")
    worst = 0
    for u in want.uplinks:
        outcome, seen = walk(want.rules, u.slot.mark, routed)
        assert outcome == f"table {u.slot.table}"
        worst = max(worst, seen)
    assert worst <= 2 + bits + 1  # skip, main, one rule per tree level, the leaf
    assert walk(want.rules, 0, routed) == ("fell out", 2)  # unmarked: skip -> nop, done
    up6 = {u.slot.table for u in want.uplinks if u.up6}
    for u in want.uplinks:  # the IPv6 family has the same tree over the same slots
        assert walk(want.rules, u.slot.mark, up6, 6)[0] == (
            f"table {u.slot.table}" if u.up6 else "unreachable")
    assert walk(want.rules, 0x01AA0000, set())[0] == "unreachable"
    used = sorted(r.priority for r in want.rules)
    assert used[-1] - config.pinning.rule_priority < model.RULE_BAND
    assert len({(r.family, r.priority) for r in want.rules if r.action != "nop"}) == len(
        [r for r in want.rules if r.action != "nop"])  # one rule per priority: order is fixed


def test_mark_tree_fails_closed_for_down_and_unknown_marks() -> None:
    config = many(16, spread=5)
    down = {"up3", "up7"}
    obs = all_up(config)
    obs = D.Observed({k: v for k, v in obs.links.items() if k not in down}, {}, {})
    want = D.compute(config, obs)
    routed = {u.slot.table for u in want.uplinks if u.up}
    for u in want.uplinks:
        outcome, _ = walk(want.rules, u.slot.mark, routed | {u.slot.table})
        assert outcome == ("unreachable" if u.interface in down else f"table {u.slot.table}")
    # an up uplink whose table lost its route: refused, never another uplink's table
    for u in want.uplinks:
        assert walk(want.rules, u.slot.mark, routed - {u.slot.table})[0] == "unreachable"
    assert walk(want.rules, alloc.deposit(511, config.pinning.mark_mask), routed)[0] == (
        "unreachable")


def test_uplink_going_down_changes_only_its_leaf() -> None:
    config = many(64, spread=29)
    up = D.compute(config, all_up(config))
    obs = all_up(config)
    obs = D.Observed({k: v for k, v in obs.links.items() if k != "up9"}, {}, {})
    down = D.compute(config, obs)
    gone = set(up.rules) - set(down.rules)
    assert set(down.rules) < set(up.rules) and len(gone) == 1
    assert next(iter(gone)).table == next(u for u in up.uplinks if u.interface == "up9").slot.table


def test_no_leaf_up_no_tree() -> None:
    config = many(16, spread=5)
    none_up = D.compute(config, D.Observed({}, {}, {}, ipv6=False))
    assert [r.action for r in none_up.rules] == ["goto", "lookup", "unreachable", "nop"]


def test_too_many_uplinks_for_the_band() -> None:
    with pytest.raises(model.ConfigError, match="room for"):
        many(model.MAX_INTERFACES + 1, mask=0x03FF0000)


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
    assert [type(s) for s in steps] == [reconcile.RouteReplace]
    undo = reconcile.undo(steps[0])
    assert isinstance(undo, reconcile.RouteReplace) and undo.route.gateway == "198.51.100.1"


def test_remove_is_built_from_the_same_slice() -> None:
    want = D.compute(CFG, observed())
    have = Installed(want.rules, want.routes, "listing", "x", {"conf/ppp0/rp_filter": 1})
    obs = observed(sysctls={"conf/ppp0/rp_filter": 2})
    steps = reconcile.diff(D.nothing(CFG), obs, have)
    kinds = [type(s) for s in steps]
    assert kinds.count(reconcile.RuleDel) == len(want.rules)
    assert kinds.count(reconcile.RouteDel) == len(want.routes)
    assert any(isinstance(s, reconcile.SysctlSet) and s.restore for s in steps)
    assert steps[-1] == reconcile.Ruleset("nftables", "connpin", None, "listing")


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
