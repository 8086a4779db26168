"""`connpin lab demo`: the story of issue 3, told twice (without, then with connpin).

Each run builds a fresh lab, so the two columns of the final table are independent. The
narration prints a line per step as it happens, with the uplink each connection uses and its
round-trip time; a probe that stalls or dies is reported the moment it does.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from connpin.lab.commands import LabError
from connpin.lab.core import Lab
from connpin.lab.echo import Probe
from connpin.render.columns import columns

PREFERRED, BACKUP = 1, 2
STALL = 1.0  # a connection that goes this long without a round trip has stalled
FLAPS = 3

SCENARIOS = (
    ("1", "a LAN connection rides the backup ISP"),
    ("2", "new connections take the preferred ISP when it returns"),
    ("3", "that old connection keeps flowing"),
    ("4", "connections arriving on the backup ISP are answered"),
    ("5", f"preferred ISP flaps {FLAPS}x: backup connections never stall"),
)


@dataclass
class Outcome:
    ok: bool
    detail: str

    def cell(self) -> str:
        return ("pass" if self.ok else "FAIL") + (f" ({self.detail})" if self.detail else "")


class Narrator:
    """Prints one line per step (thread-safe: probes report stalls from their own threads)."""

    def __init__(self, out: TextIO, label: str):
        self.out, self.label, self._lock = out, label, threading.Lock()
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self.t0:5.1f}s {self.label}] {text}", file=self.out,
                  flush=True)

    def probe_events(self, what: str) -> Callable[[str, Probe], None]:
        def on_event(event: str, p: Probe) -> None:
            if event == "stall":
                self.say(f"   ! {what}: no reply for {p.stall_after:.0f} s: it hangs")
            elif event == "resume":
                self.say(f"   ! {what}: flowing again")
            elif event == "error":
                self.say(f"   ! {what}: {_describe_error(p.error)}")
        return on_event


def _describe_error(e: BaseException | None) -> str:
    if isinstance(e, ConnectionResetError) or getattr(e, "errno", None) == errno.ECONNRESET:
        return "reset by the server"
    return f"died ({e})"


def _ms(p: Probe) -> str:
    return f"rtt {p.last_rtt * 1000:.2f} ms" if p.last_rtt is not None else "no rtt"


def _via(lab: Lab, addr: str | None) -> str:
    k = lab.uplink_of(addr)
    return f"ISP {k} ({addr})" if k else f"{addr or 'nowhere'}"


def _flowing(p: Probe, rounds: int = 3, timeout: float = 2.0) -> bool:
    return p.alive and p.wait_rounds(rounds, timeout) and p.healthy(STALL)


def story(uplinks: Sequence[str], pinning: bool, out: TextIO = sys.stdout,
          keep: bool = False) -> tuple[dict[str, Outcome], Lab | None]:
    """One run of the story; returns the outcome per scenario (and the lab when kept)."""
    label = "with connpin" if pinning else "without connpin"
    n = Narrator(out, label)
    res: dict[str, Outcome] = {}
    lab = Lab(uplinks=uplinks, lab_masquerade=not pinning)
    with lab:
        n.say(f"lab {lab.prefix}: LAN host, router, {len(uplinks)} ISPs "
              f"({', '.join(f'{lab.iface(k)}' for k in lab.ks)}), internet server {lab.SERVER}")
        if pinning:
            lab.write_config(lab.default_config(masquerade=True))
            lab.connpin("hooks", "install", "--ppp", "--networkmanager", "--root",
                        str(lab.hooks_root))
            lab.connpin("apply")
            n.say("connpin: hooks installed for pppd/NetworkManager, pinning applied")
        else:
            n.say("no connpin: plain routing, masquerade on every uplink")
        probes: list[Probe] = []
        try:
            _run_steps(lab, n, res, probes)
        finally:
            for p in probes:
                p.close()
        if keep:
            lab.keep()
            return res, lab
    return res, None


def _run_steps(lab: Lab, n: Narrator, res: dict[str, Outcome], probes: list[Probe]) -> None:
    # 1. only the backup is up; a long-lived LAN connection rides it
    lab.uplink_up(BACKUP)
    n.say(f"1. only ISP {BACKUP} (backup, {lab.iface(BACKUP)}) is up; "
          f"the LAN host opens a long-lived connection to {lab.SERVER}:7")
    old: Probe | None = None
    try:
        old = lab.probe(on_event=n.probe_events("the old connection"), name="old")
        probes.append(old)
    except LabError as e:
        n.say(f"   cannot connect: {e}")
    if old is not None and _flowing(old):
        via = lab.uplink_of(old.peer)
        res["1"] = Outcome(via == BACKUP, "" if via == BACKUP else f"via {_via(lab, old.peer)}")
        n.say(f"   it rides {_via(lab, old.peer)}, {_ms(old)}")
    else:
        res["1"] = Outcome(False, "no connection")

    # 2. the preferred ISP comes back; the main table moves to it
    lab.uplink_up(PREFERRED)
    seen = lab.connect()
    ok = lab.uplink_of(seen) == PREFERRED
    res["2"] = Outcome(ok, "" if ok else f"via {_via(lab, seen)}")
    n.say(f"2. ISP {PREFERRED} (preferred, {lab.iface(PREFERRED)}) comes up: "
          f"a new connection leaves by {_via(lab, seen)}")

    # 3. the old connection
    if old is None:
        res["3"] = Outcome(False, "no connection")
    else:
        old.reset_gap()
        if _flowing(old, rounds=5, timeout=3.0):
            res["3"] = Outcome(True, f"max gap {old.max_gap:.2f} s")
            n.say(f"3. the old connection keeps flowing over {_via(lab, old.peer)}, {_ms(old)}, "
                  f"longest gap {old.max_gap:.2f} s")
        else:
            reset = old.error is not None and "reset" in _describe_error(old.error)
            why = _describe_error(old.error) if old.error else "it hangs"
            res["3"] = Outcome(False, why.split(" (")[0])
            n.say(f"3. the old connection is broken: {why}")
            if reset:
                n.say(f"   (when the route moved to ISP {PREFERRED}, the kernel dropped the "
                      "connection's masquerade entry; its next packet was NATed afresh to "
                      f"ISP {PREFERRED}'s address, which the server had never seen)")
            elif old.error is None:
                n.say(f"   (its packets follow the main table to ISP {PREFERRED}, still NATed "
                      f"to ISP {BACKUP}'s address, and ISP {PREFERRED} drops them)")

    # 4. connections from the internet arriving on the backup
    dst = lab.address(BACKUP)
    with ThreadPoolExecutor(2) as pool:  # both may time out: wait once, not twice
        fwd_f = pool.submit(lab.connect, "net", dst, lab.FORWARD_PORT, 1.5)
        own_f = pool.submit(lab.connect, "net", dst, lab.ECHO_PORT, 1.5)
        fwd, own = fwd_f.result(), own_f.result()
    inbound: Probe | None = None
    if fwd is not None:
        try:
            inbound = lab.probe(src="net", dst=dst, port=lab.FORWARD_PORT, name="inbound",
                                on_event=n.probe_events("the inbound connection"))
            probes.append(inbound)
        except LabError:
            inbound = None
    ok = fwd is not None and own is not None and inbound is not None and _flowing(inbound)
    failed = [w for w, r in (("port forward", fwd), ("router", own)) if r is None]
    res["4"] = Outcome(ok, f"{', '.join(failed)}: no answer" if failed else "")
    n.say(f"4. the internet connects to {dst} (ISP {BACKUP}): port forward to the LAN "
          f"{'answers' if fwd else 'gets no answer'}, the router itself "
          f"{'answers' if own else 'gets no answer'}")
    if failed:
        n.say(f"   (the replies follow the main table to ISP {PREFERRED}, with ISP {BACKUP}'s "
              f"address, and ISP {PREFERRED} drops them)")

    # 5. the preferred ISP flaps; connections over the backup must never stall
    lab.uplink_down(PREFERRED)
    n.say(f"5. ISP {PREFERRED} goes down; the LAN host opens another connection "
          f"(it rides the backup), then ISP {PREFERRED} flaps {FLAPS} times")
    try:
        fresh = lab.probe(on_event=n.probe_events("the new backup connection"), name="fresh")
        probes.append(fresh)
    except LabError as e:
        n.say(f"   cannot connect: {e}")
        res["5"] = Outcome(False, "no connection")
        return
    watched = [p for p in (old, inbound, fresh) if p is not None and p.alive]
    for p in watched:
        p.reset_gap()
    broken = False
    for i in range(1, FLAPS + 1):
        for action in ("up", "down"):
            (lab.uplink_up if action == "up" else lab.uplink_down)(PREFERRED)
            alive = [p for p in watched if _flowing(p, rounds=2, timeout=1.5)]
            worst = max((p.max_gap for p in watched), default=0.0)
            n.say(f"   flap {i}: ISP {PREFERRED} {action:<4}: {len(alive)}/{len(watched)} "
                  f"backup connections flowing, worst gap {worst:.2f} s")
            if len(alive) < len(watched):
                broken = True
                break
        if broken:
            break
    if not lab.is_up(PREFERRED):
        lab.uplink_up(PREFERRED)
    worst = max((p.max_gap for p in watched), default=0.0)
    back = lab.uplink_of(lab.connect()) == PREFERRED
    ok = not broken and worst < STALL and back
    dead = next((p for p in watched if p.error is not None), None)
    detail = f"max gap {worst:.2f} s" if not broken else \
        _describe_error(dead.error) if dead else "a connection stalled"
    if not back:
        detail += ", new connections avoid ISP 1"
    res["5"] = Outcome(ok, detail)
    n.say(f"   after the flaps: {'no stall' if ok else 'FAILED'} ({detail}); new connections "
          f"leave by ISP {lab.uplink_of(lab.connect())}")


def table(without: dict[str, Outcome], with_: dict[str, Outcome]) -> str:
    rows = [("scenario", "without connpin", "with connpin")]
    for key, text in SCENARIOS:
        miss = Outcome(False, "not run")
        rows.append((f"{key}. {text}", without.get(key, miss).cell(),
                     with_.get(key, miss).cell()))
    return "\n".join(columns(rows, rule="-"))


def main(uplinks: Sequence[str] = ("ppp", "ppp"), keep: bool = False,
         out: TextIO = sys.stdout) -> int:
    """Both runs, the table; 0 iff every scenario passes with connpin."""
    if len(uplinks) < 2:
        raise LabError("the demo needs at least two uplinks")
    Lab(uplinks=uplinks)  # validates the kinds before telling anything (builds nothing)
    started = time.monotonic()
    print("The problem: a connection opened over the backup uplink is NATed to the backup's "
          "address.\nWhen the preferred uplink returns, the routing table sends its packets "
          "there and the ISP drops them.\nconnpin pins each connection to the uplink it "
          "started on.\n", file=out, flush=True)
    without, _ = story(uplinks, pinning=False, out=out)
    print(file=out)
    with_, kept = story(uplinks, pinning=True, out=out, keep=keep)
    print(f"\n{table(without, with_)}\n", file=out)
    ok = all(with_.get(k, Outcome(False, "")).ok for k, _ in SCENARIOS)
    print(f"{'connpin: all scenarios pass' if ok else 'connpin: FAILED'} "
          f"({time.monotonic() - started:.1f} s)", file=out)
    if kept is not None:
        print(f"\nThe lab {kept.prefix} is still running (with connpin). Explore it:\n"
              f"  connpin lab exec --lab {kept.prefix} router -- connpin status\n"
              f"  connpin lab exec --lab {kept.prefix} router -- nft list ruleset\n"
              f"  connpin lab connect --lab {kept.prefix}    # the ISP a LAN host leaves by\n"
              f"  connpin lab down {kept.prefix}             # when done", file=out)
    return 0 if ok else 1
