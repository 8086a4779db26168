"""reconcile without a kernel: the slice it reads (`scope`), the steps' undo, and `run`'s
rollback, driven by a fake machine that keeps its state in memory and fails on demand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from connpin import desired as D
from connpin import model, reconcile
from connpin.reconcile import (
    ApplyError,
    Installed,
    RouteAdd,
    RouteDel,
    RouteReplace,
    RuleAdd,
    RuleDel,
    Ruleset,
    Scope,
    Step,
    SysctlSet,
)
from connpin.values import Recorded

CFG = model.loads(
    '[[uplink]]\nname = "isp-a"\ninterface = "ppp0"\n'
    '[[uplink]]\nname = "isp-b"\ninterface = "eth1"\ngateway = "198.51.100.1"\n'
)


def link(name: str, index: int) -> D.Link:
    return D.Link(name, index, True, ("192.0.2.2",))


# -- scope: which backend, and which former slices to read --------------------------------

def test_scope_without_a_record_reads_the_slice_now() -> None:
    s = reconcile.scope(CFG, D.Observed())
    assert s == Scope((CFG.pinning.rule_range,), (CFG.pinning.table_range,), (4, 6),
                      "nftables", "connpin")
    assert reconcile.scope(CFG, D.Observed(ipv6=False)).families == (4,)


def test_scope_reads_the_former_ranges_and_table() -> None:
    old = Recorded(range(20000, 21024), range(3000, 3255), "oldpin", "nftables")
    s = reconcile.scope(CFG, D.Observed(recorded=old))
    assert s.rule_ranges == (CFG.pinning.rule_range, range(20000, 21024))
    assert s.table_ranges == (CFG.pinning.table_range, range(3000, 3255))
    assert s.stale_table == "oldpin" and not s.stale_chains
    same = Recorded(CFG.pinning.rule_range, CFG.pinning.table_range, "connpin")
    assert reconcile.scope(CFG, D.Observed(recorded=same)) == reconcile.scope(CFG, D.Observed())


def test_scope_follows_a_change_of_backend() -> None:
    ipt = replace(CFG, pinning=replace(CFG.pinning, backend="iptables"))
    was_nft = Recorded(nft_table="connpin", backend="nftables")
    s = reconcile.scope(ipt, D.Observed(recorded=was_nft))
    assert (s.backend, s.stale_table, s.stale_chains) == ("iptables", "connpin", False)
    # no nft tool: no nft table to read either
    assert reconcile.scope(ipt, D.Observed(recorded=was_nft, nft=False)).stale_table is None
    was_ipt = Recorded(nft_table="connpin", backend="iptables")
    s = reconcile.scope(CFG, D.Observed(recorded=was_ipt))
    assert (s.backend, s.stale_table, s.stale_chains) == ("nftables", None, True)


def test_auto_backend_is_decided_from_the_facts() -> None:
    auto = replace(CFG, pinning=replace(CFG.pinning, backend="auto"))
    assert D.backend(auto, D.Observed(nft=True)) == "nftables"
    assert D.backend(auto, D.Observed(nft=False)) == "iptables"
    assert D.backend(CFG, D.Observed(nft=False)) == "nftables"  # only "auto" asks


# -- undo ------------------------------------------------------------------------------------

def test_every_step_has_its_undo() -> None:
    rule = D.Rule(10002, "lookup", table=1000, fwmark=0x10000, fwmask=0xFF0000)
    a, b = D.Route(1000, "eth1", "198.51.100.1"), D.Route(1000, "eth1", "198.51.100.9")
    pairs: list[tuple[Step, Step | None]] = [
        (RuleAdd(rule), RuleDel(rule)),
        (RuleDel(rule), RuleAdd(rule)),
        (RouteAdd(a), RouteDel(a)),
        (RouteDel(a), RouteAdd(a)),
        (RouteReplace(b, a), RouteReplace(a, b)),
        (SysctlSet("conf/eth1/rp_filter", 2, 1), SysctlSet("conf/eth1/rp_filter", 1, 2)),
        (SysctlSet("conf/eth1/rp_filter", 2, None), None),
        (Ruleset("nftables", "connpin", "new", None), Ruleset("nftables", "connpin", None, "new")),
    ]
    for step, back in pairs:
        assert reconcile.undo(step) == back


# -- run's rollback ----------------------------------------------------------------------------

class Boom(Exception):
    pass


class Fake:
    """A machine in memory: links and sysctls it shows, and connpin's installed slice as a
    mutable state that executing steps changes. `fail_at`: the 0-based execute call that raises
    (None: none); `undo_fails`: steps whose execution always raises."""

    def __init__(self, fail_at: int | None = None, undo_fails: tuple[Step, ...] = ()) -> None:
        self.links = {"ppp0": link("ppp0", 2), "eth1": link("eth1", 3)}
        self.sysctls = {"conf/all/rp_filter": 1, "conf/ppp0/rp_filter": 1,
                        "conf/eth1/rp_filter": 0, "conf/ppp0/src_valid_mark": 0,
                        "conf/eth1/src_valid_mark": 0}
        self.rules: list[D.Rule] = []
        self.routes: dict[tuple[int, int], D.Route] = {}
        self.ruleset: str | None = None
        self.calls = 0
        self.fail_at, self.undo_fails = fail_at, undo_fails
        self.executed: list[Step] = []
        self.commits = 0

    def snapshot(self) -> tuple:
        return (sorted(self.rules, key=D.sort_key), dict(self.routes), self.ruleset,
                dict(self.sysctls))

    def observe(self, config: model.Config) -> D.Observed:
        return D.Observed(dict(self.links), {}, dict(self.sysctls), ipv6=False)

    def installed(self, scope: Scope) -> Installed:
        return Installed(tuple(self.rules), tuple(self.routes.values()), self.ruleset,
                         reconcile.sha(self.ruleset))

    def execute(self, step: Step) -> None:
        n, self.calls = self.calls, self.calls + 1
        if n == self.fail_at or step in self.undo_fails:
            raise Boom(f"call {n} fails")
        self.executed.append(step)
        match step:
            case RuleAdd(rule):
                self.rules.append(rule)
            case RuleDel(rule):
                self.rules.remove(rule)
            case RouteAdd(route) | RouteReplace(route):
                self.routes[route.family, route.table] = route
            case RouteDel(route):
                del self.routes[route.family, route.table]
            case SysctlSet(key, value):
                self.sysctls[key] = value
            case Ruleset(text=text):
                self.ruleset = text

    def committed(self, want: D.Desired) -> None:
        self.commits += 1


def _apply_steps() -> list[Step]:
    return reconcile.run(CFG, Fake(), effects=False).steps


def test_fake_applies_and_converges() -> None:
    m = Fake()
    steps = reconcile.run(CFG, m).steps
    kinds = {type(s) for s in steps}
    assert {SysctlSet, Ruleset, RouteAdd, RuleAdd} <= kinds
    assert m.commits == 1
    assert reconcile.verify(CFG, m) == []


@pytest.mark.parametrize("at", range(len(_apply_steps())))
def test_a_failing_step_rolls_back_what_was_done(at: int) -> None:
    m = Fake(fail_at=at)
    before = m.snapshot()
    steps = reconcile.run(CFG, Fake(), effects=False).steps
    with pytest.raises(ApplyError) as e:
        reconcile.run(CFG, m)
    assert e.value.step == steps[at]
    assert e.value.undo_failed == []
    assert str(e.value).startswith(f"{steps[at]}: call {at} fails; previous state kept")
    assert m.snapshot() == before
    assert m.commits == 0
    # undone newest first
    undone = m.executed[at:]
    assert undone == [reconcile.undo(s) for s in reversed(steps[:at])]


def test_a_failing_change_of_an_applied_state_puts_it_back() -> None:
    m = Fake()
    reconcile.run(CFG, m)
    m.links["ppp0"] = replace(m.links["ppp0"], up=False)  # ppp0 goes down: its rule and route go
    steps = reconcile.run(CFG, m, effects=False).steps
    assert {type(s) for s in steps} == {RuleDel, RouteDel}
    for at in range(len(steps)):
        before = m.snapshot()
        m.calls, m.fail_at = 0, at
        with pytest.raises(ApplyError):
            reconcile.run(CFG, m)
        assert m.snapshot() == before, f"step {at} ({steps[at]}) left the state changed"


def test_an_undo_that_fails_is_reported() -> None:
    steps = _apply_steps()
    first_rule = next(i for i, s in enumerate(steps) if isinstance(s, RuleAdd))
    stuck = reconcile.undo(steps[first_rule])
    assert stuck is not None
    m = Fake(fail_at=first_rule + 1, undo_fails=(stuck,))
    with pytest.raises(ApplyError) as e:
        reconcile.run(CFG, m)
    assert len(e.value.undo_failed) == 1 and e.value.undo_failed[0].startswith(f"{stuck}: call ")
    assert "and undo failed" in str(e.value)
    assert m.commits == 0
