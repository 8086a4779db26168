"""What a hook call costs now that it runs apply's conflict check: `connpin up ppp0` with nothing
to change, a new process each time as pppd starts it, median of interleaved runs of this checkout
and (with --src) of another checkout's src/, with 0 and 100k routes in a foreign table of the
router (a routing daemon's full table); --src can be given more than once (e.g. connpin before
hooks ran the check, and before the raw table reads). Then, in-process in the same lab, the
check's part that grows with connpin's table range: the range read by pyroute2 one request per
table id (before) and by kernel/tableroutes (after), and the whole inventory.take.

    .venv/bin/python bench/hookcost.py [--quick] [--out DIR] [--src DIR]... [--reps N]
                                                [--sizes 0,100000]
"""

from __future__ import annotations

import errno
import os
import socket
import statistics
import subprocess
import sys
import time

import _common as C  # before connpin: puts this checkout's src/ on sys.path
from connpin import conflicts, model
from connpin.kernel import inventory, netns, tableroutes
from scale import load

SIZES = (0, 100_000)
HERE_SRC = str(C.ROOT / "src")


def _up(ns: str, config: str, src: str) -> float:
    """ms for one `connpin up ppp0` process (interpreter start included) that changes nothing."""
    env = {**os.environ, "PYTHONPATH": src}
    with netns.inside(ns):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "connpin", "-c", config, "up", "ppp0"],
                           capture_output=True, text=True, env=env, timeout=120)
        took = (time.perf_counter() - t) * 1000
    if p.returncode != 0 or "nothing to change" not in p.stdout:
        raise RuntimeError(f"connpin up from {src} did not find the kernel in place: "
                           f"{p.returncode} {p.stdout}{p.stderr}")
    return took


def _per_table_pyroute2(family: int, tables: range) -> int:
    """What the check did before: one pyroute2 request per table id."""
    from pyroute2.iproute import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    n = 0
    with IPRoute(strict_check=True) as ipr:
        for t in tables:
            try:
                n += len(list(ipr.route("dump", family=family, dump_filter={}, table=t)))
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise
    return n


def _in_process(ns: str, config: model.Config, reps: int) -> dict[str, float]:
    tables = conflicts.table_range(config)
    fams = (socket.AF_INET, socket.AF_INET6)
    parts = {
        "range, pyroute2 per id": lambda: sum(_per_table_pyroute2(f, tables) for f in fams),
        "range, tableroutes": lambda: sum(len(tableroutes.read(f, tables)) for f in fams),
        "inventory.take": lambda: inventory.take(config),
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    with netns.inside(ns):
        for _ in range(reps):
            for k, fn in parts.items():
                t = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    def extra(p) -> None:
        p.add_argument("--src", action="append", default=[],
                       help="also run connpin from this src/ directory (repeatable)")
        p.add_argument("--reps", type=int, help="runs of each (default 15, --quick 5)")
        p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")],
                       default=list(SIZES), help="foreign route counts, comma-separated")

    args = C.parse_args(__doc__.split("\n\n")[0], extra)
    reps = args.reps or (5 if args.quick else 15)
    sources = {"this checkout": HERE_SRC} | {os.path.abspath(d): os.path.abspath(d)
                                             for d in args.src}
    # bytecode for every checkout alike: PYTHONDONTWRITEBYTECODE would otherwise leave a
    # checkout compiling its changed modules in every run
    for src in sources.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", src], check=True)
    rows: list[list] = []
    samples: list[list] = []
    for n in args.sizes:
        with C.section(f"{n} foreign routes"), C.Lab(uplinks=("ppp", "ppp")) as lab:
            lab.write_config(lab.default_config(masquerade=True))
            lab.uplink_up(1)
            lab.uplink_up(2)
            load(lab, n)
            lab.connpin("apply", timeout=600)
            ns, cfg = lab.ns("router"), str(lab.config_path)
            for src in sources.values():  # warm the page cache once each, not measured
                _up(ns, cfg, src)
            ups: dict[str, list[float]] = {k: [] for k in sources}
            names = list(sources)
            for i in range(reps):
                for k in names[i % len(names):] + names[:i % len(names)]:  # rotating order
                    ups[k].append(_up(ns, cfg, sources[k]))
                    samples.append([n, k, i, f"{ups[k][-1]:.1f}"])
            parts = _in_process(ns, model.load(lab.config_path), reps)
            here = statistics.median(ups["this checkout"])
            for k, v in ups.items():
                q1, _, q3 = statistics.quantiles(v, n=4)
                rows.append([n, k, f"{statistics.median(v):.0f}", f"{q1:.0f}-{q3:.0f}",
                             f"{statistics.median(v) / here:.2f}"])
                print("   ", rows[-1], flush=True)
            rows += [[n, f"in-process: {k}", f"{v:.1f}", "", ""] for k, v in parts.items()]
    headers = ["foreign routes", "what", "median ms", "quartiles", "x this checkout"]
    text = C.table(headers, rows)
    print(text)
    C.write_csv(args.out, "hookcost", ["foreign routes", "what", "run", "ms"], samples)
    m = C.machine()
    C.write_md(args.out, "hookcost", "## A hook call with the conflict check\n\n"
               f"`connpin up ppp0` with nothing to change, median of {reps} interleaved runs "
               f"(each a new process, its path the connpin run). In-process parts: "
               f"median of {reps}, both families, connpin's 255 table ids. {m['cores']} CPUs, "
               f"{m['date']}.\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
