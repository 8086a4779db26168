"""Conntrack entries by mark, through ctnetlink: count, list and delete, filtered in the kernel.

Requests are encoded with pyroute2's ctnetlink messages; the kernel filters dumps by
`(ct mark & mask) == mark`, so only the entries of one uplink ever cross into userspace.
Replies are read by walking message and attribute headers for the few fields connpin needs,
because pyroute2's general decoder costs about ten times what the conntrack tool does per entry
(docs/performance.md) and a busy router holds a million entries. Deletes are batched: each one
carries back the original tuple, zone and id exactly as the kernel gave them, so it can only hit
that entry.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF

# enum ctattr_type and nested enums (include/uapi/linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 7, 8, 9, 10
CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 12, 18, 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START = 1

IPS_SEEN_REPLY, IPS_ASSURED, IPS_SRC_NAT, IPS_DST_NAT = 0x2, 0x4, 0x10, 0x20

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 47: "gre"}

_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16, _BE32, _BE64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")


class ConntrackError(Exception):
    pass


def _attrs(buf: bytes | memoryview, off: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) for the attributes in buf[off:end]."""
    out = {}
    while off + 4 <= end:
        ln, typ = _NLA.unpack_from(buf, off)
        if ln < 4:
            break
        out[typ & NLA_TYPE_MASK] = (off + 4, off + ln)
        off += (ln + 3) & ~3
    return out


@dataclass(frozen=True)
class Endpoint:
    src: str
    dst: str
    sport: int | None
    dport: int | None


def _tuple(buf: bytes, span: tuple[int, int]) -> tuple[int, Endpoint]:
    t = _attrs(buf, *span)
    ip = _attrs(buf, *t[CTA_TUPLE_IP]) if CTA_TUPLE_IP in t else {}
    addrs = []
    for v4, v6 in ((1, 3), (2, 4)):  # CTA_IP_V4_SRC/DST, CTA_IP_V6_SRC/DST
        if v4 in ip:
            addrs.append(socket.inet_ntop(socket.AF_INET, bytes(buf[ip[v4][0]:ip[v4][0] + 4])))
        elif v6 in ip:
            addrs.append(socket.inet_ntop(socket.AF_INET6,
                                          bytes(buf[ip[v6][0]:ip[v6][0] + 16])))
        else:
            addrs.append("?")
    proto, sport, dport = 0, None, None
    if CTA_TUPLE_PROTO in t:
        p = _attrs(buf, *t[CTA_TUPLE_PROTO])
        if CTA_PROTO_NUM in p:
            proto = buf[p[CTA_PROTO_NUM][0]]
        if CTA_PROTO_SRC_PORT in p:
            sport = _BE16.unpack_from(buf, p[CTA_PROTO_SRC_PORT][0])[0]
        if CTA_PROTO_DST_PORT in p:
            dport = _BE16.unpack_from(buf, p[CTA_PROTO_DST_PORT][0])[0]
    return proto, Endpoint(addrs[0], addrs[1], sport, dport)


@dataclass(frozen=True)
class Entry:
    """One conntrack entry, decoded for display and selection."""

    family: int
    proto: int
    orig: Endpoint
    reply: Endpoint
    status: int
    timeout: int  # seconds left before the kernel expires it
    mark: int
    tcp_state: int | None
    packets: int | None  # both directions; None when accounting is off
    bytes: int | None
    start_ns: int | None  # CTA_TIMESTAMP start (nf_conntrack_timestamp=1), else None
    handle: bytes  # what a delete request needs (family, tuple, zone, id), as the kernel sent it

    @property
    def proto_name(self) -> str:
        return PROTOS.get(self.proto, str(self.proto))

    @property
    def state(self) -> str:
        if self.tcp_state is not None:
            return TCP_STATES[self.tcp_state] if self.tcp_state < len(TCP_STATES) else "?"
        if not self.status & IPS_SEEN_REPLY:
            return "UNREPLIED"
        return "ASSURED" if self.status & IPS_ASSURED else "REPLIED"

    @property
    def nat(self) -> str | None:
        """The translated address: the uplink address (SNAT) or the inside host (DNAT)."""
        if self.status & IPS_SRC_NAT:
            return self.reply.dst
        if self.status & IPS_DST_NAT:
            return self.reply.src
        return None


