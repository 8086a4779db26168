"""Pinned connections: count, list, select and flush them per uplink, and carry out the
failback / on_down flushes that `steer` decides, including the busy connections that
`flush-idle` leaves for later (kept in /run, swept as they go idle).

Everything goes through the conntrack adapter with the kernel filtering by mark, so other
uplinks, unmarked connections and mark bits outside connpin's mask are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from connpin.kernel import conntrack as ct
from connpin.kernel import state
from connpin.model import Config
from connpin.steer import Flush
from connpin.values import Observed, UplinkState


class Inside:
    """Where connections start on this side (the router and what it routes to non-uplinks)."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        nets = [ipaddress.ip_network(p, strict=False) for p in prefixes]
        self.nets = sorted(nets, key=lambda n: n.prefixlen, reverse=True)

    def __contains__(self, address: str) -> bool:
        try:
            a = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(a in n for n in self.nets if n.version == a.version)


def inside(observed: Observed) -> Inside:
    return Inside(observed.inside)


def inbound(e: ct.Entry, here: Inside) -> bool:
    """Arrived on an uplink: a port forward (DNAT), or started by a peer that is not on this
    side (a connection to the router itself, or routed to an inside host)."""
    return bool(e.status & ct.IPS_DST_NAT) or e.orig.src not in here


@dataclass
class Counted:
    uplink: str
    interface: str
    connections: int
    bytes: int | None


def counts(config: Config, uplinks: Iterable[UplinkState]) -> list[Counted]:
    """Per uplink interface, how many connections are pinned to it (and their bytes when
    conntrack accounting is on)."""
    from concurrent.futures import ThreadPoolExecutor

    acct = ct.accounting()
    mask = config.pinning.mark_mask
    states = list(uplinks)

    def one(s: UplinkState) -> Counted:
        # one socket per thread: the kernel serialises each dump in its reader's syscall,
        # so dumps of different marks run on different CPUs
        with ct.Conntrack() as c:
            return Counted(s.uplink, s.interface, *c.count(s.slot.mark, mask, with_bytes=acct))

    if len(states) <= 1:
        return [one(s) for s in states]
    with ThreadPoolExecutor(min(len(states), os.cpu_count() or 1, 4)) as pool:
        return list(pool.map(one, states))


def select(entries: Iterable[ct.Entry], *, outbound_only: bool = False,
           idle: int | None = None, here: Inside | None = None,
           timeouts: dict[str, int] | None = None) -> list[ct.Entry]:
    out = []
    for e in entries:
        if outbound_only and inbound(e, here or Inside(())):
            continue
        if idle is not None:
            quiet = ct.idle(e, timeouts or {})
            if quiet is None or quiet < idle:
                continue
        out.append(e)
    return out


# -- failback / on_down ------------------------------------------------------------------------
def _pending_path() -> str:
    return os.path.join(state.directory(), "failback.json")


def load_pending() -> list[dict]:
    try:
        with open(_pending_path()) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return []


def save_pending(pending: list[dict]) -> None:
    path = _pending_path()
    if not pending:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(pending, f)
    os.replace(path + ".tmp", path)


def carry_out(config: Config, flushes: list[Flush], observed: Observed,
              went_down: Iterable[str]) -> list[str]:
    """Run the flushes; remember the busy connections `flush-idle` must come back for.
    A pending failback is dropped when the uplink that triggered it goes down again.
    Returns one log line per flush. Called under the namespace's lock."""
    gone = set(went_down)
    pending = [p for p in load_pending() if p["trigger"] not in gone]
    notes: list[str] = []
    if flushes:
        here, table = inside(observed), ct.timeouts()
        with ct.Conntrack() as c:
            for f in flushes:
                entries = c.entries(f.mark, config.pinning.mark_mask)
                chosen = select(entries, outbound_only=f.outbound_only, idle=f.idle,
                                here=here, timeouts=table)
                n = c.delete(chosen)
                notes.append(f"{f}: {n} flushed")
                if f.follow:
                    taken = {e.handle for e in chosen}
                    busy = [e for e in select(entries, outbound_only=True, here=here)
                            if e.handle not in taken]
                    pending = [p for p in pending if p["mark"] != f.mark]
                    if busy:
                        pending.append({"uplink": f.uplink, "interface": f.interface,
                                        "mark": f.mark, "idle": f.idle, "trigger": f.trigger,
                                        "handles": [e.handle.hex() for e in busy]})
                        notes.append(f"  {len(busy)} busy connection(s) of {f.uplink} move "
                                     f"once idle for {f.idle}s")
    save_pending(pending)
    return notes


def sweep(config: Config) -> tuple[int, float | None]:
    """Flush the pending busy connections that have gone idle. Returns (flushed, seconds until
    the next one could be due, or None when nothing is pending). Called under the lock."""
    pending = load_pending()
    if not pending:
        return 0, None
    table = ct.timeouts()
    flushed, keep, wait = 0, [], None
    with ct.Conntrack() as c:
        for p in pending:
            want = set(p["handles"])
            alive = [e for e in c.entries(p["mark"], config.pinning.mark_mask)
                     if e.handle.hex() in want]
            ready, busy = [], []
            for e in alive:
                (ready if (ct.idle(e, table) or 0) >= p["idle"] else busy).append(e)
            flushed += c.delete(ready)
            if busy:
                keep.append({**p, "handles": [e.handle.hex() for e in busy]})
                soonest = min(p["idle"] - (ct.idle(e, table) or 0) for e in busy)
                wait = soonest if wait is None else min(wait, soonest)
    save_pending(keep)
    return flushed, wait


def follow(config: Config, interval: float = 1.0) -> Iterator[int]:
    """Sweep until nothing is pending; yields what each pass flushed."""
    while True:
        with state.locked():
            n, wait = sweep(config)
        yield n
        if wait is None:
            return
        time.sleep(min(max(wait, interval), 30.0))
