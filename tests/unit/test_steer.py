"""failback and on_down decisions: pure, from the uplinks' state before and after."""

from connpin import desired as D
from connpin import model, steer

CFG = model.loads("""
[pinning]
failback = "flush"
failback_idle = 45
[[uplink]]
name = "fibre"
interface = "ppp0"
priority = 1
[[uplink]]
name = "cable"
interface = "eth1"
gateway = "auto"
priority = 2
failback = "flush-idle"
on_down = "flush"
[[uplink]]
name = "lte"
interface = "wwan0"
priority = 3
failback = "keep"
""")


def states(*up: str) -> list[D.UplinkState]:
    links = {n: D.Link(n, i, True, ("192.0.2.1",)) for i, n in enumerate(up, 2)}
    gws = {"eth1": "198.51.100.1"}
    return list(D.compute(CFG, D.Observed(links, gws, {})).uplinks)


def test_first_apply_is_not_a_transition() -> None:
    assert steer.actions(CFG, None, states("ppp0", "eth1", "wwan0")) == []


def test_nothing_changed_nothing_flushed() -> None:
    assert steer.actions(CFG, ["ppp0", "eth1"], states("ppp0", "eth1")) == []


def test_preferred_returning_flushes_outbound_of_every_less_preferred_uplink() -> None:
    acts = steer.actions(CFG, ["eth1", "wwan0"], states("ppp0", "eth1", "wwan0"))
    assert {(a.uplink, a.outbound_only, a.idle, a.follow, a.trigger) for a in acts} == {
        ("cable", True, None, False, "ppp0"), ("lte", True, None, False, "ppp0")}
    assert "fibre (ppp0, priority 1) came up" in str(acts[0])


def test_uplink_override_flush_idle_and_keep() -> None:
    acts = steer.actions(CFG, ["wwan0"], states("eth1", "wwan0"))
    assert [(a.uplink, a.idle, a.follow) for a in acts] == [("lte", 45, True)]
    assert steer.actions(CFG, [], states("wwan0")) == [], "lte's failback is keep"


def test_less_preferred_coming_up_flushes_nothing() -> None:
    assert steer.actions(CFG, ["ppp0"], states("ppp0", "wwan0")) == []


def test_on_down_flush_takes_every_connection_of_that_uplink() -> None:
    acts = steer.actions(CFG, ["ppp0", "eth1"], states("ppp0"))
    assert [(a.uplink, a.outbound_only, a.idle) for a in acts] == [("cable", False, None)]
    assert steer.actions(CFG, ["ppp0", "wwan0"], states("wwan0")) == [], "on_down keep"
