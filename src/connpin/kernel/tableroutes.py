"""The routes in a range of routing-table ids, for the conflict check (kernel/inventory.py):
others' routes in connpin's table range. Every id is asked of the kernel on its own, with strict
checking (NETLINK_GET_STRICT_CHK, Linux >= 4.20) so the kernel filters by table and others'
tables (a full BGP table, a mesh VPN's routes) are never sent: the cost grows with the range,
not with the routes elsewhere.

Why not pyroute2's IPRoute for the requests: each of its requests costs ~0.35 ms (its asyncio
core), 90 ms for connpin's 255 tables in both families, on every hook call. Here one raw
rtnetlink socket sends each request as a few fixed bytes and walks the replies header by header
(like kernel/counters.py): ~7 us an id. Only route messages (rare: a table that exists) are
decoded, by pyroute2's rtmsg, so callers get the same messages as from IPRoute.

Requests go one at a time: the kernel refuses (EBUSY) a second dump on a socket whose previous
one is still open, which a table holding routes leaves open until the next read; measured,
pipelining saved under 2 ms of the ~4.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from pyroute2.netlink.rtnl.rtmsg import rtmsg

from connpin.kernel import nlmsg

SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
RTA_TABLE = 15
#: Reads of one table that the kernel interrupted (it changed meanwhile) before giving up.
RETRIES = 5
_HDR = nlmsg.HDR
_RTMSG = struct.Struct("=BBBBBBBBI")
_U32_ATTR = struct.Struct("=HHI")
_ERRNO = struct.Struct("=i")


def request(family: int, table: int, seq: int) -> bytes:
    """RTM_GETROUTE dump of one table: rtm_table holds ids below 256, RTA_TABLE any id."""
    body = (_RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0)
            + _U32_ATTR.pack(8, RTA_TABLE, table))
    return _HDR.pack(_HDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq,
                     0) + body


def _read_one(sock: socket.socket, family: int, table: int, seq: int) -> tuple[list[bytes], bool]:
    """The route messages of one table (none when it does not exist), and whether the kernel
    marked the dump interrupted."""
    sock.send(request(family, table, seq))
    routes: list[bytes] = []
    interrupted = False
    while True:
        buf = sock.recv(1 << 16)
        for kind, flags, got, start, end in nlmsg.walk(buf):
            if got != seq:  # not this request's (none is pending on this socket)
                continue
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if kind == RTM_NEWROUTE:
                routes.append(buf[start:end])
            elif kind in (NLMSG_DONE, NLMSG_ERROR):
                code = (_ERRNO.unpack_from(buf, start + _HDR.size)[0]
                        if end - start >= _HDR.size + 4 else 0)
                if code == -errno.ENOENT:  # no such table
                    return [], False
                if code:
                    raise OSError(-code, f"route dump of table {table}: {os.strerror(-code)}")
                return routes, interrupted


def read(family: int, tables: range) -> list[rtmsg]:
    """The routes (decoded, as pyroute2 gives them) of every table id in `tables`, one family
    (socket.AF_INET or AF_INET6). Strict checking is required, as by kernel/netlink.py: without
    it each request would return every table."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))
        out: list[rtmsg] = []
        seq = 0
        for table in tables:
            if table <= 0:  # 0 would ask for every table
                raise ValueError(f"not a routing table id: {table}")
            for _ in range(RETRIES):
                seq += 1
                routes, interrupted = _read_one(sock, family, table, seq)
                if not interrupted:
                    break
            else:
                raise OSError(errno.EAGAIN, f"table {table} kept changing while read")
            for raw in routes:
                msg = rtmsg(raw)
                msg.decode()
                out.append(msg)
        return out
