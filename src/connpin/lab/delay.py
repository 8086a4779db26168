"""A userspace delay line for the lab, for kernels without netem (sch_netem): packets an nft or
iptables rule sends to NFQUEUE queue 7 are held for base + uniform(0, jitter) ms each, then
accepted. Like netem's `delay D J`, every packet is delayed independently, so a later packet can
leave before an earlier one (reordering, as netem's jitter does).

A hand-written nfnetlink_queue client (raw netlink socket, NETLINK_NETFILTER; no library):
NFQNL_MSG_CONFIG binds the queue with copy mode "meta" (only the packet id is needed) and
fail-open (a full queue accepts instead of dropping); each NFQNL_MSG_PACKET's id goes on a heap
keyed by its release time; one loop waits for the next packet or the next release and sends
NFQNL_MSG_VERDICT NF_ACCEPT for everything due, several verdicts per send.

It runs as its own process (`start`), not a thread of the lab's process, so that the GIL and
the lab's own threads (probers, monitors) do not disturb its timing:

    python -m connpin.lab.delay --netns NS [--queue 7] [--delay-ms 0] [--jitter-ms 100]
                                [--parent PID] [--seed N]

It enters NS itself, prints `ready` once the queue is bound, and on SIGTERM accepts what it
still holds, prints its figures and exits. It dies with the process that started it
(PR_SET_PDEATHSIG, checked against --parent so a parent already gone is noticed); the lab's
`destroy` also kills every process left in its namespaces. The rule should queue with
`bypass` (nft `queue num 7 bypass`, iptables `--queue-bypass`): when the process is gone,
packets pass undelayed instead of being dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from connpin.kernel import nlmsg

QUEUE = 7
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 0x1
NF_ACCEPT = 1
NLA_TYPE_MASK = 0x3FFF
PR_SET_PDEATHSIG = 1
MAXLEN = 10000


# -- messages (pure) ------------------------------------------------------------------------------
def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(msg: int, queue: int, attrs: bytes, seq: int = 0, flags: int = NLM_F_REQUEST,
            family: int = socket.AF_UNSPEC) -> bytes:
    """One nfnetlink_queue message: nlmsghdr, nfgenmsg (res_id = the queue, big-endian), attrs."""
    body = struct.pack("=BB", family, 0) + struct.pack("!H", queue) + attrs
    return nlmsg.HDR.pack(16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq,
                       0) + body


def bind_messages(queue: int, maxlen: int = MAXLEN) -> list[bytes]:
    """Bind `queue`, copy metadata only, a long queue, fail-open: each asks for an ack."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    fail_open = struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
    return [
        message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack(
            "!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC)), 1, flags),
        message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_PARAMS, struct.pack(
            "!IB", 0, NFQNL_COPY_META)), 2, flags),
        message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(
            "!I", maxlen)), 3, flags),
        message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_MASK, fail_open)
                + _attr(NFQA_CFG_FLAGS, fail_open), 4, flags),
    ]


def verdict(queue: int, packet_id: int, what: int = NF_ACCEPT) -> bytes:
    return message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR,
                                                   struct.pack("!II", what, packet_id)))


def parse(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The messages in a netlink datagram: (type, seq, payload after the nlmsghdr)."""
    for kind, _flags, seq, start, end in nlmsg.walk(buf):
        yield kind, seq, buf[start + nlmsg.HDR.size:end]


def packet_id(payload: bytes) -> int | None:
    """The id in an NFQNL_MSG_PACKET's NFQA_PACKET_HDR (payload starts with the nfgenmsg)."""
    off = 4
    while off + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, off)
        if length < 4:
            return None
        if kind & NLA_TYPE_MASK == NFQA_PACKET_HDR:
            return struct.unpack_from("!I", payload, off + 4)[0]
        off += (length + 3) & ~3
    return None


