"""The ip-rule mark tree on the real kernel: with many uplinks configured, every mark still routes
out of its own uplink, a down uplink's mark is refused, unmarked traffic is untouched, and an
uplink going down and up changes only its own rule."""

from __future__ import annotations

import json

from helpers import KERNEL

from connpin import alloc
from connpin.lab import Lab
from connpin.model import RULE_BAND

pytestmark = KERNEL

MASK = 0x00FF0000
SPARES = 30


def config(lab: Lab, spares: list[str]) -> tuple[str, dict[str, int]]:
    """Two real ISPs and the spare interfaces, on scattered marks (an irregular tree)."""
    ifaces = [lab.iface(1), lab.iface(2), *spares]
    marks = {name: alloc.deposit((i * 37) % 255 + 1, MASK) for i, name in enumerate(ifaces)}
    text = "[pinning]\nmark_mask = 0x00ff0000\n"
    for i, name in enumerate(ifaces):
        text += (f'[[uplink]]\nname = "u{i}"\ninterface = "{name}"\nmasquerade = true\n'
                 f"mark = {marks[name]:#x}\n")
    return text, marks


def route_dev(lab: Lab, mark: int) -> str | None:
    """The interface the router's kernel picks for the internet host with this mark."""
    p = lab.exec("router", ["ip", "-j", "route", "get", Lab.SERVER, "mark", hex(mark)],
                 check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)[0]["dev"]


def band(lab: Lab) -> list[dict]:
    rules = json.loads(lab.exec("router", ["ip", "-j", "-4", "rule", "show"]).stdout)
    return [r for r in rules if 10000 <= r["priority"] < 10000 + RULE_BAND]


def test_every_mark_routes_to_its_uplink_through_the_tree() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        spares = lab.add_spare_uplinks(SPARES)
        text, marks = config(lab, spares)
        lab.write_config(text)
        lab.uplink_up(1)
        lab.uplink_up(2)
        lab.connpin("apply")
        n = len(marks)
        assert len(band(lab)) == 4 + 2 * n - 1
        for iface, mark in marks.items():
            assert route_dev(lab, mark) == iface, iface
        assert route_dev(lab, 0) == lab.iface(1)  # unmarked: main's preferred default route
        assert route_dev(lab, alloc.deposit(254, MASK)) is None  # a mark nobody has: refused
        assert lab.uplink_of(lab.connect()) == 1  # and traffic flows

        # an uplink going down removes its leaf only; its mark is refused, the others still route
        before = band(lab)
        lab.uplink_down(2)
        lab.connpin("apply")
        after = band(lab)
        assert len(after) == len(before) - 1
        assert route_dev(lab, marks[lab.iface(2)]) is None
        for iface, mark in marks.items():
            if iface != lab.iface(2):
                assert route_dev(lab, mark) == iface, iface
        lab.uplink_up(2)
        lab.connpin("apply")
        assert band(lab) == before
        assert "nothing to change" in lab.connpin("apply").stdout
        assert lab.connpin("status", check=False).returncode == 0
        lab.connpin("remove")
        assert band(lab) == []
