"""Others' large routing tables and connpin's cost: `connpin apply` (first, and a re-apply that
changes nothing), `connpin check` and `connpin remove` with 0, 10k and 50k routes in a foreign
table of the router (a routing daemon's full table, a mesh VPN's routes).

    .venv/bin/python bench/scale.py [--quick] [--out DIR] [--src DIR] [--sizes 0,10000]

--src runs connpin from another checkout's src/ (e.g. main before the filtered dumps), to
compare. Observing reads routes with the kernel filtering (NETLINK_GET_STRICT_CHK): main, local,
connpin's protocol, and connpin's table range one table id at a time.
"""

from __future__ import annotations

import os
import statistics
import time

from _common import Lab, parse_args, section, table, write_csv, write_md

SIZES = (0, 10_000, 50_000)
FOREIGN_TABLE = 5000


def load(lab: Lab, n: int) -> None:
    lines = "".join(f"route add 10.{128 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 dev lan0 "
                    f"table {FOREIGN_TABLE}\n" for i in range(n))
    if lines:
        lab.exec("router", ["ip", "-batch", "-"], input=lines, timeout=300)


def main() -> int:
    def extra(p) -> None:
        p.add_argument("--src", help="run connpin from this src/ directory instead")
        p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")],
                       default=list(SIZES), help="foreign route counts, comma-separated")

    args = parse_args(__doc__.splitlines()[0], extra)
    env = {"PYTHONPATH": os.path.abspath(args.src)} if args.src else None
    reps = 1 if args.quick else 3
    rows = []
    for n in args.sizes:
        with section(f"{n} foreign routes"), Lab(uplinks=("ppp", "ppp")) as lab:
            lab.write_config(lab.default_config(masquerade=True))
            lab.uplink_up(1)
            lab.uplink_up(2)
            load(lab, n)
            times: dict[str, list[float]] = {"apply": [], "re-apply": [], "check": [],
                                             "remove": []}
            for _ in range(reps):
                for what, argv in (("apply", ["apply"]), ("re-apply", ["apply"]),
                                   ("check", ["check"]), ("remove", ["remove"])):
                    t0 = time.monotonic()
                    lab.connpin(*argv, env=env, timeout=600, check=what != "check")
                    times[what].append(time.monotonic() - t0)
            row = [n] + [f"{statistics.median(times[k]) * 1000:.0f}" for k in times]
            print("   ", row, flush=True)
            rows.append(row)
    headers = ["foreign routes", "apply ms", "re-apply ms", "check ms", "remove ms"]
    text = table(headers, rows)
    print(text)
    label = f"connpin from {args.src}" if args.src else "this checkout"
    write_csv(args.out, "scale", headers, rows)
    write_md(args.out, "scale", f"## Large foreign routing tables ({label})\n\n"
             f"Median of {reps}; each command a new process (interpreter start included).\n\n"
             + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
