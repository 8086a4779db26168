#!/usr/bin/env python3
"""The cost of one Prometheus scrape of `connpin watch`'s metrics endpoint at 10 conntrack entries
and at 1M (goal: within 10%): a scrape reads connpin's nft counters (one netlink dump)
and never dumps conntrack, so its cost must not grow with the connections.

In a bare namespace of our own (removed on any exit): connpin's ruleset for 4 uplinks with
[metrics] loaded as `connpin apply` would, the daemon's metrics served by its own publisher on
127.0.0.1, and conntrack entries created straight through ctnetlink (bench/conntrack.py's filler)
carrying those uplinks' marks: one namespace with 10 entries, one with 1M, each with its own
endpoint, scraped in turn (the machine's other load hits both alike); the median of each.
conntrack's limit (net.netfilter.nf_conntrack_max) is global: 1M needs --raise-conntrack-max
(raised for the run, put back afterwards); without it the largest size the limit allows is
measured instead.

    .venv/bin/python bench/metrics.py [--quick] [--out DIR] [--raise-conntrack-max]
"""

from __future__ import annotations

import argparse
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common as C
from connpin import model, reconcile
from connpin.kernel import conntrack as ct
from connpin.kernel import netns, nft
from connpin.metrics import publish
from connpin.metrics.settings import Metrics as Settings
from connpin.render import nft as render_nft
from conntrack import MASK, MAX_PATH, UPLINKS, Filler

PORT = 9647
CONFIG = f"""[pinning]
mark_mask = {MASK:#x}
sysctl = false
nft_table = "cpbench"
""" + "".join(f'[[uplink]]\nname = "{n}"\ninterface = "x{n}"\nmark = {m:#x}\n'
              for n, m in UPLINKS.items()) + f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n'


def scrape(ns: str) -> float:
    """One full HTTP scrape of the endpoint in namespace `ns`; its wall time in seconds."""
    t = time.perf_counter()
    s = netns.socket_in(ns)
    try:
        s.settimeout(10)
        s.connect(("127.0.0.1", PORT))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    took = time.perf_counter() - t
    assert data.startswith(b"HTTP/1.0 200") and b"connpin_uplink_bytes_total" in data, data[:200]
    return took


def prepare(ns: str, n: int) -> tuple[object, int]:
    """Namespace `ns`: connpin's ruleset with [metrics], its endpoint, `n` conntrack entries."""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    config = model.loads(CONFIG, "bench.toml")
    want = reconcile.run(config, reconcile.Imagined(), effects=False).desired
    with netns.inside(ns):
        nft.run(render_nft.transaction(config.pinning.nft_table, want.ruleset))
        _, pub = publish.start(Settings(listen=("127.0.0.1", PORT)), config.pinning.nft_table,
                               [u.name for u in config.uplinks], lambda line: None)
        t = time.perf_counter()
        filler = Filler()
        filler.add(range(n))
        with ct.Conntrack() as c:
            total = c.count(0, 0)[0]
    print(f"{ns}: {total:,} conntrack entries (created in {time.perf_counter() - t:.1f} s, "
          f"{filler.errors} refused)", flush=True)
    if total < n * 0.99:
        raise SystemExit(f"only {total} of {n} entries could be created")
    return pub, total


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--raise-conntrack-max", action="store_true",
                    help="raise the host's nf_conntrack_max for the run (restored afterwards)")
    ap.add_argument("--size", type=int, default=None, help="the large size (default 1M)")


def main() -> int:
    args = C.parse_args(__doc__.split("\n\n")[0], options)
    big = args.size or (100_000 if args.quick else 1_000_000)
    reps = 60 if args.quick else 300
    with open(MAX_PATH) as f:
        old_max = int(f.read())
    small_ns, big_ns = (f"cpm-{secrets.token_hex(3)}" for _ in range(2))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    host_max = open(MAX_PATH, "w") if args.raise_conntrack_max else None  # noqa: SIM115
    pubs: list = []
    rows: list[dict] = []
    note = ""
    try:
        if host_max and big + 50_000 > old_max:
            host_max.write(str(big + 50_000))
            host_max.flush()
        with open(MAX_PATH) as f:
            limit = int(f.read())
        if big + 1000 > limit:
            note = (f"{big:,} entries skipped: nf_conntrack_max is {limit:,} (rerun with "
                    "--raise-conntrack-max); measured at the largest size it allows instead.")
            print(note, flush=True)
            big = (limit - 1000) // 1000 * 1000
        sizes = {}
        for ns, n in ((small_ns, 10), (big_ns, big)):
            pub, sizes[ns] = prepare(ns, n)
            pubs.append(pub)
        # interleaved (small, big, small, ...): the machine's other load hits both alike
        results: dict[str, list[float]] = {small_ns: [], big_ns: []}
        for ns in (small_ns, big_ns, small_ns, big_ns):  # warm: first process starts
            scrape(ns)
        for i in range(reps):
            for ns in (small_ns, big_ns) if i % 2 else (big_ns, small_ns):
                results[ns].append(scrape(ns))
        for ns in (small_ns, big_ns):
            med, lo, hi = C.summary(results[ns])
            print(f"  {sizes[ns]:>9,} entries: scrape median {med * 1000:.2f} ms "
                  f"(min {lo * 1000:.2f}, max {hi * 1000:.2f}, {reps} scrapes)", flush=True)
            rows.append({"entries": sizes[ns], "median_ms": round(med * 1000, 3),
                         "min_ms": round(lo * 1000, 3), "max_ms": round(hi * 1000, 3),
                         "scrapes": reps})
        ratio = statistics.median(results[big_ns]) / statistics.median(results[small_ns])
        print(f"\nratio {big:,} / 10 entries: {ratio:.3f} (goal: within 10%, "
              f"{'met' if abs(ratio - 1) <= 0.10 else 'NOT met'})", flush=True)
    finally:
        for pub in pubs:
            pub.stop()
        for ns in (small_ns, big_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
        if host_max:
            host_max.seek(0)
            host_max.write(str(old_max))
            host_max.close()
    write(args.out, rows, ratio, note)
    return 0


def write(out: Path, rows: list[dict], ratio: float, note: str) -> None:
    fields = list(rows[0])
    C.write_csv(out, "metrics", fields, ([r[k] for k in fields] for r in rows))
    lines = ["## Metrics: one scrape at 10 conntrack entries and at many", "",
             "A full HTTP scrape of the daemon's endpoint (4 uplinks, [metrics]); it reads "
             "connpin's nft counters and never dumps conntrack. Goal: the large size within "
             "10% of 10 entries.", "",
             "| conntrack entries | median | min | max | scrapes |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['entries']:,} | {r['median_ms']:.2f} ms | {r['min_ms']:.2f} ms "
              f"| {r['max_ms']:.2f} ms | {r['scrapes']} |" for r in rows]
    lines += ["", f"Ratio large / 10: **{ratio:.3f}** "
              f"({'met' if abs(ratio - 1) <= 0.10 else 'not met'})."]
    if note:
        lines += ["", note]
    C.write_md(out, "metrics", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
