"""What `connpin top` shows, as text lines: a table of uplinks (state, health, pinned
connections, bytes/s in and out), the uplink new connections take, and the last events (what
changed between two samples). Pure: samples in, lines out; the sampling and the terminal are
`connpin.top`'s."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from connpin.render.columns import columns


@dataclass(frozen=True)
class Row:
    """One uplink interface in one sample."""

    uplink: str
    interface: str
    up: bool
    reason: str  # why it is up or down
    health: str | None = None  # "alive", "dead", "unknown" (None: no `check`)
    rtt_ms: float | None = None  # best RTT among its targets
    pinned: int | None = None  # connections pinned to it (None: not counted this time)
    bytes_in: int | None = None  # cumulative counters (None: unknown)
    bytes_out: int | None = None


@dataclass(frozen=True)
class Sample:
    """What one refresh read: the time, the uplinks, where new connections go, a note."""

    at: float  # time.time()
    rows: tuple[Row, ...]
    new: str  # the uplink(s) new connections take, and who decides
    note: str = ""  # e.g. the daemon failing


def rate(value: float | None) -> str:
    """Bytes per second, short: "0 B/s", "12.3 KiB/s", "4.0 MiB/s"; "-" when unknown."""
    if value is None:
        return "-"
    b = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            break
        b /= 1024
    return f"{b:.0f} {unit}/s" if unit == "B" else f"{b:.1f} {unit}/s"


def _state(r: Row) -> str:
    return "up" if r.up else f"down ({r.reason})"


def _health(r: Row) -> str:
    if r.health is None:
        return "-"
    return r.health + ("" if r.rtt_ms is None or r.health != "alive" else f" {r.rtt_ms:.0f} ms")


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def changes(old: Sample, new: Sample) -> list[str]:
    """Events between two samples: uplink state and health changes, interfaces appearing or
    going, and a change of where new connections go."""
    t = _clock(new.at)
    before = {r.interface: r for r in old.rows}
    out = []
    for r in new.rows:
        was = before.pop(r.interface, None)
        who = f"{r.uplink} {r.interface}"
        if was is None:
            out.append(f"{t} {who}: appeared, {_state(r)}")
            continue
        if (was.up, was.reason) != (r.up, r.reason):
            out.append(f"{t} {who}: {_state(was)} -> {_state(r)}")
        if was.health != r.health and r.health is not None:
            out.append(f"{t} {who}: health {was.health or '-'} -> {r.health}")
    for r in before.values():
        out.append(f"{t} {r.uplink} {r.interface}: no longer an uplink interface")
    if old.new != new.new:
        out.append(f"{t} new connections: {new.new}")
    if old.note != new.note and new.note:
        out.append(f"{t} {new.note}")
    return out


class View:
    """Successive samples -> rates and events -> the lines of one screen."""

    def __init__(self, interval: float, keep_events: int = 50) -> None:
        self.interval = interval
        self.prev: Sample | None = None
        self.cur: Sample | None = None
        self.events: deque[str] = deque(maxlen=keep_events)

    def update(self, sample: Sample) -> list[str]:
        """Take a sample; returns the events it brought."""
        new = changes(self.cur, sample) if self.cur is not None else []
        self.events.extend(new)
        self.prev, self.cur = self.cur, sample
        return new

    def rates(self) -> dict[str, tuple[float | None, float | None]]:
        """interface -> (bytes/s in, bytes/s out) between the last two samples."""
        out: dict[str, tuple[float | None, float | None]] = {}
        if self.cur is None:
            return out
        before = {r.interface: r for r in self.prev.rows} if self.prev else {}
        dt = self.cur.at - self.prev.at if self.prev else 0.0
        for r in self.cur.rows:
            was = before.get(r.interface)

            def per_s(now: int | None, then: int | None) -> float | None:
                if now is None or then is None or dt <= 0 or now < then:
                    return None  # unknown, or the counters restarted (interface recreated)
                return (now - then) / dt

            out[r.interface] = (per_s(r.bytes_in, was and was.bytes_in),
                                per_s(r.bytes_out, was and was.bytes_out)) if was else (None, None)
        return out

    def table(self) -> list[str]:
        assert self.cur is not None
        rates = self.rates()
        rows = [("uplink", "interface", "state", "health", "pinned", "in", "out")]
        for r in self.cur.rows:
            rin, rout = rates.get(r.interface, (None, None))
            rows.append((r.uplink, r.interface, _state(r), _health(r),
                         "-" if r.pinned is None else str(r.pinned), rate(rin), rate(rout)))
        return columns(rows)

    def lines(self, width: int = 100, height: int | None = None, *, header: bool = True
              ) -> list[str]:
        """The screen: a title, the table, where new connections go, the newest events first
        (as many as fit in `height`), every line cut to `width`."""
        if self.cur is None:
            return ["connpin top: reading ..."]
        out = []
        if header:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.cur.at))
            out.append(f"connpin top  {stamp}  every {self.interval:g} s  (q quits)")
            out.append("")
        out += self.table()
        out.append("")
        out.append(f"new connections: {self.cur.new}")
        if self.cur.note:
            out.append(self.cur.note)
        out.append("")
        out.append("last events:" if self.events else "last events: none since top started")
        room = len(self.events) if height is None else max(0, height - len(out))
        out += [f"  {e}" for e in list(self.events)[::-1][:room]]
        return [ln[:width] for ln in out]

    def plain(self) -> list[str]:
        """Lines for a pipe or a log (no terminal): a timestamped table, then the events of
        this sample only."""
        assert self.cur is not None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.cur.at))
        out = [f"{stamp} new connections: {self.cur.new}"] + self.table()
        if self.cur.note:
            out.append(self.cur.note)
        return out
