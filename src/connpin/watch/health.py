"""Health tracking inside `connpin watch`: which uplinks to probe and how (`wanted`, pure), the
probing thread (`Health`: a `health.monitor.Monitor` over the uplinks with `check`), the figures
for `connpin status` (`snapshot`, pure) and the user hooks run on a state change (`Hooks`).

The daemon's loop stays thin: after each converge it hands `Health.update` what it wants probed
(each uplink that is up: its interface, mark and address, from the converge's own result); the
thread applies that between probe steps (an uplink whose interface or address changed starts
over as unknown, one that went down or away becomes unknown and is no longer probed), and wakes
the loop when a transition happened or the figures are due for a refresh. The loop then `take`s
the transitions (log line, hooks, a converge) and the snapshot (into the record file).

Hooks: every executable regular file in /etc/connpin/events.d (or $CONNPIN_EVENTS_DIR), in name
order, run without a shell, with a timeout, in their own thread (a slow hook never delays
probing or the loop), with CONNPIN_UPLINK, CONNPIN_OLD, CONNPIN_NEW, CONNPIN_REASON and
CONNPIN_FAMILY (ipv4 / ipv6: one family side of an uplink whose `check` has both; both: the
uplink as a whole) set.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from connpin.health.targets import Target
from connpin.health.tracker import BOTH, UNKNOWN, Params, Tracker, Transition, UplinkHealth

EVENTS_DIR = "/etc/connpin/events.d"
EVENTS_DIR_ENV = "CONNPIN_EVENTS_DIR"
HOOK_TIMEOUT = 10.0  # seconds a hook may run before it is killed
REFRESH = 2.0  # seconds between snapshots for the record (RTT and loss move all the time)
STEP = 0.2  # longest the thread waits for probe results before looking at updates

#: uplink name -> (device, mark, IPv4 source or None, targets)
Wanted = dict[str, tuple[str, int, str | None, tuple[Target, ...]]]


def wanted(config: Any, result: Any) -> tuple[Wanted, dict[str, str]]:
    """What to probe after a converge: the uplinks with `check` that are up (a pattern uplink:
    its first interface that is up), and why the others are not probed."""
    out: Wanted = {}
    why: dict[str, str] = {}
    checked = {u.name: u.check for u in config.uplinks if u.check}
    for st in result.desired.uplinks:
        if st.uplink not in checked or st.uplink in out:
            continue
        link = result.observed.links.get(st.interface)
        if st.up and link is not None:
            source = link.addresses[0] if link.addresses else None
            out[st.uplink] = (st.interface, st.slot.mark, source, checked[st.uplink])
            why.pop(st.uplink, None)
        else:
            why.setdefault(st.uplink, f"{st.interface} {st.reason}")
    for name in checked:
        if name not in out:
            why.setdefault(name, "no interface")
    return out, why


def _wall(at: float, clock: Callable[[], float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - (clock() - at)))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def snapshot(h: UplinkHealth, interface: str | None, clock: Callable[[], float]) -> dict:
    """One uplink's health as plain JSON values (times as local wall-clock text)."""
    return {
        "state": h.state, "since": _wall(h.since, clock), "reason": h.reason,
        "at": round(time.time() - (clock() - h.since), 3),  # since, as an epoch (status)
        "interface": interface,
        "targets": [{"target": str(t.target), "rtt_ms": _ms(t.rtt), "srtt_ms": _ms(t.srtt),
                     "loss": None if t.loss is None else round(t.loss, 3),
                     "probes": t.probes, "lost": t.lost} for t in h.targets],
        # only when `check` has both families: each side's own state (choice.dead_of)
        **({"families": {f.family: {"state": f.state, "since": _wall(f.since, clock),
                                    "at": round(time.time() - (clock() - f.since), 3),
                                    "reason": f.reason} for f in h.families}}
           if h.families else {}),
    }


