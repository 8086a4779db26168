"""The passive health signal: how soon a blackholed ISP is dead, and how soon new connections
leave by the other ISP, with and without the passive signal, at a slow probe rate.

`connpin watch` runs in a lab router with two PPP-like uplinks, both with `check` (3 ICMP
targets) and `[health] rate = 0.5` (a round every 6 s: probes alone need ~9 s); isp1 is the
best tier, isp2 the next (connpin chooses by weight). A LAN host starts a new TCP connection
every 0.1 s. Each cycle waits a random part of a probe round, blackholes isp1 beyond its first
hop and measures from just before the fault:

  dead      the daemon logs `isp1 alive -> dead`
  moved     the first new connection (by start time) that the server sees from isp2
  hurry     the daemon logs `isp1 suspect ... (passive signal)` (passive on only)

then clears the fault and waits for isp1 alive. The same lab runs `[health] passive = false`
(baseline, probes alone) and the default (passive on), interleaved cycle by cycle.

    .venv/bin/python bench/passive.py [--quick] [--out DIR]     (root)
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as C

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from connpin.lab import Lab, faults  # noqa: E402
from connpin.lab.opener import Opener  # noqa: E402

RATE = 0.5
EXTRA = ("203.0.113.11", "203.0.113.13")
MODES = ("probes alone", "passive")


class Daemon:
    """`connpin watch --verbose` in the lab's router; its log lines with arrival times."""

    def __init__(self, lab: Lab) -> None:
        self.lines: list[tuple[float, str]] = []
        env = {**os.environ, "CONNPIN_CONFIG": str(lab.config_path)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connpin", "--netns", lab.ns("router"), "-c",
             str(lab.config_path), "watch", "--verbose"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, pattern: str, after: float) -> float | None:
        return next((t for t, ln in list(self.lines) if t >= after and re.search(pattern, ln)),
                    None)

    def wait(self, pattern: str, after: float, timeout: float) -> float:
        C.wait_for(lambda: self.first(pattern, after) is not None, timeout, pattern)
        return self.first(pattern, after)  # type: ignore[return-value]

    def stop(self) -> None:
        C.stop(self.proc)
        self._reader.join(5)


def config(lab: Lab, passive: bool) -> str:
    targets = ", ".join(f'"icmp:{a}"' for a in (Lab.SERVER, *EXTRA))
    text = lab.default_config(masquerade=True)
    for k in lab.ks:
        text = text.replace(f'name = "isp{k}"\n', f'name = "isp{k}"\npriority = {k}\nweight = 1'
                            f"\ncheck = [{targets}]\n")
    return text + f"\n[health]\nrate = {RATE:g}\npassive = {str(passive).lower()}\n"


def cycle(lab: Lab, daemon: Daemon, opener: Opener, rng: random.Random) -> dict[str, float]:
    time.sleep(rng.random() * 3 / RATE)  # a random part of a probe round (the fault's phase)
    started = time.monotonic()
    faults.blackhole(lab, 1)
    try:
        dead = daemon.wait(r"health: isp1 alive -> dead", started, 30) - started
        C.wait_for(lambda: opener.first_by(2, started) is not None, 10, "a connection by isp2")
        moved = opener.first_by(2, started) - started  # type: ignore[operator]
        hurry = daemon.first(r"health: isp1 suspect", started)
    finally:
        cleared = time.monotonic()
        faults.clear(lab, 1)
    daemon.wait(r"health: isp1 dead -> alive", cleared, 60)
    C.wait_for(lambda: opener.first_by(1, time.monotonic() - 0.05) is not None, 10,
               "connections back on isp1")
    return {"dead": dead, "moved": moved,
            "hurry": float("nan") if hurry is None else hurry - started}


def main() -> int:
    args = C.parse_args(__doc__.split("\n\n")[0])
    runs = 3 if args.quick else 10
    rng = random.Random(14)
    got: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    csv_rows = []
    with Lab(("ppp", "ppp")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        for a in EXTRA:
            lab.exec("net", ["ip", "addr", "add", f"{a}/32", "dev", "lo"])
        for i in range(runs):
            for mode in C.rotate(MODES, i):
                lab.write_config(config(lab, passive=mode == "passive"))
                daemon = Daemon(lab)
                opener = None
                try:
                    t0 = time.monotonic()
                    for k in (1, 2):
                        daemon.wait(rf"health: isp{k} unknown -> alive", t0, 30)
                    opener = Opener(lab)
                    C.wait_for(lambda o=opener, t=t0: o.first_by(1, t) is not None, 10,
                               "connections by isp1")
                    r = cycle(lab, daemon, opener, rng)
                finally:
                    if opener is not None:
                        opener.stop()
                    daemon.stop()
                got[mode].append(r)
                csv_rows += [(mode, i + 1, k, f"{v:.3f}") for k, v in r.items()]
                print(f"run {i + 1}/{runs} {mode}: dead {r['dead']:.2f} s, moved "
                      f"{r['moved']:.2f} s, hurry {r['hurry']:.2f} s", flush=True)
    rows = []
    base = statistics.median(g["dead"] for g in got[MODES[0]])
    for mode in MODES:
        g = got[mode]
        dead, moved = [x["dead"] for x in g], [x["moved"] for x in g]
        hurries = [x["hurry"] for x in g if x["hurry"] == x["hurry"]]
        rows.append((mode, len(g), f"{statistics.median(dead):.2f}", f"{max(dead):.2f}",
                     f"{statistics.median(moved):.2f}", f"{max(moved):.2f}",
                     f"{statistics.median(hurries):.2f}" if hurries else "-",
                     f"{statistics.median(dead) / base:.2f}"))
    head = ("mode", "runs", "dead p50 s", "max s", "moved p50 s", "max s", "hurry p50 s",
            "dead vs probes alone")
    tab = C.table(head, rows)
    print(tab)
    C.write_csv(args.out, "passive", ("mode", "run", "figure", "value"), csv_rows)
    C.write_md(args.out, "passive", "## The passive health signal\n\n"
               f"{runs} blackholes per mode, `[health] rate = {RATE:g}`, 3 ICMP targets, a LAN "
               "host opening 10 connections/s through isp1; seconds from the fault.\n\n" + tab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