def _handle(buf: bytes, a: dict[int, tuple[int, int]], family: int) -> bytes:
    """Family, original tuple, zone and id, byte for byte as the kernel sent them."""
    handle = bytes([family])
    for key in (CTA_TUPLE_ORIG, CTA_ZONE, CTA_ID):
        if key in a:
            s, e = a[key]
            handle += bytes(buf[s - 4:e + (-(e - s) % 4)])
    return handle


def _entry(buf: bytes, off: int, end: int) -> Entry:
    family = buf[off + 16]
    a = _attrs(buf, off + 20, end)
    proto, orig = _tuple(buf, a[CTA_TUPLE_ORIG])
    _, reply = _tuple(buf, a[CTA_TUPLE_REPLY])

    def be32(key: int, default: int = 0) -> int:
        return _BE32.unpack_from(buf, a[key][0])[0] if key in a else default

    tcp_state = None
    if CTA_PROTOINFO in a:
        pi = _attrs(buf, *a[CTA_PROTOINFO])
        if CTA_PROTOINFO_TCP in pi:
            tcp = _attrs(buf, *pi[CTA_PROTOINFO_TCP])
            if CTA_PROTOINFO_TCP_STATE in tcp:
                tcp_state = buf[tcp[CTA_PROTOINFO_TCP_STATE][0]]
    packets = nbytes = None
    for key in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
        if key in a:
            c = _attrs(buf, *a[key])
            packets = (packets or 0) + _BE64.unpack_from(buf, c[CTA_COUNTERS_PACKETS][0])[0]
            nbytes = (nbytes or 0) + _BE64.unpack_from(buf, c[CTA_COUNTERS_BYTES][0])[0]
    start = None
    if CTA_TIMESTAMP in a:
        ts = _attrs(buf, *a[CTA_TIMESTAMP])
        if CTA_TIMESTAMP_START in ts:
            start = _BE64.unpack_from(buf, ts[CTA_TIMESTAMP_START][0])[0]
    return Entry(family, proto, orig, reply, be32(CTA_STATUS), be32(CTA_TIMEOUT),
                 be32(CTA_MARK), tcp_state, packets, nbytes, start, _handle(buf, a, family))


