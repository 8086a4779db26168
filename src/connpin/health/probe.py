"""Probes sent THROUGH a chosen uplink, whatever the routing table says: ICMP echo, TCP connect
and DNS query, many at once, non-blocking, each with its own timeout (the I/O adapter of health
tracking; it decides nothing: results go to the tracker).

How a probe leaves by uplink U (`Via`): SO_BINDTODEVICE to U's interface (the route lookup is
then restricted to routes out of that device, so main's default via U is used even when another
uplink's default route is preferred), and/or SO_MARK with U's mark (connpin's `ip rule fwmark`
sends it to U's table), and U's own source address. All sockets are created inside the given
network namespace (`connpin.kernel.netns`).

- ICMP echo: an unprivileged ping socket (SOCK_DGRAM, when net.ipv4.ping_group_range allows our
  group; the kernel matches replies to the socket) or else a raw socket (root): one per uplink
  and family, our own identifier, replies matched by identifier, sequence and source address
  (ICMPv6 raw sockets get a filter that passes only echo replies).
- TCP connect: a non-blocking connect with SO_LINGER 0 (closed by a RST, no TIME_WAIT). A
  SYN-ACK *or a RST* counts as an answer: either way the packet crossed the ISP to the target
  and back, which is all a path check wants to know (a closed port on a live host is a fine
  target). An ICMP error (host/net unreachable) or no answer within the timeout is a loss.
- DNS: a query for the root's NS record over UDP from a fresh random port; any reply with our
  id counts (even an error code: the resolver answered), as does ICMP port unreachable.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import selectors
import socket
import struct
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from connpin.health.targets import Target
from connpin.kernel import netns

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
ICMP6_FILTER = 1
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129
#: What a connect()/send() error means for a probe: the path answered (True) or not.
ANSWERED_ERRORS = {errno.ECONNREFUSED}


@dataclass(frozen=True)
class Via:
    """How probes leave by one uplink: its interface, its mark, its source addresses."""

    device: str | None = None
    mark: int | None = None
    source: str | None = None  # IPv4
    source6: str | None = None

    def source_for(self, family: int) -> str | None:
        return self.source6 if family == 6 else self.source


@dataclass(frozen=True)
class Result:
    key: Hashable  # the caller's name for the uplink
    target: Target
    sent_at: float
    rtt: float | None  # None: lost
    done_at: float
    error: str | None = None  # why it was lost, when known


@dataclass
class _Pending:
    key: Hashable
    target: Target
    sent_at: float
    deadline: float
    sock: socket.socket | None = None  # tcp/dns: the probe's own socket
    ident: tuple[int, int] | None = None  # icmp: (id, seq)
    dns_id: int = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _dns_query(qid: int) -> bytes:
    # header: id, flags 0 (no recursion wanted), 1 question; question: root, NS, IN
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + b"\0" + struct.pack("!HH", 2, 1)


@dataclass
class _IcmpSocket:
    sock: socket.socket
    family: int
    raw: bool
    ident: int
    seq: itertools.count = field(default_factory=lambda: itertools.count(1))


class Prober:
    """Sends probes and collects their results; single-threaded, driven by `poll`."""

    def __init__(self, namespace: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.namespace = namespace
        self.clock = clock
        self._sel = selectors.DefaultSelector()
        self._icmp: dict[tuple[Via, int], _IcmpSocket] = {}
        self._icmp_pending: dict[tuple[int, int, int], _Pending] = {}  # (fd, id, seq)
        self._pending: list[_Pending] = []
        self._done: list[Result] = []
        self.sent = 0  # probes sent
        self.packets = 0  # packets those probes cost (Target.cost)
        self.packets_by: dict[Hashable, int] = {}  # the same per uplink (the caller's key)

    # -- sockets ----------------------------------------------------------------------------------
    def _socket(self, family: int, kind: int, proto: int, via: Via) -> socket.socket:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        with netns.inside(self.namespace):
            s = socket.socket(af, kind, proto)
        try:
            s.setblocking(False)
            if via.mark is not None:
                # as u32 bytes: marks with the top bit set overflow setsockopt's C int
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, struct.pack("=I", via.mark))
            if via.device is not None:
                s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, via.device.encode())
            src = via.source_for(family)
            if src is not None:
                s.bind((src, 0))
        except BaseException:
            s.close()
            raise
        return s

    def _icmp_socket(self, via: Via, family: int) -> _IcmpSocket:
        key = (via, family)
        got = self._icmp.get(key)
        if got is not None:
            return got
        proto = socket.IPPROTO_ICMPV6 if family == 6 else socket.IPPROTO_ICMP
        try:
            s = self._socket(family, socket.SOCK_DGRAM, proto, via)
            raw, ident = False, 0  # the kernel sets the identifier (the socket's "port")
        except PermissionError:
            s = self._socket(family, socket.SOCK_RAW, proto, via)
            raw, ident = True, secrets.randbelow(0xFFFF) + 1
            if family == 6:  # pass echo replies only (a set bit blocks its type)
                words = [0xFFFFFFFF] * 8
                words[ICMP6_ECHOREPLY >> 5] &= ~(1 << (ICMP6_ECHOREPLY & 31))
                s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))
        if not raw:
            ident = s.getsockname()[1]
        got = _IcmpSocket(s, family, raw, ident)
        self._icmp[key] = got
        self._sel.register(s, selectors.EVENT_READ, ("icmp", got))
        return got

    # -- sending ----------------------------------------------------------------------------------
    def send(self, key: Hashable, via: Via, target: Target, timeout: float) -> None:
        """Start one probe; its Result comes out of `poll` (at the latest after `timeout`)."""
        now = self.clock()
        p = _Pending(key, target, now, now + timeout)
        self.sent += 1
        self.packets += target.cost
        self.packets_by[key] = self.packets_by.get(key, 0) + target.cost
        try:
            if target.kind == "icmp":
                self._send_icmp(p, via)
            elif target.kind == "tcp":
                self._send_tcp(p, via)
            else:
                self._send_dns(p, via)
        except OSError as e:
            if p.sock is not None:
                p.sock.close()
            answered = e.errno in ANSWERED_ERRORS
            self._finish(p, answered, None if answered else f"send: {e.strerror or e}")
            return
        self._pending.append(p)

    def _send_icmp(self, p: _Pending, via: Via) -> None:
        fam = p.target.family
        ic = self._icmp_socket(via, fam)
        seq = next(ic.seq) & 0xFFFF
        kind = ICMP6_ECHO if fam == 6 else ICMP_ECHO
        payload = struct.pack("!d", p.sent_at)
        head = struct.pack("!BBHHH", kind, 0, 0, ic.ident if ic.raw else 0, seq)
        if ic.raw and fam == 4:
            head = struct.pack("!BBHHH", kind, 0, _checksum(head + payload), ic.ident, seq)
        ic.sock.sendto(head + payload, (p.target.address, 0))
        p.ident = (ic.ident, seq)
        self._icmp_pending[(ic.sock.fileno(), ic.ident, seq)] = p

    def _send_tcp(self, p: _Pending, via: Via) -> None:
        s = self._socket(p.target.family, socket.SOCK_STREAM, 0, via)
        p.sock = s
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rc = s.connect_ex((p.target.address, p.target.port))
        if rc not in (0, errno.EINPROGRESS):
            raise OSError(rc, os.strerror(rc))
        self._sel.register(s, selectors.EVENT_WRITE, ("tcp", p))

    def _send_dns(self, p: _Pending, via: Via) -> None:
        s = self._socket(p.target.family, socket.SOCK_DGRAM, 0, via)
        p.sock = s
        p.dns_id = secrets.randbelow(0x10000)
        s.connect((p.target.address, p.target.port))
        s.send(_dns_query(p.dns_id))
        self._sel.register(s, selectors.EVENT_READ, ("dns", p))

    # -- receiving --------------------------------------------------------------------------------
    def _finish(self, p: _Pending, answered: bool, error: str | None = None,
                at: float | None = None) -> None:
        now = self.clock() if at is None else at
        if p.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(p.sock)
            p.sock.close()
            p.sock = None
        rtt = now - p.sent_at if answered else None
        self._done.append(Result(p.key, p.target, p.sent_at, rtt, now, error))

    def _read_icmp(self, ic: _IcmpSocket) -> None:
        fd = ic.sock.fileno()
        while True:
            try:
                data, addr = ic.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: the probe's timeout decides
            now = self.clock()
            if ic.family == 4 and ic.raw:
                if len(data) < 20:
                    continue
                data = data[(data[0] & 0x0F) * 4:]
            if len(data) < 8:
                continue
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
            if kind != (ICMP6_ECHOREPLY if ic.family == 6 else ICMP_ECHOREPLY):
                continue
            if not ic.raw:
                ident = ic.ident
            p = self._icmp_pending.get((fd, ident, seq))
            if p is None or addr[0].split("%")[0] != p.target.address:
                continue
            del self._icmp_pending[(fd, ident, seq)]
            self._pending.remove(p)
            self._finish(p, True, at=now)

    def _handle(self, what: str, obj: object) -> None:
        if what == "icmp":
            assert isinstance(obj, _IcmpSocket)
            self._read_icmp(obj)
            return
        assert isinstance(obj, _Pending)
        p = obj
        if p.sock is None:
            return
        if what == "tcp":
            err = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._pending.remove(p)
            ok = err == 0 or err in ANSWERED_ERRORS
            self._finish(p, ok, None if ok else os.strerror(err))
            return
        try:
            data = p.sock.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._pending.remove(p)
            ok = e.errno in ANSWERED_ERRORS
            self._finish(p, ok, None if ok else e.strerror)
            return
        if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == p.dns_id:
            self._pending.remove(p)
            self._finish(p, True)

    def _expire(self, now: float) -> None:
        keep = []
        for p in self._pending:
            if p.deadline <= now:
                if p.ident is not None:
                    self._icmp_pending = {k: v for k, v in self._icmp_pending.items()
                                          if v is not p}
                self._finish(p, False, "timeout", at=p.deadline)
            else:
                keep.append(p)
        self._pending = keep

    def poll(self, until: float) -> list[Result]:
        """Wait for answers until `until` (clock time) or until some result is ready; return
        the results finished so far (answers and timeouts), oldest first. Answers already
        waiting in a socket are read before any timeout is declared, so a late caller does not
        turn them into losses."""
        while True:
            now = self.clock()
            nearest = min([until, *(p.deadline for p in self._pending)])
            for key, _ in self._sel.select(max(0.0, nearest - now) if not self._done else 0):
                what, obj = key.data
                self._handle(what, obj)
            now = self.clock()
            self._expire(now)
            if self._done or now >= until:
                break
        out, self._done = self._done, []
        out.sort(key=lambda r: r.done_at)
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for p in self._pending:
            if p.sock is not None:
                p.sock.close()
        self._pending.clear()
        self._icmp_pending.clear()
        for ic in self._icmp.values():
            ic.sock.close()
        self._icmp.clear()
        self._sel.close()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