# -- the delay line -------------------------------------------------------------------------------
class DelayLine:
    """Queue `queue` bound on a netlink socket of the current namespace; `run` until `wake` is
    readable (the SIGTERM wake-up pipe)."""

    def __init__(self, queue: int = QUEUE, delay_ms: float = 0.0, jitter_ms: float = 100.0,
                 seed: int | None = None):
        self.queue = queue
        self.base, self.spread = delay_ms / 1000, jitter_ms / 1000
        self.rng = random.Random(seed)
        self.held: list[tuple[float, int, int]] = []  # (release at, arrival order, packet id)
        self.n = 0
        self.late: list[float] = []  # how late each release was after its due time (s)
        self.held_max = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((0, 0))
        for msg in bind_messages(queue):
            self._ack(msg)

    def _ack(self, msg: bytes) -> None:
        self.sock.send(msg)
        seq = struct.unpack_from("=I", msg, 8)[0]
        while True:
            for kind, got, payload in parse(self.sock.recv(65536)):
                if kind == NLMSG_ERROR and got == seq:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise OSError(err, f"nfnetlink_queue config of queue {self.queue}: "
                                           f"{os.strerror(err)}")
                    return

    def _receive(self, now: float) -> None:
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            for kind, _seq, payload in parse(data):
                if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    continue
                pid = packet_id(payload)
                if pid is not None:
                    self.n += 1
                    due = now + self.base + self.rng.random() * self.spread
                    heapq.heappush(self.held, (due, self.n, pid))
            self.held_max = max(self.held_max, len(self.held))

    def _release(self, now: float, everything: bool = False) -> None:
        out = []
        while self.held and (everything or self.held[0][0] <= now):
            due, _, pid = heapq.heappop(self.held)
            if not everything and len(self.late) < 1_000_000:
                self.late.append(now - due)
            out.append(verdict(self.queue, pid))
        for i in range(0, len(out), 64):  # several verdicts per send, one datagram each
            self.sock.send(b"".join(out[i:i + 64]))

    def run(self, wake: int) -> None:
        while True:
            now = time.monotonic()
            timeout = max(0.0, self.held[0][0] - now) if self.held else None
            ready, _, _ = select.select([self.sock, wake], [], [], timeout)
            now = time.monotonic()
            if wake in ready:
                break
            if self.sock in ready:
                self._receive(now)
            self._release(now)
        self._release(time.monotonic(), everything=True)

    def close(self) -> None:
        self.sock.close()


# -- the process and its starter ------------------------------------------------------------------
def _die_with_parent(parent: int | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        sys.exit("delay: the process that started me is gone")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m connpin.lab.delay", description=__doc__)
    p.add_argument("--netns")
    p.add_argument("--queue", type=int, default=QUEUE)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=100.0)
    p.add_argument("--parent", type=int)
    p.add_argument("--seed", type=int)
    a = p.parse_args(argv)
    _die_with_parent(a.parent)
    with contextlib.suppress(OSError):
        os.nice(-10)  # released on time even while the lab's own processes keep the CPUs busy
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    if a.netns:
        from connpin.kernel import netns
        netns.enter(a.netns)
    line = DelayLine(a.queue, a.delay_ms, a.jitter_ms, a.seed)
    print("ready", flush=True)
    try:
        line.run(r)
    finally:
        line.close()
    late = sorted(line.late) or [0.0]
    print(f"delayed {line.n} packets, at most {line.held_max} held at once, released late by "
          f"{late[len(late) // 2] * 1000:.1f} ms median, {late[int(len(late) * 0.99)] * 1000:.1f}"
          f" ms p99, {late[-1] * 1000:.1f} ms max", flush=True)
    return 0


def start(namespace: str, *, queue: int = QUEUE, delay_ms: float = 0.0,
          jitter_ms: float = 100.0, log: Path | None = None, seed: int | None = None,
          timeout: float = 15.0) -> subprocess.Popen[str]:
    """Start a delay line in `namespace` and wait until its queue is bound. It dies with the
    calling thread (PR_SET_PDEATHSIG: start it from a thread that outlives it, e.g. the main
    one). Raises RuntimeError (with its log) if it does not get ready in `timeout` s."""
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    argv = [sys.executable, "-m", "connpin.lab.delay", "--netns", namespace, "--queue",
            str(queue), "--delay-ms", f"{delay_ms:g}", "--jitter-ms", f"{jitter_ms:g}",
            "--parent", str(os.getpid()), *(["--seed", str(seed)] if seed is not None else [])]
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child's stderr
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
    finally:
        if log:
            err.close()  # type: ignore[union-attr]
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready or proc.stdout.readline().strip() != "ready":
        stop(proc)
        tail = log.read_text()[-800:] if log and log.exists() else ""
        raise RuntimeError(f"the delay line in {namespace} did not start: {tail.strip()}")
    return proc


def stop(proc: subprocess.Popen[str], timeout: float = 5.0) -> str:
    """SIGTERM (it accepts what it holds first), wait, SIGKILL if need be; its last words."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return (out or "").strip()


if __name__ == "__main__":
    sys.exit(main())
