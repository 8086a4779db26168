"""In-process echo servers and TCP probes living in lab namespaces.

Threads and sockets instead of subprocesses: a socket stays in the namespace it was created in,
so one thread can serve every namespace, and a probe starts in microseconds, not a fork.

Line protocol: the client sends a line, the server answers with the same line followed by the
peer address it sees, e.g. ``p 7`` -> ``p 7 100.64.2.2``. That peer address tells which uplink
(which NAT address) a connection really uses.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable

from connpin.kernel import netns

#: Longest line a server accepts before it drops the connection (it is a lab, not a service).
MAX_LINE = 4096


class _Conn:
    __slots__ = ("sock", "peer", "inbuf", "outbuf")

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self.inbuf, self.outbuf = b"", b""


class EchoServers:
    """One thread serving every listening socket of a lab, whatever namespace each lives in."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._listeners: list[socket.socket] = []
        self._conns: dict[socket.socket, _Conn] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def listen(self, ns: str | None, port: int, host: str = "0.0.0.0") -> None:
        """Listen on host:port inside namespace `ns` (before or after start); "::" listens
        for IPv6 only (the IPv4 listener is separate)."""
        v6 = ":" in host
        s = netns.socket_in(ns, socket.AF_INET6 if v6 else socket.AF_INET)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._listeners.append(s)
        self._sel.register(s, selectors.EVENT_READ, "listen")
        self._wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lab-echo", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        """Stop the thread and close every socket (idempotent)."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for s in [*self._listeners, *self._conns]:
            with contextlib.suppress(OSError):
                s.close()
        self._listeners.clear()
        self._conns.clear()
        for s in (self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, events in self._sel.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        sock.recv(4096)
                elif key.data == "listen":
                    self._accept(sock)
                else:
                    self._serve(sock, events)

    def _accept(self, lsock: socket.socket) -> None:
        try:
            sock, addr = lsock.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns[sock] = _Conn(sock, addr[0])
        self._sel.register(sock, selectors.EVENT_READ, "conn")

    def _drop(self, sock: socket.socket) -> None:
        self._conns.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        sock.close()

    def _serve(self, sock: socket.socket, events: int) -> None:
        conn = self._conns[sock]
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop(sock)
                return
            if data == b"":
                self._drop(sock)
                return
            if data:
                conn.inbuf += data
                *lines, conn.inbuf = conn.inbuf.split(b"\n")
                if len(conn.inbuf) > MAX_LINE:
                    self._drop(sock)
                    return
                for line in lines:
                    conn.outbuf += line.rstrip(b"\r") + b" " + conn.peer.encode() + b"\n"
        if conn.outbuf:
            try:
                n = sock.send(conn.outbuf)
            except BlockingIOError:
                n = 0
            except OSError:
                self._drop(sock)
                return
            conn.outbuf = conn.outbuf[n:]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if self._sel.get_key(sock).events != want:
            self._sel.modify(sock, want, "conn")


def open_connection(ns: str | None, dst: str, port: int, timeout: float, *,
                    device: str | None = None) -> socket.socket:
    """A connected TCP socket from namespace `ns` (raises OSError/TimeoutError); IPv6 when
    `dst` is an IPv6 address."""
    s = netns.socket_in(ns, socket.AF_INET6 if ":" in dst else socket.AF_INET)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if device:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        s.settimeout(timeout)
        s.connect((dst, port))
    except BaseException:
        s.close()
        raise
    return s


def _read_line(sock: socket.socket, buf: bytearray, deadline: float,
               stop: threading.Event | None = None, step: float = 0.05) -> bytes | None:
    """Read one line before `deadline` (None on timeout or stop). Raises OSError/EOFError."""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            return None
        sock.settimeout(min(left, step))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        if not data:
            raise EOFError("connection closed by the server")
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def connect_once(ns: str | None, dst: str, port: int, timeout: float = 2.0, *,
                 device: str | None = None) -> str | None:
    """One short echo conversation; the peer address the server saw, or None on any failure."""
    deadline = time.monotonic() + timeout
    try:
        with open_connection(ns, dst, port, timeout, device=device) as s:
            s.sendall(b"hello\n")
            line = _read_line(s, bytearray(), deadline)
    except (OSError, EOFError):
        return None
    if not line:
        return None
    parts = line.decode(errors="replace").split()
    return parts[-1] if len(parts) >= 2 else None


EventHook = Callable[[str, "Probe"], None]
#: A probe without a reply for this long is stalled.
STALL_AFTER = 1.0


class Probe:
    """A thread holding ONE TCP connection, one echo round trip every `interval`.

    Only one line is in flight at a time, so a path that stops working shows up as rounds
    that stop completing: `healthy(1.0)` turns False within a second of the last reply.
    Events for narration, passed to `on_event(event, probe)`: "round", "stall" (no reply for
    `stall_after` seconds), "resume" (a reply after a stall), "error" (the connection died),
    "closed".
    """

    def __init__(self, sock: socket.socket, *, name: str = "probe", interval: float = 0.2,
                 on_event: EventHook | None = None):
        self.name = name
        self.interval = interval
        self.stall_after = STALL_AFTER
        self.on_event = on_event
        self.rounds = 0
        self.peer: str | None = None
        self.last_rtt: float | None = None
        self.error: BaseException | None = None
        self.stalled = False
        self._sock = sock
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._last_round: float | None = None
        self._gap_ref = self._started
        self._max_gap = 0.0
        self._thread = threading.Thread(target=self._run, name=f"lab-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (f"<Probe {self.name} rounds={self.rounds} peer={self.peer} "
                f"alive={self.alive} max_gap={self.max_gap:.2f}>")

    # -- observations -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """The thread still holds an open connection (no error, not closed)."""
        return self._thread.is_alive() and self.error is None

    def healthy(self, window: float = 1.0) -> bool:
        """A round trip completed within the last `window` seconds."""
        last = self._last_round
        return self.error is None and last is not None and time.monotonic() - last <= window

    @property
    def max_gap(self) -> float:
        """Worst time without a completed round since start or reset_gap(), the ongoing one too.

        Counting the ongoing gap means a connection that is stalled *now* is never reported
        as fine just because its stall has not ended yet.
        """
        with self._cond:
            if self._stop.is_set() and self.error is None:
                return self._max_gap
            ref = max(self._last_round or self._started, self._gap_ref)
            return max(self._max_gap, time.monotonic() - ref)

    def reset_gap(self) -> None:
        """Forget stalls so far; measure from now."""
        with self._cond:
            self._max_gap = 0.0
            self._gap_ref = time.monotonic()

    def wait_rounds(self, n: int = 1, timeout: float = 2.0) -> bool:
        """True when `n` more round trips complete within `timeout` seconds."""
        with self._cond:
            target = self.rounds + n
            return self._cond.wait_for(
                lambda: self.rounds >= target or self.error is not None or self._stop.is_set(),
                timeout,
            ) and self.rounds >= target

    def close(self) -> None:
        """Stop the thread and close the connection (idempotent)."""
        if not self._stop.is_set():
            self._stop.set()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._sock.close()

    # -- thread -------------------------------------------------------------------------------
    def _emit(self, event: str) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(event, self)

    def _run(self) -> None:
        seq = 0
        try:
            while not self._stop.is_set():
                seq += 1
                sent = time.monotonic()
                self._sock.settimeout(max(self.stall_after, 1.0))
                # a full send buffer on a dead path times out: the missing reply shows the stall
                with contextlib.suppress(TimeoutError):
                    self._sock.sendall(b"p %d\n" % seq)
                line = None
                while line is None and not self._stop.is_set():
                    line = _read_line(self._sock, self._buf, time.monotonic() + 0.1, self._stop)
                    if line is None and not self.stalled and \
                            time.monotonic() - (self._last_round or sent) > self.stall_after:
                        self.stalled = True
                        self._emit("stall")
                if line is None:
                    break
                self._record(sent, line)
                self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))
        except (OSError, EOFError) as e:
            if not self._stop.is_set():
                self.error = e
                with self._cond:
                    self._cond.notify_all()
                self._emit("error")
            return
        with self._cond:
            self._cond.notify_all()
        self._emit("closed")

    def _record(self, sent: float, line: bytes) -> None:
        now = time.monotonic()
        parts = line.decode(errors="replace").split()
        with self._cond:
            ref = max(self._last_round or self._started, self._gap_ref)
            self._max_gap = max(self._max_gap, now - ref)
            self._last_round = now
            self.last_rtt = now - sent
            if len(parts) >= 3:
                self.peer = parts[-1]
            self.rounds += 1
            self._cond.notify_all()
        if self.stalled:
            self.stalled = False
            self._emit("resume")
        self._emit("round")
