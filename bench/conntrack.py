#!/usr/bin/env python3
"""Count and flush one uplink's connections among 100k and 1M conntrack entries: connpin's
kernel-filtered ctnetlink path against `conntrack -L -m` / `conntrack -D -m`, same run,
interleaved, median of several repetitions.

Entries are created straight through ctnetlink in a bare namespace of our own (removed on any
exit): four uplinks' marks plus unmarked entries, and a foreign mark bit on every third one.
conntrack's limit (net.netfilter.nf_conntrack_max) is global and only the host can raise it;
sizes above it are skipped unless --raise-conntrack-max is given, which raises it for the run
and puts the old value back afterwards.

    .venv/bin/python bench/conntrack.py [--quick] [--out DIR] [--raise-conntrack-max]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import _common as C
from connpin.kernel import conntrack as ct
from connpin.kernel import netns

MASK = 0x00FF0000
UPLINKS = {f"isp{u}": u << 16 for u in range(1, 5)}  # + unmarked entries: 1 in 5
FOREIGN = 0x1
MAX_PATH = "/proc/sys/net/netfilter/nf_conntrack_max"


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Filler:
    """Creates entries fast: one message encoded by pyroute2, then only the source address,
    port and mark patched per entry; sent in batches without acks, errors drained."""

    def __init__(self) -> None:
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

        o = NFCTAttrTuple(saddr="10.250.250.250", daddr="203.0.113.10", proto=6, sport=0xABCD,
                          dport=443)
        r = NFCTAttrTuple(saddr="203.0.113.10", daddr="10.250.250.250", proto=6, sport=443,
                          dport=0xABCD)
        msg = nfct_msg.create_from(tuple_orig=o, tuple_reply=r, timeout=3600, mark=0x7E7E7E7E,
                                   status=0x8 | 0x2 | 0x4)  # CONFIRMED|SEEN_REPLY|ASSURED
        msg["header"]["type"] = (1 << 8) | 0  # ctnetlink NEW
        msg["header"]["flags"] = 0x1 | 0x400 | 0x200  # REQUEST | CREATE | EXCL
        msg["nfgen_family"] = socket.AF_INET
        msg.encode()
        self.tpl = bytearray(msg.data)
        addr, port = socket.inet_aton("10.250.250.250"), struct.pack(">H", 0xABCD)
        self.addr_at = [i for i in range(len(self.tpl)) if self.tpl[i:i + 4] == addr]
        self.port_at = [i for i in range(len(self.tpl)) if self.tpl[i:i + 2] == port]
        self.mark_at = self.tpl.index(struct.pack(">I", 0x7E7E7E7E))
        assert len(self.addr_at) == 2 and len(self.port_at) == 2
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, 0))
        self.sock.setblocking(False)
        self.errors = 0

    def add(self, indices: range | list[int]) -> None:
        batch = []
        for i in indices:
            m = self.tpl
            a = struct.pack(">I", (10 << 24) | (i >> 10))  # 1024 ports per source address
            p = struct.pack(">H", 1024 + (i & 1023))
            for at in self.addr_at:
                m[at:at + 4] = a
            for at in self.port_at:
                m[at:at + 2] = p
            m[self.mark_at:self.mark_at + 4] = struct.pack(">I", mark_of(i))
            batch.append(bytes(m))
            if len(batch) == 400:
                self._send(batch)
        if batch:
            self._send(batch)
        self._drain()

    def _send(self, batch: list[bytes]) -> None:
        data = b"".join(batch)
        batch.clear()
        while True:
            try:
                self.sock.send(data)
                break
            except BlockingIOError:
                time.sleep(0.001)
        self._drain()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                buf = self.sock.recv(1 << 16)
                off = 0
                while off + 20 <= len(buf):
                    ln, typ = struct.unpack_from("=IH", buf, off)
                    if typ == 2 and struct.unpack_from("=i", buf, off + 16)[0]:
                        self.errors += 1
                    off += (ln + 3) & ~3


def mark_of(i: int) -> int:
    u = i % 5
    mark = (u << 16) if u else 0
    return mark | (FOREIGN if i % 3 == 0 else 0)


def share(n: int, uplink_mark: int) -> list[int]:
    u = uplink_mark >> 16
    return [i for i in range(n) if i % 5 == u]


def flush_like_connpin(c: ct.Conntrack, mark: int) -> int:
    """What `connpin flush UPLINK` does: count (headers only), then one kernel flush by mark."""
    n = c.count(mark, MASK)[0]
    c.flush(mark, MASK)
    return n


def count_all(marks) -> list[int]:
    """What `connpin status` does: one kernel-filtered dump per uplink, in parallel."""
    from connpin import pins
    from connpin.desired import UplinkState

    states = [UplinkState(f"u{m:x}", f"x{m:x}", _Slot(m), True, "", None, False) for m in marks]
    return [c.connections for c in pins.counts(_CFG, states)]


class _Slot:
    def __init__(self, mark: int) -> None:
        self.mark = mark


class _Pinning:
    mark_mask = MASK


class _Config:
    pinning = _Pinning()


_CFG = _Config()


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def tool_count(ns: str, mark: int) -> int:
    p = sh("conntrack", "-L", "-m", f"{mark:#x}/{MASK:#x}", ns=ns)
    return p.stdout.count("\n")


def tool_flush(ns: str, mark: int) -> int:
    p = sh("conntrack", "-D", "-m", f"{mark:#x}/{MASK:#x}", ns=ns, check=False)
    return p.stdout.count("\n")


def kernel_flush(mark: int, mask: int = MASK) -> None:
    """One request, the kernel deletes by mark itself (no count of what went); mask 0: all."""
    with ct.Conntrack() as c:
        c.flush(mark, mask)


def run_size(ns: str, n: int, reps: int, rows: list[dict]) -> None:
    print(f"\n== {n:,} entries ({reps} repetitions, median) ==", flush=True)
    filler = Filler()
    t, _ = timed(lambda: filler.add(range(n)))
    with ct.Conntrack() as c:
        total = sum(c.count(0, 0)[0] for _ in [0])
    print(f"created {total:,} entries in {t:.1f}s ({filler.errors} refused)", flush=True)
    if total < n * 0.99:
        raise SystemExit(f"only {total} of {n} entries could be created (nf_conntrack_max?)")
    isp1 = UPLINKS["isp1"]
    expect = len(share(n, isp1))
    res: dict[str, list[float]] = {k: [] for k in (
        "count one: connpin", "count one: conntrack -L -m",
        "count all 4: connpin", "count all 4: conntrack -L -m",
        "connpin status (whole command)",
        "flush one: connpin", "flush one: conntrack -D -m", "flush one: kernel by mark")}
    cfg = f"/tmp/connpin-bench-{ns}.toml"
    with open(cfg, "w") as f:
        f.write(f"[pinning]\nmark_mask = {MASK:#x}\nsysctl = false\nnft_table = \"cpbench\"\n")
        for name, mark in UPLINKS.items():
            f.write(f'[[uplink]]\nname = "{name}"\ninterface = "x{name}"\nmark = {mark:#x}\n')
    cli = [sys.executable, "-m", "connpin", "--netns", ns, "-c", cfg, "status", "--json"]
    try:
        for _ in range(reps):
            with ct.Conntrack() as c:
                t, got = timed(lambda: c.count(isp1, MASK)[0])
                assert got == expect, (got, expect)
                res["count one: connpin"].append(t)
                t, got = timed(lambda: tool_count(ns, isp1))
                assert got == expect, (got, expect)
                res["count one: conntrack -L -m"].append(t)
                t, _ = timed(lambda: count_all(UPLINKS.values()))
                res["count all 4: connpin"].append(t)
                t, _ = timed(lambda: [tool_count(ns, m) for m in UPLINKS.values()])
                res["count all 4: conntrack -L -m"].append(t)
            t, p = timed(lambda: subprocess.run(cli, capture_output=True, text=True))
            assert p.returncode in (0, 3), p.stderr
            res["connpin status (whole command)"].append(t)
        victims = share(n, isp1)
        for _ in range(reps):
            for key, fn in (("flush one: connpin", None),
                            ("flush one: conntrack -D -m", lambda: tool_flush(ns, isp1)),
                            ("flush one: kernel by mark", lambda: kernel_flush(isp1))):
                filler.add(victims)  # refill what the previous flush removed
                if fn is None:
                    with ct.Conntrack() as c:
                        t, got = timed(lambda c=c: flush_like_connpin(c, isp1))
                    assert got == expect, (got, expect)
                else:
                    t, _ = timed(fn)
                with ct.Conntrack() as c:
                    assert c.count(isp1, MASK)[0] == 0, key
                    assert c.count(UPLINKS["isp2"], MASK)[0] == len(share(n, UPLINKS["isp2"]))
                res[key].append(t)
    finally:
        os.unlink(cfg)
    base = {"count one": "count one: conntrack -L -m",
            "count all 4": "count all 4: conntrack -L -m",
            "flush one": "flush one: conntrack -D -m"}
    for key, times in res.items():
        med = statistics.median(times)
        ref = base.get(key.split(":")[0])
        ratio = med / statistics.median(res[ref]) if ref else None
        rows.append({"entries": n, "measurement": key, "median_s": round(med, 4),
                     "min_s": round(min(times), 4), "max_s": round(max(times), 4),
                     "ratio_to_conntrack_tool": None if ratio is None else round(ratio, 3),
                     "uplink_share": expect})
        r = f"{ratio:6.2f}x" if ratio is not None else "       "
        print(f"  {key:34s} {med * 1000:9.1f} ms  (min {min(times) * 1000:.1f}, "
              f"max {max(times) * 1000:.1f})  {r}", flush=True)


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--raise-conntrack-max", action="store_true",
                    help="raise the host's nf_conntrack_max for the run (restored afterwards)")
    ap.add_argument("--sizes", default=None, help="comma-separated entry counts")


def main() -> int:
    args = C.parse_args(__doc__.split("\n\n")[0] + " (--quick: 100k only, 2 repetitions)",
                        options)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [100_000] if args.quick else [100_000, 1_000_000])
    reps = 2 if args.quick else 5
    with open(MAX_PATH) as f:
        old_max = int(f.read())
    ns = f"cpb-{secrets.token_hex(3)}"
    rows: list[dict] = []
    skipped = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # opened here, in the host's namespace: /proc/sys/net resolves the namespace at open time
    host_max = open(MAX_PATH, "w") if args.raise_conntrack_max else None  # noqa: SIM115
    sh("ip", "netns", "add", ns)
    try:
        if host_max and max(sizes) + 50_000 > old_max:
            host_max.write(str(max(sizes) + 50_000))
            host_max.flush()
        with open(MAX_PATH) as f:
            limit = int(f.read())
        netns.enter(ns)
        for n in sizes:
            if n + 1000 > limit:
                skipped.append(n)
                print(f"\n== {n:,} entries: skipped, nf_conntrack_max is {limit:,} "
                      "(rerun with --raise-conntrack-max)", flush=True)
                continue
            run_size(ns, n, reps, rows)
            kernel_flush(0, 0)  # empty the table between sizes
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        if host_max:
            host_max.seek(0)
            host_max.write(str(old_max))
            host_max.close()
    write(args.out, rows, skipped)
    return 0


def write(out: Path, rows: list[dict], skipped: list[int]) -> None:
    fields = list(rows[0]) if rows else ["entries"]
    C.write_csv(out, "conntrack", fields, ([r[k] for k in fields] for r in rows))
    lines = ["## Conntrack: count and flush one uplink's connections", "",
             f"{platform.node()}: {os.cpu_count()} CPUs, kernel {platform.release()}; "
             "4 uplinks' marks + unmarked entries (1 in 5 each), a foreign mark bit on every "
             "third entry. Ratio: time relative to the conntrack tool (lower is better).", "",
             "| entries | measurement | median | min | max | ratio to conntrack tool |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        x = r["ratio_to_conntrack_tool"]
        ratio = "" if x is None else f"{x:.2f}x"
        lines.append(f"| {r['entries']:,} | {r['measurement']} | {r['median_s'] * 1000:.1f} ms "
                     f"| {r['min_s'] * 1000:.1f} ms | {r['max_s'] * 1000:.1f} ms | {ratio} |")
    for n in skipped:
        lines.append(f"\n{n:,} entries skipped: the host's nf_conntrack_max is lower "
                     "(rerun with --raise-conntrack-max).")
    C.write_md(out, "conntrack", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