class Hooks:
    """Runs the events.d hooks of each transition, in order, in one worker thread."""

    def __init__(self, log: Callable[[str], None], directory: str | None = None,
                 timeout: float = HOOK_TIMEOUT):
        self.directory = directory or os.environ.get(EVENTS_DIR_ENV) or EVENTS_DIR
        self.log = log
        self.timeout = timeout
        self._queue: queue.Queue[Transition | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="connpin-events", daemon=True)
        self._thread.start()

    def programs(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return []
        paths = [os.path.join(self.directory, n) for n in names if not n.startswith(".")]
        return [p for p in paths if os.path.isfile(p) and os.access(p, os.X_OK)]

    def run(self, t: Transition) -> None:
        self._queue.put(t)

    def _work(self) -> None:
        while (t := self._queue.get()) is not None:
            env = {**os.environ, "CONNPIN_UPLINK": str(t.uplink), "CONNPIN_OLD": t.old,
                   "CONNPIN_NEW": t.new, "CONNPIN_REASON": t.reason,
                   "CONNPIN_FAMILY": t.family}
            for path in self.programs():
                try:
                    p = subprocess.run([path], env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       timeout=self.timeout, check=False)
                except subprocess.TimeoutExpired:
                    self.log(f"events hook {path}: killed after {self.timeout:g} s")
                except OSError as e:
                    self.log(f"events hook {path}: cannot run: {e.strerror or e}")
                else:
                    if p.returncode != 0:
                        err = p.stderr.decode(errors="replace").strip().splitlines()
                        self.log(f"events hook {path}: exit {p.returncode}"
                                 + (f": {err[-1][:200]}" if err else ""))

    def close(self, wait: float = HOOK_TIMEOUT) -> None:
        self._queue.put(None)
        self._thread.join(wait)


class Health:
    """The probing thread: a Monitor over the wanted uplinks; transitions and snapshots out."""

    def __init__(self, params: Params, wake: Callable[[], None],
                 log: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 prober: Any = None):
        self.params = params
        self.wake = wake
        self.log = log
        self.clock = clock
        self._prober = prober
        self._lock = threading.Lock()
        self._update: tuple[Wanted, dict[str, str]] | None = None
        self._passive_spec: Any = None  # watch.passive.Spec (the passive signal) or None
        self._transitions: list[Transition] = []
        self._snapshot: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # owned by the thread
        self._have: Wanted = {}
        self._absent: dict[str, tuple[float, str, str]] = {}  # name -> (since, reason, state)
        self._tracker = Tracker(params)
        self._monitor: Any = None
        self._refresh = float("-inf")
        self._passive: Any = None  # watch.passive.Watcher

    # -- the daemon's side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="connpin-health", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)

    def update(self, want: Wanted, why: dict[str, str], passive: Any = None) -> None:
        """What to probe from now on (applied by the thread before its next step), and the
        passive signal's `watch.passive.Spec` (None: off)."""
        with self._lock:
            self._update = (dict(want), dict(why))
            self._passive_spec = passive

    def take(self) -> tuple[list[Transition], dict[str, dict]]:
        """Transitions since the last call, and the latest snapshot (uplink -> figures)."""
        with self._lock:
            out, self._transitions = self._transitions, []
            return out, dict(self._snapshot)

    @property
    def dead(self) -> frozenset[str]:
        """Dead uplinks, and "name/ipv6" (or ipv4) for a family dead alone (choice.dead_of)."""
        from connpin.choice import dead_of

        with self._lock:
            return dead_of(self._snapshot)

    # -- the thread -------------------------------------------------------------------------------
    def open(self) -> None:
        """Make the prober (in this process's network namespace) and the monitor."""
        from connpin.health.monitor import Monitor
        from connpin.health.probe import Prober

        if self._prober is None:
            self._prober = Prober(None, self.clock)
        from connpin.watch.passive import Watcher

        self._monitor = Monitor(self._prober, self._tracker)
        self._passive = Watcher(self.log, self.clock)
        self._refresh = float("-inf")

    def step(self) -> None:
        """Apply an update, probe for up to STEP seconds, publish transitions and figures."""
        out = self._apply()
        out += self._monitor.step(self.clock() + STEP)
        self._passive.poll(self._monitor, self._have)
        now = self.clock()
        if out or now >= self._refresh:
            self._refresh = now + REFRESH
            snap = self._snap()
            with self._lock:
                self._transitions += out
                self._snapshot = snap
            self.wake()

    def _run(self) -> None:
        self.open()
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception as e:  # noqa: BLE001 - probing goes on; the loop is not hurt
                    tb = traceback.extract_tb(e.__traceback__)[-1]
                    where = f"{os.path.basename(tb.filename)}:{tb.lineno}"
                    self.log(f"health: probing failed ({type(e).__name__}: {e}, at {where}); "
                             "retrying")
                    self._stop.wait(1.0)
        finally:
            self._prober.close()

    def _apply(self) -> list[Transition]:
        with self._lock:
            update, self._update = self._update, None
            self._passive.configure(self._passive_spec)
        if update is None:
            return []
        want, why = update
        out: list[Transition] = []
        now = self.clock()
        for name in list(self._have):
            if want.get(name) != self._have[name]:
                old = self._tracker.state(name)
                reason = (f"{want[name][0]}: interface or address changed" if name in want
                          else f"not probed: {why.get(name, 'no longer checked')}")
                self._monitor.remove(name)
                self._tracker.remove(name)
                del self._have[name]
                if old != UNKNOWN:
                    out.append(Transition(name, old, UNKNOWN, now, reason))
                if name not in want:
                    self._absent[name] = (now, reason, UNKNOWN)
        from connpin.health.probe import Via

        for name, spec in want.items():
            if name not in self._have:
                device, mark, source, targets = spec
                self._monitor.add(name, Via(device=device, mark=mark, source=source), targets)
                self._have[name] = spec
                self._absent.pop(name, None)
        for name, reason in why.items():
            if name not in self._absent and name not in self._have:
                self._absent[name] = (now, f"not probed: {reason}", UNKNOWN)
        for name in [n for n in self._absent if n not in why]:
            del self._absent[name]
        return out

    def _snap(self) -> dict[str, dict]:
        out = {name: snapshot(self._tracker.snapshot(name), spec[0], self.clock)
               for name, spec in self._have.items()}
        for name, h in out.items():
            if (p := self._passive.figures(name)) is not None:
                h["passive"] = p
        for name, (since, reason, state) in self._absent.items():
            out[name] = {"state": state, "since": _wall(since, self.clock), "reason": reason,
                         "at": round(time.time() - (self.clock() - since), 3),
                         "interface": None, "targets": []}
        return out


def wake_fd(fd: int) -> Callable[[], None]:
    """A `wake` for Health: one byte into the daemon's wake-up pipe."""
    def wake() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, b"h")
    return wake


def passive_of(config: Any) -> Any:
    """The passive signal's spec for `Health.update` (watch/passive.py)."""
    from connpin.watch import passive

    return passive.spec(config)


def transition_line(t: Transition) -> str:
    side = "" if t.family == BOTH else f" {t.family}"
    return f"health: {t.uplink}{side} {t.old} -> {t.new} ({t.reason})"

