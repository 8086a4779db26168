"""`connpin lab demo --ha`: two routers, one set of pins (issue 16), told to a newcomer.

Two runs, each in a fresh HA lab (`lab.ha`): topology (a), uplinks shared by both routers,
where every pinned connection must survive the master's death on its uplink; then topology
(b), each router its own sessions, where they must fail fast (reset). The narration prints a
line per step as it happens; the table at the end gives, per connection, its uplink before and
after, whether it survived, and the gap. Exit 0 only when every pinned connection of (a)
survived; nothing (namespace, keepalived, conntrackd) is left behind either way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from connpin.lab.commands import LabError
from connpin.lab.echo import Probe
from connpin.lab.ha import HaLab
from connpin.render.columns import columns

ADVERT_INT = 0.1  # tuned; keepalived's default is 1 s (docs/ha.md has both figures)
RESUME = 30.0  # seconds a connection gets to resume after the takeover


@dataclass
class Row:
    topology: str
    name: str
    before: str
    after: str
    survived: bool
    detail: str


class Narrator:
    def __init__(self, out: TextIO, label: str):
        self.out, self.label, self.t0 = out, label, time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s {self.label}] {text}", file=self.out,
              flush=True)


def _uplink(lab: HaLab, p: Probe) -> str:
    k = lab.uplink_of(p.peer)
    return f"ISP {k} ({p.peer})" if k else str(p.peer)


def _pinned(lab: HaLab, n: Narrator) -> tuple[Probe, Probe]:
    a, b = lab.pinned_pair()
    n.say(f"connection a -> {lab.SERVERS[0]} rides {_uplink(lab, a)}; connection b -> "
          f"{lab.SERVERS[1]}, opened while ISP 2 was preferred, stays pinned to "
          f"{_uplink(lab, b)} (ISP 1 is preferred now)")
    return a, b


def _synced(lab: HaLab, n: Narrator, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in lab.ctd("r2", "-e").stdout.splitlines()
                if "ESTABLISHED" in r and lab.LAN_HOST in r]
        if len(rows) >= count:
            marks = sorted({w.split("=")[1] for r in rows for w in r.split()
                            if w.startswith("mark=")})
            n.say(f"r2's conntrackd holds both connections, with their marks "
                  f"({', '.join(f'0x{int(m):08x}' for m in marks)})")
            return
        time.sleep(0.1)
    n.say("r2's conntrackd does not hold the connections (yet)")


def story(topology: str, out: TextIO) -> list[Row]:
    label = "a: shared uplinks" if topology == "shared" else "b: own sessions"
    n = Narrator(out, label)
    rows: list[Row] = []
    lab = HaLab(topology, advert_int=ADVERT_INT)
    isps = ("one Ethernet segment per ISP, both routers on it" if topology == "shared"
            else "a PPP-like session per router, its own address")
    n.say(f"building lab {lab.prefix}: LAN host {lab.LAN_HOST} behind the VRRP address "
          f"{lab.LAN_VIP}, routers r1 and r2, sync link sync0, ISPs 1 and 2 ({isps})")
    with lab:
        peer = lab.connpin("r1", "check", "--peer", str(lab.config("r2")), check=False)
        same = peer.returncode == 0
        n.say(f"keepalived (advert_int {ADVERT_INT:g} s) and conntrackd run in both routers, "
              f"r1 is master; connpin applied on both: "
              f"{'same marks and tables' if same else 'DIFFERENT marks'} (connpin check --peer)")
        a, b = _pinned(lab, n)
        _synced(lab, n, 2)
        before = {p.name: _uplink(lab, p) for p in (a, b)}
        for p in (a, b):
            p.reset_gap()
        n.say("r1 dies mid-transfer: keepalived and conntrackd killed (-9), its links down")
        died = lab.crash("r1")
        took = lab.wait_role("r2", "promote", RESUME, since=died) - died
        n.say(f"r2 became master {took:.2f} s later and ran `connpin ha promote`")
        deadline = time.monotonic() + RESUME
        while time.monotonic() < deadline and not all(
                p.error is not None or p.healthy(0.5) for p in (a, b)):
            time.sleep(0.05)
        for p in (a, b):
            p.wait_rounds(3, 5)
            if p.error is None and p.healthy(1.0):
                same = _uplink(lab, p) == before[p.name]
                detail = f"gap {p.max_gap:.2f} s"
                rows.append(Row(label, p.name, before[p.name], _uplink(lab, p), same, detail))
                n.say(f"connection {p.name}: {'survived' if same else 'MOVED'}, "
                      f"{_uplink(lab, p)}, longest gap {p.max_gap:.2f} s")
            else:
                died_at = lab.died_at(p)
                why = (f"reset {died_at - died:.2f} s after the crash" if died_at is not None
                       else f"hangs (no reply for {p.max_gap:.1f} s)")
                rows.append(Row(label, p.name, before[p.name], "-", False, why))
                n.say(f"connection {p.name}: {why}")
        seen = lab.connect()
        where = (f"ISP {lab.uplink_of(seen)} ({seen})" if seen else "nowhere")
        n.say(f"a new connection leaves by {where}"
              + (", r2's own address" if topology == "own" and seen else ""))
    return rows


def main(out: TextIO = sys.stdout) -> int:
    """Both topologies, then the table; 0 iff every pinned connection of (a) survived."""
    started = time.monotonic()
    print("Two routers, one set of pins. keepalived moves the LAN gateway (and, with shared "
          "uplinks, the\nuplinks' addresses) to the backup; conntrackd copies the master's "
          "connections, their marks\n(connpin's pins) included. Kill the master mid-transfer: "
          "does every pinned connection go on\nover the same uplink?\n", file=out, flush=True)
    rows: list[Row] = []
    for topology in ("shared", "own"):
        try:
            rows += story(topology, out)
        except LabError as e:
            print(f"lab: {e}", file=out, flush=True)
            if topology == "shared":
                rows.append(Row("a: shared uplinks", "-", "-", "-", False, str(e)[:60]))
        print(file=out)
    table = [("topology", "connection", "uplink before", "after", "result")]
    table += [(r.topology, r.name, r.before, r.after,
               ("survived" if r.survived else "lost") + f" ({r.detail})") for r in rows]
    print("\n".join(columns(table, rule="-")), file=out)
    shared = [r for r in rows if r.topology.startswith("a")]
    ok = bool(shared) and all(r.survived for r in shared)
    verdict = ("every pinned connection of (a) survived the failover" if ok
               else "FAILED: a pinned connection of (a) did not survive")
    print(f"\n{verdict}; in (b) they cannot, and are reset instead "
          f"({time.monotonic() - started:.1f} s)\n"
          "More: docs/ha.md; the kernel tests: .venv/bin/python -m pytest -q -s "
          "tests/kernel/test_ha_failover.py", file=out, flush=True)
    return 0 if ok else 1
