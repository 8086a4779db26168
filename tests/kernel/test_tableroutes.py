"""kernel/tableroutes.py on the real kernel: the routes of a table range, read with raw requests,
are exactly those pyroute2's IPRoute reads table by table (what the conflict check read before),
in both families, for ids below and above 256, beside a foreign table and routes just outside
the range."""

from __future__ import annotations

import errno
import socket

from helpers import KERNEL
from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from connpin.kernel import netns, tableroutes
from connpin.lab import Lab

pytestmark = KERNEL


def _pyroute2(family: int, tables: range) -> list:
    out = []
    with IPRoute(strict_check=True) as ipr:
        for t in tables:
            try:
                out += list(ipr.route("dump", family=family, dump_filter={}, table=t))
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise
    return out


def _key(m) -> tuple:  # noqa: ANN001 - a pyroute2 message
    return (m["family"], m.get_attr("RTA_TABLE"), m.get_attr("RTA_DST"), m["dst_len"],
            m.get_attr("RTA_OIF"), m["proto"], m["type"])


def test_a_range_reads_the_same_routes_as_pyroute2_table_by_table() -> None:
    with Lab(uplinks=("ppp",), ipv6=True) as lab:
        batch = [
            "route add default dev lan0 table 1000 proto 201",
            "route add 192.0.2.0/24 dev lan0 table 1100",  # someone else's, inside
            "route add 198.51.100.0/24 dev lan0 table 999",  # just outside
            "route add 198.51.100.0/24 dev lan0 table 1255",
            "route add 203.0.113.0/24 dev lan0 table 105 proto static",  # an id below 256
            "route add ::/0 dev lan0 table 1254 proto 201",
            "route add 2001:db8::/64 dev lan0 table 1001",
        ] + [f"route add 10.200.{i >> 8}.{i & 255}/32 dev lan0 table 5000" for i in range(2000)]
        lab.exec("router", ["ip", "-batch", "-"], input="\n".join(batch) + "\n")
        with netns.inside(lab.ns("router")):
            for family in (socket.AF_INET, socket.AF_INET6):
                for tables in (range(1000, 1255), range(100, 110), range(1255, 1256)):
                    ours = sorted(map(_key, tableroutes.read(family, tables)))
                    assert ours == sorted(map(_key, _pyroute2(family, tables))), (family, tables)
            got = {(_key(m)[1], _key(m)[2]) for m in tableroutes.read(socket.AF_INET,
                                                                      range(1000, 1255))}
            assert got == {(1000, None), (1100, "192.0.2.0")}
            got6 = {(_key(m)[1], _key(m)[2]) for m in tableroutes.read(socket.AF_INET6,
                                                                       range(1000, 1255))}
            assert got6 == {(1001, "2001:db8::"), (1254, None)}
