"""connpin choosing new connections' uplinks, on the real kernel (issue 14): weights share new
connections, a [[class]] steers by destination port, sticky keeps a LAN host on one uplink, a
dead uplink gets no new connection (and leaving it out changes only map elements), and the
router's own connections follow the choice too.

In the lab ISP 1 is the main table's preferred uplink, so every connection that reaches ISP 2
here was sent there by connpin's choice, not by the routing table. Uplinks are taken as dead
through CONNPIN_DEAD (until the daemon feeds the health tracker's verdict).
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from helpers import KERNEL

from connpin import alloc
from connpin.health.probe import SO_MARK
from connpin.kernel import counters as kc
from connpin.kernel import netns
from connpin.lab import Lab, faults
from connpin.lab.echo import EchoServers
from connpin.model import DEFAULT_MARK_MASK

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


def _router_connection(lab: Lab, *, bind: str | None = None, device: str | None = None,
                       mark: int | None = None, timeout: float = 3.0
                       ) -> tuple[socket.socket | None, str | None]:
    """A TCP connection the router itself opens to the internet host's echo port (kept open):
    (the socket, the address the server saw) or (None, None) if it failed."""
    s = netns.socket_in(lab.ns("router"), socket.AF_INET)
    try:
        if device:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if mark:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, struct.pack("=I", mark))
        if bind:
            s.bind((bind, 0))
        s.settimeout(timeout)
        s.connect((lab.SERVER, 7))
        s.sendall(b"hello\n")
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(200)
            if not chunk:
                break
            line += chunk
        return s, line.decode().split()[-1]
    except OSError:
        s.close()
        return None, None


def _pinned_to(lab: Lab, sock: socket.socket) -> str | None:
    """The uplink connpin pinned the router's connection from `sock` to (by conntrack mark)."""
    src = "{}:{}".format(*sock.getsockname())
    for group in json.loads(lab.connpin("connections", "--json").stdout)["uplinks"]:
        if any(c["src"] == src for c in group["connections"]):
            return group["uplink"]
    return None


def _mark(k: int) -> int:
    return alloc.deposit(k, DEFAULT_MARK_MASK)


def test_the_routers_own_connections_follow_the_choice_with_the_right_source() -> None:
    """isp2 is the best tier, main's default route is isp1's (ppp0, metric 10). The router's own
    new connections are chosen in `output` and re-routed; masquerade gives them isp2's address
    even when the socket was bound to isp1's. A marked socket is not chosen (health probes), and
    a device-bound one stays on its device, pinned to that device's uplink."""
    tiers = {1: f"priority = 2\nweight = 1\nmark = {_mark(1):#x}",
             2: f"priority = 1\nweight = 1\nmark = {_mark(2):#x}"}
    with choosing(lambda lab: config(lab, tiers)) as lab:
        held = []
        for how in ({}, {"bind": lab.address(1)}, {"bind": lab.address(2)}):
            sock, seen = _router_connection(lab, **how)
            assert sock is not None, how
            held.append(sock)
            assert seen == lab.address(2), (how, seen)
            assert _pinned_to(lab, sock) == "isp2", how
        sock, seen = _router_connection(lab, mark=_mark(1))
        assert sock is not None and seen == lab.address(1), "a marked socket is not chosen"
        held.append(sock)
        sock, seen = _router_connection(lab, device=lab.iface(1))
        assert sock is not None and seen == lab.address(1), "bound to ppp0: leaves by ppp0"
        held.append(sock)
        assert _pinned_to(lab, sock) == "isp1", "and is pinned to ppp0's uplink"
        for s in held:
            s.close()


def test_without_masquerade_the_routers_chosen_connections_keep_mains_source() -> None:
    """What the README says: an uplink without masquerade does not fix the source of the
    router's own connections chosen onto it, so they leave with the source the main table
    picked (isp1's) and isp2's anti-spoofing (rp_filter) drops them; a socket bound to isp2's
    own address is fine."""
    tiers = {1: "priority = 2\nweight = 1", 2: "priority = 1\nweight = 1"}

    def text_of(lab: Lab) -> str:
        text = config(lab, tiers)
        at = text.index('name = "isp2"')
        return text[:at] + text[at:].replace("masquerade = true", "masquerade = false", 1)

    with choosing(text_of) as lab:
        sock, seen = _router_connection(lab)
        assert sock is None and seen is None, "dropped by isp2: the source was isp1's"
        sock, seen = _router_connection(lab, bind=lab.address(2))
        assert sock is not None and seen == lab.address(2)
        sock.close()


def _new_counted(lab: Lab, open_one: Callable[[], object]) -> dict[str, int]:
    """By how much each uplink's new-connections counter ([metrics]) grew while open_one ran."""
    def now() -> dict[str, int]:
        return {n: c.new for n, c in kc.read(lab.ns("router"), "connpin").items()}

    before = now()
    open_one()
    after = now()
    return {n: v - before.get(n, 0) for n, v in after.items() if v != before.get(n, 0)}


@pytest.mark.parametrize("choose", [True, False])
def test_each_new_connection_is_counted_once_on_the_uplink_it_leaves_by(choose: bool) -> None:
    """[metrics]: a new connection counts once, on its final uplink. The router's own: `output`
    chooses isp2 and a socket bound to ppp0 is re-pinned to isp1 in `postrouting` (it counted
    on both uplinks); a SYN retransmitted into a blackhole counts once; a marked socket (health
    probes) once. The LAN's too, with and without connpin choosing."""
    tiers = {k: f"mark = {_mark(k):#x}" + (f"\npriority = {3 - k}\nweight = 1" if choose else "")
             for k in (1, 2)}
    main, other = ("isp2", "isp1") if choose else ("isp1", "isp2")
    with choosing(lambda lab: config(lab, tiers, "\n[metrics]\n")) as lab:
        held: list[socket.socket] = []

        def router(**how: object) -> Callable[[], None]:
            def run() -> None:
                sock, _ = _router_connection(lab, **how)
                assert sock is not None, how
                held.append(sock)
            return run

        try:
            assert _new_counted(lab, router()) == {main: 1}
            assert _new_counted(lab, router(device=lab.iface(1))) == {"isp1": 1}
            assert _new_counted(lab, router(device=lab.iface(2))) == {"isp2": 1}
            assert _new_counted(lab, router(mark=_mark(2))) == {"isp2": 1}
            assert _new_counted(lab, lambda: lab.connect(timeout=5.0)) == {main: 1}
            faults.blackhole(lab, 2 if choose else 1)  # SYNs unanswered: retransmitted
            lost = _new_counted(lab, lambda: _router_connection(lab, timeout=2.5))
            assert lost == {main: 1}, lost
            assert other not in lost
        finally:
            for s in held:
                s.close()
