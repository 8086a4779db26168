"""`connpin top`: the live view. Samples what `status` reads (engine.observe, the daemon's
record with health, pinned connection counts) plus byte counters per uplink, and shows them
with `render.top`: in a terminal a refreshing curses screen that quits on `q` (works over ssh),
otherwise (a pipe, a log, `--once`) plain lines every refresh.

Byte counters come from connpin's own nft counters per uplink with [metrics] (only its pinned
connections, keyed by mark), else from the uplink's link statistics (rtnetlink): `COUNTERS`.
Counting pinned connections asks conntrack for the entries of each mark: where that gets slow
(a very busy router) it is done less often, at most ~5% of the time."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from connpin import model
from connpin.render.top import Row, Sample, View
from connpin.values import Counters, UplinkState


def link_counters(sampler: Sampler, states: Sequence[UplinkState]) -> dict[str, Counters]:
    """interface -> Counters from the links' statistics (all the interface carried)."""
    return sampler.stats.counters(s.interface for s in states)


def nft_counters(sampler: Sampler, states: Sequence[UplinkState]) -> dict[str, Counters]:
    """interface -> Counters from connpin's own nft counters ([metrics]: only the uplink's
    pinned connections, keyed by mark); the link statistics while the table has none."""
    from connpin.kernel import counters
    from connpin.render.nft import counter_names

    raw = counters.read_raw(None, sampler.config.pinning.nft_table)
    if not raw:
        return link_counters(sampler, states)
    out = {}
    for s in states:
        new, out_, in_ = (raw.get(n, (0, 0)) for n in counter_names(s))
        out[s.interface] = Counters(new=new[0], packets_out=out_[0], bytes_out=out_[1],
                                    packets_in=in_[0], bytes_in=in_[1])
    return out


def any_counters(sampler: Sampler, states: Sequence[UplinkState]) -> dict[str, Counters]:
    """connpin's nft counters with [metrics], else the links' statistics."""
    if sampler.config.metrics is not None:
        return nft_counters(sampler, states)
    return link_counters(sampler, states)


#: (sampler, uplink states) -> interface -> Counters: connpin's own nft counters per uplink with
#: [metrics], else the link statistics; a reader that fails shows "-", never stops top.
COUNTERS: Callable[[Sampler, Sequence[UplinkState]], dict[str, Counters]] = any_counters


