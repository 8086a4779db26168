"""connpin choosing new connections' uplinks, on the real kernel (issue 14): weights share new
connections, a [[class]] steers by destination port, sticky keeps a LAN host on one uplink, a
dead uplink gets no new connection (and leaving it out changes only map elements), and the
router's own connections follow the choice too.

In the lab ISP 1 is the main table's preferred uplink, so every connection that reaches ISP 2
here was sent there by connpin's choice, not by the routing table. Uplinks are taken as dead
through CONNPIN_DEAD (until the daemon feeds the health tracker's verdict).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from helpers import KERNEL

from connpin.lab import Lab
from connpin.lab.echo import EchoServers

pytestmark = KERNEL

#: New connections for the 3:1 split: a 5% band is 3.6 standard deviations at 1000.
SPLIT_CONNECTIONS = 1000


def config(lab: Lab, uplinks: dict[int, str], extra: str = "") -> str:
    """The lab's default config with keys added to uplink k (e.g. "priority = 1\\nweight = 3")."""
    text = lab.default_config(masquerade=True)
    for k, keys in uplinks.items():
        text = text.replace(f'name = "isp{k}"\n', f'name = "isp{k}"\n{keys}\n')
    return text + extra


@contextmanager
def choosing(text_of, dead: str = "", ipv6: bool = False) -> Iterator[Lab]:
    """A lab with both uplinks up and connpin applied with `text_of(lab)` as its config."""
    with Lab(uplinks=("ppp", "ppp"), ipv6=ipv6) as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        lab.write_config(text_of(lab))
        lab.connpin("apply", env={"CONNPIN_DEAD": dead})
        yield lab


def uplinks_of(lab: Lab, n: int, src: str = "lan", port: int = 7,
               dst: str | None = None) -> Counter:
    """Open n short connections (a few at a time): how many left by each uplink (None: failed
    or left by no uplink)."""
    def one(_: int) -> str | None:
        return lab.connect(src=src, dst=dst, port=port, timeout=5.0)

    with ThreadPoolExecutor(8) as pool:
        peers = list(pool.map(one, range(n)))
    return Counter(lab.uplink_of(p) if p else None for p in peers)


def test_weights_3_to_1_share_new_connections() -> None:
    weights = {1: "priority = 1\nweight = 3", 2: "priority = 1\nweight = 1"}
    with choosing(lambda lab: config(lab, weights)) as lab:
        got = uplinks_of(lab, SPLIT_CONNECTIONS)
        print(f"\n3:1 over {SPLIT_CONNECTIONS} new connections: {dict(got)}")
        assert got[None] == 0, got
        assert abs(got[1] / SPLIT_CONNECTIONS - 0.75) <= 0.05, got


def test_a_class_steers_by_destination_port() -> None:
    cls = '\n[[class]]\nname = "alt"\nuplinks = ["isp2"]\nprotocol = "tcp"\ndport = "9000-9001"\n'
    tiers = {1: "priority = 1\nweight = 1", 2: "priority = 2\nweight = 1"}
    extra = EchoServers()
    try:
        with choosing(lambda lab: config(lab, tiers, cls)) as lab:
            extra.listen(lab.ns("net"), 9000)
            extra.start()
            assert uplinks_of(lab, 40, port=9000) == Counter({2: 40}), "the class: isp2"
            assert uplinks_of(lab, 40, port=7) == Counter({1: 40}), "the default: best tier"
    finally:
        extra.close()


def test_sticky_keeps_one_host_on_one_uplink() -> None:
    cls = '\n[[class]]\nname = "bank"\nuplinks = ["isp1", "isp2"]\nprotocol = "tcp"\n' \
          'dport = 7\nsticky = "source"\n'
    weights = {1: "priority = 1\nweight = 1", 2: "priority = 1\nweight = 1"}
    with choosing(lambda lab: config(lab, weights, cls)) as lab:
        got = uplinks_of(lab, 60)
        assert len(got) == 1 and None not in got, got
        # from the router (another source address) the same holds, on its own uplink
        got = uplinks_of(lab, 20, src="router")
        assert len(got) == 1 and None not in got, got


def _without_elements(listing: str) -> str:
    return re.sub(r"\n\t\telements = \{[^}]*\}", "", listing)


def test_new_connections_avoid_a_dead_uplink_and_only_map_elements_change() -> None:
    weights = {1: "priority = 1\nweight = 1", 2: "priority = 1\nweight = 1"}
    with choosing(lambda lab: config(lab, weights)) as lab:
        got = uplinks_of(lab, 100)
        assert got[1] > 20 and got[2] > 20, got
        listing = lab.exec("router", ["nft", "list", "table", "inet", "connpin"]).stdout
        lab.connpin("apply", env={"CONNPIN_DEAD": "isp1"})
        assert uplinks_of(lab, 100) == Counter({2: 100}), "isp1 is dead: none of them"
        got = uplinks_of(lab, 20, src="router")
        assert got == Counter({2: 20}), f"the router's own connections too: {got}"
        dead = lab.exec("router", ["nft", "list", "table", "inet", "connpin"]).stdout
        assert dead != listing and _without_elements(dead) == _without_elements(listing)
        lab.connpin("apply", env={"CONNPIN_DEAD": ""})
        got = uplinks_of(lab, 100)
        assert got[1] > 20 and got[2] > 20, f"isp1 alive again shares again: {got}"


def test_a_dead_best_tier_fails_over_to_the_next() -> None:
    tiers = {1: "priority = 1\nweight = 1", 2: "priority = 2\nweight = 1"}
    with choosing(lambda lab: config(lab, tiers), dead="isp1") as lab:
        assert uplinks_of(lab, 40) == Counter({2: 40})
        lab.connpin("apply", env={"CONNPIN_DEAD": ""})
        assert uplinks_of(lab, 40) == Counter({1: 40})


def test_ipv6_is_chosen_too_and_dead_uplinks_leave_both_families() -> None:
    weights = {1: "priority = 1\nweight = 1", 2: "priority = 1\nweight = 1"}
    with choosing(lambda lab: config(lab, weights), ipv6=True) as lab:
        got = uplinks_of(lab, 100, dst=lab.SERVER6)
        assert got[1] > 20 and got[2] > 20, got
        lab.connpin("apply", env={"CONNPIN_DEAD": "isp1"})
        assert uplinks_of(lab, 60, dst=lab.SERVER6) == Counter({2: 60})
        assert uplinks_of(lab, 60) == Counter({2: 60})
