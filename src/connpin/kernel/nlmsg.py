"""Netlink datagrams walked message by message, for the adapters that talk raw netlink where
pyroute2 is too slow or has no message class (kernel/counters.py: nf_tables objects,
kernel/tableroutes.py: one request per routing table, lab/delay.py: nfnetlink_queue)."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

#: struct nlmsghdr: length, type, flags, sequence, port id.
HDR = struct.Struct("=IHHII")


def walk(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, start, end) of each message in one datagram: `buf[start:end]` is the
    whole message, header included. OSError(EPROTO) on a header that cannot be right."""
    off = 0
    while off + HDR.size <= len(buf):
        length, kind, flags, seq, _ = HDR.unpack_from(buf, off)
        if length < HDR.size or off + length > len(buf):
            raise OSError(errno.EPROTO, "truncated or bad netlink message")
        yield kind, flags, seq, off, off + length
        off += (length + 3) & ~3
