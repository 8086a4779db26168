"""Upgrade path on the real kernel (issue 12): rules and routes an older connpin installed
without `protocol 201`, with a state file recording its slice, are adopted by `apply` and
`remove`; nothing is left behind, and another tool's rule in the band is still never taken."""

from __future__ import annotations

import json
import os

import pytest

from connpin.kernel import netns
from connpin.kernel.netlink import RT_SCOPE_LINK, Netlink
from connpin.lab import Lab

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BAND, RANGE = range(10000, 11024), range(1000, 1255)


def as_old_connpin(lab: Lab) -> int:
    """Re-install connpin's rules and routes as an older connpin did: rules without a protocol,
    routes with pyroute2's default (static). Returns how many objects."""
    with netns.inside(lab.ns("router")):
        nl = Netlink()
        try:
            nl.links()
            rules, routes = nl.rules(BAND), nl.routes(RANGE)
            for r in rules:
                nl.rule("add", r, owned=False)
                nl.rule("del", r)
            for rt in routes:
                index = nl.ipr.link_lookup(ifname=rt.oif)[0]
                nl.ipr.route("replace", dst="0.0.0.0/0", table=rt.table, oif=index,
                             gateway=rt.gateway, scope=0 if rt.gateway else RT_SCOPE_LINK,
                             proto="static")
            assert not nl.rules(BAND) and not nl.routes(RANGE), "none left with protocol 201"
            return len(rules) + len(routes)
        finally:
            nl.close()


def connpins(lab: Lab) -> tuple[list, list]:
    rules = json.loads(lab.exec("router", ["ip", "-j", "rule", "show"]).stdout)
    routes = json.loads(lab.exec("router", ["ip", "-j", "route", "show", "table", "all"]).stdout)
    return ([r for r in rules if r.get("priority", 0) in BAND],
            [r for r in routes if isinstance(r.get("table"), str) and r["table"].isdigit()
             and int(r["table"]) in RANGE])


@pytest.mark.parametrize("first", ["apply", "remove"])
def test_an_older_connpins_rules_and_routes_are_adopted(first: str) -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.uplink_up(1)
        lab.uplink_up(2)
        lab.connpin("apply")
        assert as_old_connpin(lab) > 4
        check = lab.connpin("check", check=False)
        assert check.returncode == 2, "before adopting, they look like another tool's"
        lab.exec("router", ["ip", "rule", "add", "priority", "10500", "from", "10.9.0.0/16",
                            "lookup", "main"])  # another tool's: never adopted
        p = lab.connpin(first, check=False)
        assert "adopted (installed by an older connpin)" in p.stdout, p.stdout
        if first == "apply":
            assert p.returncode == 2 and "10500" in p.stderr, p.stderr  # the foreign rule
            lab.exec("router", ["ip", "rule", "del", "priority", "10500"])
            lab.connpin("apply")
            rules, routes = connpins(lab)
            assert rules and all(r.get("protocol") == "201" for r in rules), rules
            assert routes and all(r.get("protocol") == "201" for r in routes), routes
            lab.connpin("remove")
        else:
            assert p.returncode == 0, p.stderr
        rules, routes = connpins(lab)
        assert [r["priority"] for r in rules] == ([10500] if first == "remove" else []), rules
        assert routes == [], routes
