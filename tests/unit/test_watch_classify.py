"""The daemon's event classifier (connpin.watch.classify): the kernel-side route filter (run by a
small interpreter here, attached to a real socket in tests/kernel/test_watch.py), the header-level
filter on raw bytes, and what decoded messages say."""

from __future__ import annotations

import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from connpin.watch import classify
from connpin.watch.classify import (
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Classifier,
)


def route(kind: int = RTM_NEWROUTE, dst_len: int = 0, table: int = 254) -> bytes:
    body = struct.pack("=BBBBBBBBI", 2, dst_len, 0, 0, table, 3, 0, 1, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def addr(index: int, kind: int = RTM_NEWADDR) -> bytes:
    body = struct.pack("=BBBBI", 2, 24, 0, 0, index)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def link(index: int, kind: int = RTM_NEWLINK) -> bytes:
    body = struct.pack("=BBHiII", 0, 0, 1, index, 1, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


@pytest.mark.parametrize(("packet", "passes"), [
    (route(), True),
    (route(RTM_DELROUTE), True),
    (route(table=classify.RT_TABLE_COMPAT), True),  # a table >= 256: RTA_TABLE says which
    (route(dst_len=24), False),  # a BGP table's worth of prefixes: dropped in the kernel
    (route(table=100), False),
    (route(RTM_DELROUTE, dst_len=32, table=254), False),
    (addr(7), True),
    (link(7, RTM_DELLINK), True),
])
def test_the_kernel_side_filter(packet: bytes, passes: bool) -> None:
    assert classify.run_filter(classify.route_filter(), packet) is passes
    assert len(classify.route_filter()) % 8 == 0


def test_header_level_filter_and_message_split() -> None:
    known = {3: False, 4: True}  # index -> foreign (known and not an uplink)
    data = route(dst_len=24) + route() + addr(3) + addr(4) + addr(99) + link(4)
    split = classify.messages(data)
    assert [k for k, _, _ in split] == [RTM_NEWROUTE, RTM_NEWROUTE, RTM_NEWADDR, RTM_NEWADDR,
                                        RTM_NEWADDR, RTM_NEWLINK]
    keep = [classify.worth_decoding(data, off, kind, lambda i: known.get(i, False))
            for kind, off, _ in split]
    # foreign prefix: no; main default: yes; uplink's address: yes; foreign interface's: no;
    # an interface not seen yet: yes (cannot be ruled out); links: always (names)
    assert keep == [False, True, True, False, True, True]
    assert classify.messages(data[:-3]) == split[:-1]  # a truncated message is not read


def _link(kind: int, index: int, name: str, up: bool = True) -> ifinfmsg:
    m = ifinfmsg()
    m["header"] = {"type": kind}
    m["index"], m["flags"] = index, 1 if up else 0
    m["attrs"] = [("IFLA_IFNAME", name)]
    return m


def _addr(index: int, address: str) -> ifaddrmsg:
    m = ifaddrmsg()
    m["header"] = {"type": RTM_NEWADDR}
    m["index"] = index
    m["attrs"] = [("IFA_LOCAL", address)]
    return m


def _route(kind: int, oif: int | None, gateway: str | None = None, table: int = 254,
           dst_len: int = 0) -> rtmsg:
    m = rtmsg()
    m["header"] = {"type": kind}
    m["table"], m["dst_len"] = min(table, 252) if table > 255 else table, dst_len
    m["attrs"] = [("RTA_TABLE", table)] + ([("RTA_OIF", oif)] if oif else []) + (
        [("RTA_GATEWAY", gateway)] if gateway else [])
    return m


def classifier() -> Classifier:
    return Classifier(lambda name: name.startswith("ppp") or name == "wan1", "connpin")


def test_links_names_renames_and_foreign_interfaces() -> None:
    c = classifier()
    assert c.classify(_link(RTM_NEWLINK, 5, "ppp0", up=False)) == [("ppp0", "appeared (down)")]
    assert c.classify(_link(RTM_NEWLINK, 5, "ppp0")) == [("ppp0", "up")]
    assert c.classify(_link(RTM_NEWLINK, 6, "lan0")) == []  # not an uplink
    assert c.foreign(6) and not c.foreign(5) and not c.foreign(42)
    assert c.classify(_link(RTM_NEWLINK, 5, "x0")) == [("ppp0", "renamed to x0")]
    assert c.classify(_link(RTM_DELLINK, 5, "x0")) == []
    assert 5 not in c.names


def test_addresses_and_default_routes() -> None:
    c = classifier()
    c.learn({5: "wan1", 6: "lan0"})
    assert c.classify(_addr(5, "198.51.100.2")) == [("wan1", "address 198.51.100.2 added")]
    assert c.classify(_addr(6, "10.77.0.1")) == []
    assert c.classify(_addr(9, "10.0.0.1")) == [("?", "address 10.0.0.1 added")]  # unknown yet
    assert c.classify(_route(RTM_NEWROUTE, 5, "198.51.100.19")) == [
        ("wan1", "default via 198.51.100.19 dev wan1 added")]
    assert c.classify(_route(RTM_DELROUTE, 5)) == [("wan1", "default dev wan1 removed")]
    assert c.classify(_route(RTM_NEWROUTE, None)) == [("?", "multipath default route changed")]
    assert c.classify(_route(RTM_NEWROUTE, 5, table=1000)) == []
    assert c.classify(_route(RTM_NEWROUTE, 5, dst_len=24)) == []


def test_nft_events_about_connpins_table_only() -> None:
    from pyroute2.netlink.nfnetlink.nftsocket import nft_table_msg

    def msg(name: str, family: int = classify.NFPROTO_INET, kind: int = 2) -> nft_table_msg:
        m = nft_table_msg()
        m["header"] = {"type": (10 << 8) | kind}
        m["nfgen_family"] = family
        m["attrs"] = [("NFTA_TABLE_NAME", name)]
        return m

    c = classifier()
    assert c.classify_nft(msg("connpin")) == "nft table inet connpin: table deleted"
    assert c.classify_nft(msg("filter")) is None
    assert c.classify_nft(msg("connpin", family=2)) is None
    c.nft_table = "other"
    assert c.classify_nft(msg("connpin")) is None
