"""`connpin init`'s pure part: peers -> interfaces, routes -> uplinks in metric order, and a
commented config that always loads (whatever shape the machine has)."""

from __future__ import annotations

import pytest

from connpin import alloc, model, starter
from connpin.starter import DefaultRoute as R
from connpin.starter import Peer


@pytest.mark.parametrize("text,iface", [
    ("plugin rp-pppoe.so eth1\nunit 3\nuser x\n", "ppp3"),
    ("unit 1\nunit 2\n", "ppp2"),  # the last wins, as in pppd
    ("unit 1\nifname dsl0\n", "dsl0"),  # ifname names the interface
    ("# unit 4\nnoauth\n", None),
    ("unit 5 # fixed\n", "ppp5"),
    ("ifname 'bad name'\n", None),
    ("unit x\n", None),
    ("", None),
])
def test_peer_interface(text, iface) -> None:
    assert starter.peer_interface(text) == iface


def test_peers_skip_backups_and_sort() -> None:
    got = starter.peers({"b": "unit 1", "a": "", "a~": "", ".hidden": "", "c.dpkg-old": ""})
    assert got == [Peer("a", None), Peer("b", "ppp1")]


@pytest.mark.parametrize("text,name", [("wan0", "wan0"), ("Telekom.DSL", "telekom-dsl"),
                                       ("__", "uplink"), ("x" * 40, "x" * 32),
                                       ("-ppp_", "ppp")])
def test_uplink_name(text, name) -> None:
    assert starter.uplink_name(text) == name


def test_uplinks_follow_metrics_and_merge_peers() -> None:
    routes = [R("wan1", 4, 100, "198.51.100.1"), R("ppp0", 4, 10, None),
              R("wan1", 4, 50, "198.51.100.9"), R("wan1", 6, 1024, "fe80::1"),
              R("lo", 4, 0, None), R("tun6", 6, 5, None)]
    peers = [Peer("dsl", "ppp0"), Peer("lte", None), Peer("backup", None)]
    got = starter.candidates(routes, peers)
    assert [(c.name, c.interface, c.metric) for c in got] == [
        ("dsl", "ppp0", 10), ("wan1", "wan1", 50), ("tun6", "tun6", 5),
        ("backup", "ppp2", None), ("lte", "ppp1", None)]
    assert got[1].gateway == "198.51.100.9" and got[1].ipv6 and not got[0].ipv6
    assert got[0].peer == "dsl" and not got[0].guessed
    assert got[3].guessed and got[3].peer == "backup"
    assert got[2].gateway is None and got[2].ipv6  # IPv6 only: no IPv4 gateway


def test_duplicate_names_and_colliding_marks_are_made_distinct() -> None:
    mask = model.DEFAULT_MARK_MASK
    # two names that hash to the same mark
    seen: dict[int, str] = {}
    a = b = ""
    for i in range(10000):
        n = f"u{i}"
        h = alloc.home(n, mask)
        if h in seen:
            a, b = seen[h], n
            break
        seen[h] = n
    got = starter.candidates([R(a, 4, 1, None), R(b, 4, 2, None)], [Peer(a, None)])
    assert got[1].mark is not None and got[0].mark is None
    model.loads(starter.render(got))
    dup = starter.candidates([R("wan", 4, 1, None)], [Peer("wan", "ppp0")])
    assert [c.name for c in dup] == ["wan", "wan-2"]


@pytest.mark.parametrize("routes,peers", [
    ([], []),
    ([R("eth0", 4, 0, "192.0.2.1")], []),
    ([R("ppp0", 4, 0, None), R("wan1", 4, 10, "198.51.100.1"), R("wan1", 6, 5, "fe80::1")],
     [Peer("dsl-provider", None), Peer("other", "ppp7")]),
    ([R(f"eth{i}", 4, i, "192.0.2.1") for i in range(40)], []),
])
def test_render_always_loads(routes, peers) -> None:
    cands = starter.candidates(routes, peers)
    text = starter.render(cands)
    config = model.loads(text, "<init>")
    assert [u.name for u in config.uplinks] == [c.name for c in cands]
    assert [u.interface for u in config.uplinks] == [c.interface for c in cands]
    for c, u in zip(cands, config.uplinks, strict=True):
        assert (u.gateway == "auto") == bool(c.gateway)
        assert u.masquerade is False
    assert all(len(line) <= 100 for line in text.splitlines())


def test_render_explains_what_it_found() -> None:
    text = starter.render(starter.candidates(
        [R("wan1", 4, 10, "198.51.100.1")], [Peer("dsl", None)]), "ns1", "/x/peers")
    assert "#   default routes: the main table of network namespace ns1\n" in text
    assert "#   pppd peers:     /x/peers\n" in text
    assert "# found: default route via 198.51.100.1 dev wan1, metric 10" in text
    assert "# found: pppd peer 'dsl' (`pppd call dsl`)" in text
    assert "add `unit 0` (or `ifname ppp0`) to /etc/ppp/peers/dsl" in text
    assert 'gateway = "auto"' in text and "# priority = 2" in text
    assert "No uplink found" in starter.render([])
