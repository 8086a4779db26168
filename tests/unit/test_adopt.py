"""Upgrade path (connpin.adopt): what an older connpin installed without its protocol."""

from __future__ import annotations

from connpin.adopt import adoptable
from connpin.values import Recorded, Route, Rule

RULE = Rule(10002, "lookup", table=1000, fwmark=0x01000000, fwmask=0xFF000000)
ROUTE = Route(1000, "ppp0")
SLICE = Recorded(rules=range(10000, 11024), tables=range(1000, 1255))


def test_exact_matches_inside_the_recorded_slice_are_adopted() -> None:
    assert adoptable(SLICE, [RULE], [ROUTE], [RULE], [ROUTE]) == ([RULE], [ROUTE])


def test_nothing_without_a_recorded_slice() -> None:
    assert adoptable(None, [RULE], [ROUTE], [RULE], [ROUTE]) == ([], [])
    assert adoptable(Recorded(), [RULE], [ROUTE], [RULE], [ROUTE]) == ([], [])


def test_outside_the_slice_or_not_what_connpin_would_install_stays_foreign() -> None:
    elsewhere = Recorded(rules=range(20000, 21024), tables=range(2000, 2255))
    assert adoptable(elsewhere, [RULE], [ROUTE], [RULE], [ROUTE]) == ([], [])
    other_rule = Rule(10500, "lookup", table=254)  # another tool's rule in the band
    other_route = Route(1000, "wg0")  # another tool's route in the range
    assert adoptable(SLICE, [other_rule], [other_route], [RULE], [ROUTE]) == ([], [])
    moved = Route(1000, "ppp0", gateway="192.0.2.1")  # not what connpin installs now
    assert adoptable(SLICE, [], [moved], [RULE], [ROUTE]) == ([], [])
