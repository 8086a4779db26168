"""`connpin connections` and `connpin flush`: look at and steer what is pinned to an uplink."""

from __future__ import annotations

import argparse
import sys
import time

from connpin import pins
from connpin.errors import UnknownUplink, Usage
from connpin.kernel import conntrack as ct
from connpin.model import Config
from connpin.render import jsonout
from connpin.render.columns import columns
from connpin.values import UplinkState


def _uplinks(config: Config) -> tuple[list[UplinkState], object]:
    """Every uplink interface connpin knows of (up or not), from one observation."""
    from connpin import engine

    result = engine.observe(config)
    return list(result.desired.uplinks), result.observed


def _pick(config: Config, states: list[UplinkState], which: str | None) -> list[UplinkState]:
    if which is None:
        return states
    chosen = [s for s in states if which in (s.uplink, s.interface)]
    if not chosen:
        names = sorted({s.uplink for s in states} | {s.interface for s in states})
        raise UnknownUplink(f"{which!r} is not an uplink or uplink interface in {config.path} "
                            f"(known: {', '.join(names) or 'none'})")
    return chosen


def _row(e: ct.Entry, here: pins.Inside, table: dict[str, int], now_ns: int) -> dict:
    def ep(addr: str, port: int | None) -> str:
        host = f"[{addr}]" if ":" in addr else addr
        return f"{host}:{port}" if port is not None else addr

    quiet = ct.idle(e, table)
    return {
        "proto": e.proto_name,
        "direction": "in" if pins.inbound(e, here) else "out",
        "src": ep(e.orig.src, e.orig.sport),
        "dst": ep(e.orig.dst, e.orig.dport),
        "nat": e.nat,
        "state": e.state,
        "idle": quiet,
        "age": None if e.start_ns is None else max(0, (now_ns - e.start_ns) // 10**9),
        "timeout": e.timeout,
        "mark": f"{e.mark:#010x}",
        "bytes": e.bytes,
    }


def connections(config: Config, args: argparse.Namespace) -> int:
    states, observed = _uplinks(config)
    chosen = _pick(config, states, args.uplink)
    here, table, now = pins.inside(observed), ct.timeouts(), time.time_ns()
    groups = []
    with ct.Conntrack() as c:
        for s in chosen:
            rows = [_row(e, here, table, now)
                    for e in c.entries(s.slot.mark, config.pinning.mark_mask)]
            rows.sort(key=lambda r: (r["proto"], r["src"], r["dst"]))
            groups.append({"uplink": s.uplink, "interface": s.interface, "up": s.up,
                           "mark": f"{s.slot.mark:#010x}", "connections": rows})
    if args.json:
        jsonout.emit(jsonout.document("connections", uplinks=groups))
        return 0
    out = sys.stdout
    for g in groups:
        n = len(g["connections"])
        state = "up" if g["up"] else "down"
        out.write(f"{g['uplink']} ({g['interface']}, {state}, mark {g['mark']}): "
                  f"{n} connection{'s' if n != 1 else ''}\n")
        if not n:
            continue
        head = ("proto", "dir", "source", "destination", "nat", "state", "idle", "age")
        rows = [head] + [(r["proto"], r["direction"], r["src"], r["dst"], r["nat"] or "-",
                          r["state"], _secs(r["idle"]), _secs(r["age"]))
                         for r in g["connections"]]
        out.writelines(line + "\n" for line in columns(rows, indent="  "))
    return 0


def _secs(v: int | None) -> str:
    if v is None:
        return "-"
    return f"{v}s" if v < 120 else f"{v // 60}m" if v < 7200 else f"{v // 3600}h"


def flush(config: Config, args: argparse.Namespace) -> int:
    if args.idle is not None and args.idle < 0:
        raise Usage("--idle must be 0 or more seconds")
    states, observed = _uplinks(config)
    chosen = _pick(config, states, args.uplink)
    table = ct.timeouts()
    total, rows = 0, []
    verb = "would flush" if args.dry_run else "flushed"
    with ct.Conntrack() as c:
        for s in chosen:
            mark, mask = s.slot.mark, config.pinning.mark_mask
            if args.idle is None:  # all of them: counted, then deleted by the kernel itself
                have = n = c.count(mark, mask)[0]
                if n and not args.dry_run:
                    c.flush(mark, mask)
            else:
                entries = c.entries(mark, mask)
                picked = pins.select(entries, idle=args.idle, timeouts=table)
                have, n = len(entries), len(picked) if args.dry_run else c.delete(picked)
            total += n
            rows.append({"uplink": s.uplink, "interface": s.interface,
                         "mark": f"{s.slot.mark:#010x}", "pinned": have, "flushed": n})
    if args.json:
        jsonout.emit(jsonout.document("flush", dry_run=args.dry_run, idle=args.idle,
                                      uplinks=rows, flushed=total))
        return 0
    idle = f" idle >= {args.idle}s" if args.idle is not None else ""
    for r in rows:
        print(f"{r['uplink']} ({r['interface']}): {verb} {r['flushed']} of {r['pinned']} "
              f"pinned connection{'s' if r['pinned'] != 1 else ''}{idle}")
    if len(chosen) > 1:
        print(f"{verb} {total} in all")
    return 0


def run(config: Config, args: argparse.Namespace) -> int:
    """`connpin connections` or `connpin flush`; an unknown uplink is a usage error (exit 2)."""
    return connections(config, args) if args.command == "connections" else flush(config, args)
