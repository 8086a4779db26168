"""The daemon's event sockets: rtnetlink (link, address, route groups) and nf_tables, read
without blocking, with bounded work.

The reads are our own (recv into one buffer) so an overflow (ENOBUFS) is seen exactly where the
kernel reports it and no message waits in a hidden queue. Route changes that cannot concern an
uplink are dropped in the kernel by a socket filter (classify.route_filter); what passes is looked
at header-first (classify.worth_decoding) and only the rest is decoded by pyroute2. One read takes
at most MAX_DATAGRAMS datagrams: the loop comes back for the rest after its timers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

from connpin.watch import classify

#: Most datagrams taken from one socket per wake-up.
MAX_DATAGRAMS = 512
SO_ATTACH_FILTER = 26


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER with a struct sock_fprog pointing at `program` (the kernel copies it)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Events:
    """One netlink socket subscribed to the daemon's multicast groups."""

    def __init__(self, rcvbuf: int | None = None, nftables: bool = False) -> None:
        self.nftables = nftables
        if nftables:  # nf_tables changes: another program flushing or editing connpin's table
            from pyroute2.netlink.nfnetlink import NFNLGRP_NFTABLES
            from pyroute2.netlink.nfnetlink.nftsocket import NFTSocket

            self.ipr: Any = NFTSocket()
            groups = 1 << (NFNLGRP_NFTABLES - 1)
        else:
            from pyroute2.iproute import IPRoute
            from pyroute2.netlink import rtnl

            self.ipr = IPRoute()
            groups = (rtnl.RTMGRP_LINK | rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV4_ROUTE
                      | rtnl.RTMGRP_IPV6_IFADDR | rtnl.RTMGRP_IPV6_ROUTE)
        self.sock: socket.socket = self.ipr.asyncore.socket
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.filtered = False
        if not nftables:
            with contextlib.suppress(OSError):  # without it, worth_decoding still filters
                attach_filter(self.sock, classify.route_filter())
                self.filtered = True
        self.ipr.bind(groups=groups)
        self.sock.setblocking(False)
        self._buf = bytearray(1 << 18)
        self.skipped = 0  # messages looked at and not decoded (for tests and the bench)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, foreign: Callable[[int], bool] = lambda index: False
             ) -> tuple[list[Any], bool, bool]:
        """(decoded messages, overflowed, more left): at most MAX_DATAGRAMS datagrams."""
        out: list[Any] = []
        overflow = False
        view = memoryview(self._buf)
        for _ in range(MAX_DATAGRAMS):
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                return out, overflow, False
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    overflow = True
                    continue
                raise
            if n == 0:
                return out, overflow, False
            if self.nftables:
                out.extend(self.ipr.marshal.parse(bytes(view[:n])))
                continue
            for kind, off, length in classify.messages(view[:n]):
                if classify.worth_decoding(view, off, kind, foreign):
                    out.extend(self.ipr.marshal.parse(bytes(view[off:off + length])))
                else:
                    self.skipped += 1
        return out, overflow, True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ipr.close()