class Sampler:
    """Reads one Sample at a time, keeping its kernel sockets between refreshes."""

    def __init__(self, config: model.Config, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        from connpin.kernel.linkstats import LinkStats
        from connpin.kernel.machine import Kernel

        self.config = config
        self.clock = clock
        self.machine = Kernel()
        self.stats = LinkStats()
        self.pinned: dict[str, int] = {}
        self.count_due = float("-inf")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.machine.close()
        with contextlib.suppress(Exception):
            self.stats.close()

    def _count(self, uplinks: list[Any]) -> None:
        from connpin import pins

        now = self.clock()
        if now < self.count_due:
            return
        try:
            self.pinned = {c.interface: c.connections for c in pins.counts(self.config, uplinks)}
        except Exception:  # noqa: BLE001 - no conntrack here: the column shows "-"
            self.pinned = {}
        took = self.clock() - now
        self.count_due = now + 20 * took  # never more than ~5% of the time

    def sample(self) -> Sample:
        from connpin import engine
        from connpin.watch import record

        result = engine.observe(self.config, machine=self.machine)
        order = {u.name: i for i, u in enumerate(self.config.uplinks)}  # config order
        states = sorted(result.desired.uplinks,
                        key=lambda s: (order.get(s.uplink, len(order)), s.interface))
        self._count(states)
        daemon = record.load()
        health = (daemon or {}).get("health") or {}
        try:
            counters = COUNTERS(self, states)
        except Exception:  # noqa: BLE001 - bytes/s unknown this time
            counters = {}
        rows = []
        for s in states:
            h = health.get(s.uplink)
            rtts = [t["rtt_ms"] for t in (h or {}).get("targets", []) if t.get("rtt_ms")]
            c = counters.get(s.interface)
            rows.append(Row(s.uplink, s.interface, s.up, s.reason,
                            h["state"] if h else None, min(rtts) if rtts else None,
                            self.pinned.get(s.interface),
                            c.bytes_in if c else None, c.bytes_out if c else None))
        dead = frozenset((daemon or {}).get("dead") or ())
        return Sample(time.time(), tuple(rows), self._new(states, dead), _note(daemon))

    def _new(self, states: list[Any], dead: frozenset[str]) -> str:
        """Where a new connection goes now: connpin's choice (weights, classes), or main's
        best default route."""
        if self.config.selecting:
            from connpin import choice

            default = choice.choices(self.config, states, 4, dead)[-1]
            shares = default.shares()
            if not shares:
                return "no live uplink: the routing table decides"
            names = {s.interface: s.uplink for s in states}
            text = ", ".join(f"{names[i]} {i} {share:.0%}" for i, share in shares.items())
            classes = len(self.config.classes)
            return text + (" (connpin chooses" + (f"; {classes} class(es) apply first)"
                                                  if classes else ")"))
        iface = self.stats.default_interface()
        if iface is None:
            return "no default route in main"
        uplink = next((s.uplink for s in states if s.interface == iface), None)
        return (f"{uplink} {iface} (main's default route)" if uplink else
                f"{iface} (main's default route; not an uplink: not pinned)")


def _note(daemon: dict | None) -> str:
    failing = (daemon or {}).get("failing")
    if failing:
        return (f"daemon failing since {failing['since']} ({failing['attempts']} attempts): "
                f"{failing['cause']}")
    return ""


def _quit_requested(stdin: TextIO) -> bool | None:
    """Plain mode: a line "q" on stdin (a pipe) quits; None once stdin is closed."""
    try:
        ready, _, _ = select.select([stdin], [], [], 0)
    except (ValueError, OSError):
        return None
    if not ready:
        return False
    line = stdin.readline()
    if not line:
        return None
    return line.strip() == "q"


def plain(sampler: Any, view: View, interval: float, count: int | None,
          out: TextIO = sys.stdout, stdin: TextIO | None = sys.stdin) -> int:
    """Plain lines every `interval` seconds, `count` times (None: until "q" or Ctrl-C)."""
    n = 0
    while True:
        events = view.update(sampler.sample())
        lines = view.plain() + [f"event: {e}" for e in events]
        out.write("\n".join(lines) + "\n\n")
        out.flush()
        n += 1
        if count is not None and n >= count:
            return 0
        deadline = time.monotonic() + interval
        while (left := deadline - time.monotonic()) > 0:
            if stdin is not None and not stdin.isatty():
                q = _quit_requested(stdin)
                if q:
                    return 0
                if q is None:
                    stdin = None
            time.sleep(min(left, 0.1))


def screen(sampler: Any, view: View, interval: float) -> int:
    """The curses screen: refresh every `interval` seconds; `q` quits, any other key
    refreshes now."""
    import curses

    def loop(win: Any) -> int:
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        win.timeout(100)
        due = 0.0
        while True:
            now = time.monotonic()
            if now >= due:
                view.update(sampler.sample())
                due = now + interval
                _draw(win, view)
            key = win.getch()
            if key in (ord("q"), ord("Q")):
                return 0
            if key == curses.KEY_RESIZE:
                _draw(win, view)
            elif key != -1:
                due = 0.0

    return curses.wrapper(loop)


def _draw(win: Any, view: View) -> None:
    import curses

    height, width = win.getmaxyx()
    win.erase()
    for y, line in enumerate(view.lines(max(1, width - 1), height)[:height]):
        with contextlib.suppress(curses.error):
            win.addstr(y, 0, line)
    win.refresh()


def run(config: model.Config, interval: float = 2.0, once: bool = False,
        count: int | None = None) -> int:
    """The CLI's entry: a screen on a terminal, plain lines otherwise."""
    sampler = Sampler(config)
    view = View(interval)
    try:
        if once or count is not None or not (sys.stdout.isatty() and sys.stdin.isatty()):
            return plain(sampler, view, interval, 1 if once else count)
        if not os.environ.get("TERM"):
            os.environ["TERM"] = "vt100"  # curses needs one; ssh and tmux set theirs
        return screen(sampler, view, interval)
    finally:
        sampler.close()
