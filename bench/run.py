"""Run every benchmark (bench/*.py except run.py and _*.py), each in its own process, then write
DIR/summary.md: the machine, then each benchmark's markdown section. `make bench` calls this.

    .venv/bin/python bench/run.py [--quick] [--out DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent
#: Shown first, in this order; any other bench/*.py follows alphabetically.
ORDER = ("forwarding", "newconns", "apply", "reapply")


def scripts() -> list[str]:
    names = sorted(p.stem for p in HERE.glob("*.py")
                   if not p.name.startswith("_") and p.name != "run.py")
    return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]


def header(quick: bool, took: float, failed: list[str]) -> str:
    m = C.machine()
    lines = [
        "# connpin benchmarks",
        "",
        f"Run on {m['date']} with `make bench{' QUICK=1' if quick else ''}` "
        f"({'quick: fewer repetitions, ' if quick else ''}{took / 60:.1f} min).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| kernel | {m['kernel']} |",
        f"| OS | {m['os']} |",
        f"| nft | {m['nft']} |",
        f"| iptables | {m['iptables']} |",
        f"| iperf3 | {m['iperf3']} |",
        f"| Python | {m['python']} |",
        "",
        "Everything runs in the lab's network namespaces on this one machine (veth links), so "
        "absolute figures are those of the machine's CPU, not of a NIC; compare set-ups within "
        "a run. Other work on the machine adds noise: set-ups are interleaved and medians "
        "reported.",
    ]
    if failed:
        lines += ["", f"**Failed:** {', '.join(failed)} (see the run's output)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=C.RESULTS)
    p.add_argument("names", nargs="*", help="only these benchmarks")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py: needs root (network namespaces)")
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.names or scripts()
    failed, sections = [], []
    t0 = time.monotonic()
    for name in names:
        print(f"\n######## {name}", flush=True)
        argv = [sys.executable, str(HERE / f"{name}.py"), "--out", str(args.out)]
        if args.quick:
            argv.append("--quick")
        started = time.monotonic()
        rc = subprocess.call(argv)
        print(f"######## {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} "
              f"in {time.monotonic() - started:.0f} s", flush=True)
        md = args.out / f"{name}.md"
        if rc != 0:
            failed.append(name)
        elif md.exists():
            sections.append(md.read_text().rstrip("\n") + "\n")
    took = time.monotonic() - t0
    summary = args.out / "summary.md"
    summary.write_text(header(args.quick, took, failed) + "\n" + "\n".join(sections))
    print(f"\n{summary} written ({took / 60:.1f} min)" + (f"; FAILED: {failed}" if failed
                                                             else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