class Conntrack:
    """A ctnetlink socket in the current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.buf = bytearray(1 << 20)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------
    def _dump_request(self, mark: int, mask: int) -> bytes:
        from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

        msg = nfct_msg.create_from(mark=mark, mark_mask=mask)
        self.seq += 1
        msg["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        msg["header"]["sequence_number"] = self.seq
        msg["nfgen_family"] = socket.AF_UNSPEC  # both IPv4 and IPv6
        msg.encode()
        return bytes(msg.data)

    def _messages(self) -> Iterator[tuple[memoryview, int, int]]:
        """(buffer, start, end) of each reply message of the current dump, until DONE."""
        view = memoryview(self.buf)
        while True:
            n = self.sock.recv_into(self.buf)
            off = 0
            while off + 16 <= n:
                ln, typ, _flags, _seq, _pid = _HDR.unpack_from(self.buf, off)
                if typ == NLMSG_DONE:
                    return
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", self.buf, off + 16)[0]
                    if err:
                        raise ConntrackError(f"ctnetlink: {os.strerror(err)}")
                    return
                yield view, off, off + ln
                off += (ln + 3) & ~3

    # -- reads ---------------------------------------------------------------------------
    def count(self, mark: int, mask: int, with_bytes: bool = False) -> tuple[int, int | None]:
        """Entries whose `mark & mask == mark`, and their bytes (both directions) if asked
        and accounting is on. Only message headers are read unless bytes are wanted."""
        self.sock.send(self._dump_request(mark, mask))
        n, total = 0, None
        for buf, off, end in self._messages():
            n += 1
            if with_bytes:
                a = _attrs(buf, off + 20, end)
                for key in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
                    if key in a:
                        c = _attrs(buf, *a[key])
                        total = (total or 0) + _BE64.unpack_from(
                            buf, c[CTA_COUNTERS_BYTES][0])[0]
        return n, total

    def entries(self, mark: int, mask: int) -> list[Entry]:
        self.sock.send(self._dump_request(mark, mask))
        return [_entry(buf, off, end) for buf, off, end in self._messages()]

    # -- deletes -------------------------------------------------------------------------
    def flush(self, mark: int, mask: int) -> None:
        """Every entry with `mark & mask == mark`, deleted by the kernel in one request."""
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

        s = NFCTSocket(nfgen_family=socket.AF_UNSPEC)
        try:
            s.flush(mark=mark, mark_mask=mask)
        finally:
            s.close()

    def delete(self, entries: list[Entry] | list[bytes], batch: int = 256) -> int:
        """Delete these entries (by original tuple, zone and id); returns how many the kernel
        removed. Entries that are already gone are not counted."""
        removed = 0
        for i in range(0, len(entries), batch):
            chunk = entries[i:i + batch]
            parts, first = [], self.seq + 1
            for e in chunk:
                h = e if isinstance(e, bytes) else e.handle
                self.seq += 1
                payload = struct.pack("=BBH", h[0], 0, 0) + h[1:]
                parts.append(_HDR.pack(16 + len(payload),
                                       (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                                       NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + payload)
            self.sock.send(b"".join(parts))
            removed += self._acks(first, len(chunk))
        return removed

    def _acks(self, first: int, want: int) -> int:
        ok = seen = 0
        while seen < want:
            n = self.sock.recv_into(self.buf)
            off = 0
            while off + 16 <= n:
                ln, typ, _f, seq, _p = _HDR.unpack_from(self.buf, off)
                if typ == NLMSG_ERROR and first <= seq < first + want:
                    seen += 1
                    err = -struct.unpack_from("=i", self.buf, off + 16)[0]
                    if err == 0:
                        ok += 1
                    elif err != errno.ENOENT:
                        raise ConntrackError(f"ctnetlink delete: {os.strerror(err)}")
                off += (ln + 3) & ~3
        return ok


def accounting() -> bool:
    """Whether conntrack counts bytes in this namespace (net.netfilter.nf_conntrack_acct)."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_acct") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


_TIMEOUT_KEYS = {s: f"nf_conntrack_tcp_timeout_{s.lower()}" for s in TCP_STATES[1:8]}
_TIMEOUT_KEYS["SYN_SENT2"] = "nf_conntrack_tcp_timeout_syn_sent"


def timeouts() -> dict[str, int]:
    """This namespace's conntrack timeouts, for estimating how long an entry has been idle."""
    keys = set(_TIMEOUT_KEYS.values()) | {
        "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream",
        "nf_conntrack_icmp_timeout", "nf_conntrack_icmpv6_timeout",
        "nf_conntrack_generic_timeout"}
    out = {}
    for k in keys:
        try:
            with open(f"/proc/sys/net/netfilter/{k}") as f:
                out[k] = int(f.read())
        except (OSError, ValueError):
            pass
    return out


def idle(e: Entry, table: dict[str, int]) -> int | None:
    """Seconds since the entry last saw a packet: its state's full timeout minus what is left
    (every packet re-arms the timeout). None when the full timeout is unknown."""
    if e.tcp_state is not None:
        key = _TIMEOUT_KEYS.get(e.state)
    elif e.proto == 17:
        key = "nf_conntrack_udp_timeout_stream" if e.status & IPS_ASSURED \
            else "nf_conntrack_udp_timeout"
    elif e.proto == 1:
        key = "nf_conntrack_icmp_timeout"
    elif e.proto == 58:
        key = "nf_conntrack_icmpv6_timeout"
    else:
        key = "nf_conntrack_generic_timeout"
    full = table.get(key) if key else None
    return None if full is None else max(0, full - e.timeout)
