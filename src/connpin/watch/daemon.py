"""The daemon's shell: sockets, signals and the loop around the pure parts. Events are classified
by `classify`, timers and back-off decided by `schedule`; this module reads the sockets, runs
`engine.converge`, logs, tells systemd (`notify`) and `connpin status` (`record`) how it goes, and
recovers in place from errors outside a converge (rebuilt sockets, full resync).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from connpin import choice, engine, model
from connpin.watch import record
from connpin.watch.classify import Classifier
from connpin.watch.coexist import ConflictWatch
from connpin.watch.events import Events
from connpin.watch.schedule import NFT_KEY, RESYNC, Scheduler
from connpin.watch.systemd import notify, status_line, watchdog_interval

#: Test knob: a tiny SO_RCVBUF for the event socket, to force overflows.
RCVBUF_ENV = "CONNPIN_WATCH_RCVBUF"
#: Test knob: a path; when it exists the daemon removes it and breaks its event socket.
FAULT_ENV = "CONNPIN_WATCH_FAULT"
#: More recoveries than this within RECOVERY_WINDOW seconds: give up (exit 1, systemd restarts).
MAX_RECOVERIES = 5
RECOVERY_WINDOW = 60.0


class Fatal(Exception):
    """What the daemon cannot recover from in place."""


DEBUG, INFO, WARNING, ERROR, CRITICAL = (logging.DEBUG, logging.INFO, logging.WARNING,
                                        logging.ERROR, logging.CRITICAL)


def _sink(log: Callable[[str], None] | None) -> Callable[..., None]:
    """log(line, level=INFO): to the "connpin.watch" logger, or to a sink of lines (tests)."""
    if log is not None:
        return lambda line, level=INFO: log(line)
    logger = logging.getLogger("connpin.watch")
    return lambda line, level=INFO: logger.log(level, line)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0][:300] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Watcher:
    """The daemon's loop: events, timers and signals in, converges and log lines out."""

    def __init__(self, config_path: str, config: model.Config, *, verbose: bool = False,
                 resync: float = RESYNC, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config_path = config_path
        self.config = config
        self.verbose = verbose
        self.clock = clock
        # log(line, level=INFO): through `logging` (connpin.logs formats it), or a test's sink
        self.log = _sink(log)
        self.sched = Scheduler(clock, resync=resync, watchdog=watchdog_interval())
        self.classifier = Classifier(self._relevant, config.pinning.nft_table)
        self.previous: dict[str, tuple] = {}  # interface -> (up, reason, route) last seen
        self.counts = (len(config.uplinks), 0)  # uplink interfaces, up
        self.last_ms: float | None = None
        self.recoveries: list[float] = []
        self.sleep = time.sleep
        self.more = False  # a socket had more than one read takes
        self.rcvbuf = int(os.environ.get(RCVBUF_ENV) or 0) or None
        self.fault = os.environ.get(FAULT_ENV)
        self.events: Events | None = None
        self.nft_events: Events | None = None
        self._stop = False
        self._hup = False
        self.machine: Any = None
        self.health: Any = None  # watch.health.Health while any uplink has `check`
        self.hooks: Any = None  # watch.health.Hooks (events.d), made with the first Health
        self.health_record: dict[str, dict] = {}  # uplink -> figures, for `connpin status`
        self._wake_w = -1
        self.coexist = ConflictWatch(clock)  # others' ruleset changes -> look for conflicts
        self.metrics: Any = None  # metrics.collector.Metrics while the config has [metrics]
        self._publisher: Any = None

    def _relevant(self, name: str) -> bool:
        return self.config.match(name) is not None

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True

    # -- sockets ----------------------------------------------------------------------------------
    def _open(self) -> None:
        from connpin.kernel.machine import Kernel

        self._close()
        self.events = Events(self.rcvbuf)  # bound before the converge: nothing falls in between
        self.nft_events = Events(self.rcvbuf, nftables=True)
        self.machine = Kernel()

    def _close(self) -> None:
        for s in (self.events, self.nft_events):
            if s is not None:
                s.close()
        self.events = self.nft_events = None
        if self.machine is not None:
            with contextlib.suppress(Exception):
                self.machine.close()
            self.machine = None

    def _take(self) -> None:
        assert self.events is not None and self.nft_events is not None
        messages, overflow, more = self.events.read(self.classifier.foreign)
        for msg in messages:
            for name, what in self.classifier.classify(msg):
                if self.verbose:
                    self.log(f"event: {name}: {what}", DEBUG)
                self.sched.event(name, what)
                self._metric("event", "kernel")
        nft_messages, nft_overflow, nft_more = self.nft_events.read()
        for msg in nft_messages:
            what = self.classifier.classify_nft(msg)
            if what is not None:
                if self.verbose:
                    self.log(f"event: {what}", DEBUG)
                self.sched.event(NFT_KEY, what)
                self._metric("event", "nftables")
            elif self.classifier.foreign_nft(msg):
                self.coexist.changed()
        self.more = more or nft_more
        if overflow or nft_overflow:
            self.log("event socket overflowed (events lost): full resync", WARNING)
            self.sched.overflow()
            self.coexist.changed()
            self._metric("resync", "overflow")

    def _inject_fault(self) -> None:
        """Test hook: break the event socket under the daemon (a read error not ENOBUFS)."""
        if self.fault and self.events is not None and os.path.exists(self.fault):
            os.unlink(self.fault)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, self.events.fileno())  # same fd, no longer a socket: reads fail
            os.close(null)

    # -- converging -------------------------------------------------------------------------------
    def _dead(self) -> frozenset[str]:
        """Uplinks dead by their health check (none while nothing is checked)."""
        return self.health.dead if self.health is not None else frozenset()

    def converge(self, why: str) -> None:
        """One engine.converge; log one line per uplink whose state changed."""
        events = self.sched.take()
        self.sched.converging()
        cause: str | None = None
        out = None
        try:
            if self.sched.failures and self.machine is not None:  # a fresh netlink socket
                self.machine.close()
                from connpin.kernel.machine import Kernel

                self.machine = Kernel()
            self._metric("before_converge")  # counters read before a table replace resets them
            # uplinks dead by their health check get no new connection (when connpin chooses)
            out = engine.converge(self.config, machine=self.machine, dead=self._dead())
        except Exception as e:  # noqa: BLE001 - the daemon stays up and retries
            lines = str(e).strip().splitlines()
            cause = lines[0][:300] if lines else type(e).__name__
        if out is not None:
            self.last_ms = out.ms
            self._remember(out.result)
            self._health_update(out.result)
            if out.left:
                # Usually the kernel moved on between applying and verifying (the next event
                # is on its way): converge again at once; a failure only if it persists.
                cause = "kernel still differs after applying: " + "; ".join(map(str, out.left))
        if cause is not None:  # events that came in meanwhile tell a race from a failure
            with contextlib.suppress(Exception):  # a socket error: the next read recovers
                self._take()
        line = self.sched.converged(cause)
        self._metric("converged", out and out.ms, cause is not None,
                     out.result.desired.uplinks if out else (), out.notes if out else ())
        if cause is not None:
            if self.sched.backing_off:
                self._record()  # at the back-off's pace
            if line:
                self.log(f"{why}: {line}", ERROR)
            elif self.verbose:
                f = self.sched.failure
                attempts = f.attempts if f else 0
                self.log(f"{why}: failed: {cause} (retrying)" if not self.sched.backing_off
                         else f"{why}: failed again (attempt {attempts})", DEBUG)
        elif line:
            self.log(line)
            self._record()
        if out is not None:
            self._report(out, why, events)
        self._status()

    def _record(self) -> None:
        f = self.sched.failure
        failing = None
        if f is not None and self.sched.backing_off:
            since = time.time() - (self.clock() - f.since)
            failing = {"since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
                       "attempts": f.attempts, "cause": f.cause}
        rec: dict[str, Any] = {"pid": os.getpid(), "failing": failing}
        if self.health is not None:
            rec["health"] = self.health_record
            # dead uplinks, and name/ipv6 (or ipv4) for a family dead alone (per-family health)
            rec["dead"] = sorted(choice.dead_of(self.health_record))
        record.save(rec)

    def _status(self, ping: bool = False) -> None:
        f = self.sched.failure if self.sched.backing_off else None
        ago = None if self.sched.last_end == float("-inf") else self.clock() - self.sched.last_end
        line = status_line(*self.counts, ago, self.last_ms, f.cause if f else None)
        notify(("WATCHDOG=1\n" if ping else "") + f"STATUS={line}")

    # -- health tracking (watch.health) ------------------------------------------------------------
    def _health_update(self, result: Any) -> None:
        """After a converge: probe the uplinks with `check` as they are now (a thread)."""
        from connpin.watch import health

        if not any(u.check for u in self.config.uplinks):
            self._health_stop()
            return
        if self.health is not None and self.health.params != self.config.health:
            self._health_stop()  # a reload changed [health]: start over
        if self.health is None:
            self.hooks = self.hooks or health.Hooks(self.log)
            self.health = health.Health(self.config.health, health.wake_fd(self._wake_w),
                                        self.log, self.clock)
            self.health.start()
        self.health.update(*health.wanted(self.config, result), health.passive_of(self.config))

    def _health_stop(self) -> None:
        if self.health is not None:
            self.health.stop()
            self.health = None
            self.health_record = {}
            self._metric("health", {})

    def _health_take(self) -> None:
        """Transitions: a log line, the events.d hooks, a converge; figures: the record."""
        if self.health is None:
            return
        from connpin.watch import health

        transitions, snap = self.health.take()
        for t in transitions:
            self.log(health.transition_line(t), WARNING if t.new == "dead" else INFO)
            self.hooks.run(t)
            self.sched.event(f"health {t.uplink}", f"{t.old} -> {t.new}")
            self._metric("event", "health")
        if snap != self.health_record:
            self.health_record = snap
            self._metric("health", snap)
            self._record()

    def _remember(self, result: Any) -> None:
        self.classifier.learn({link.index: link.name
                               for link in result.observed.links.values()})
        uplinks = result.desired.uplinks
        self.counts = (len(uplinks), sum(1 for s in uplinks if s.up))

    def _report(self, out: engine.Outcome, why: str, events: dict[str, str]) -> None:
        now = {s.interface: (s.up, s.reason, s) for s in out.result.desired.uplinks}
        changed = [iface for iface, (up, reason, st) in now.items()
                   if self.previous.get(iface) != (up, reason, st.route)]
        changed += [iface for iface in self.previous if iface not in now]
        n = len(out.result.steps)
        cost = f"{n} change{'s' if n != 1 else ''} in {out.ms:.1f} ms"
        for iface in changed:
            if iface in now:
                up, reason, st = now[iface]
                state = f"up, {st.route}" if up else f"down ({reason})"
                name = st.uplink
            else:
                state, name = "no longer an uplink interface", "-"
            self.log(f"{name} {iface}: {state} [{events.get(iface) or why}] {cost}")
        if n and not changed and not out.left:
            seen = "; ".join(events.values()) or why
            verb = "applied" if any(k.startswith("health ") for k in events) else "repaired"
            self.log(f"{verb} {cost}: " + "; ".join(map(str, out.result.steps)) + f" [{seen}]",
                     INFO if verb == "applied" else WARNING)
        elif self.verbose and not changed and not out.left:
            self.log(f"{why}: nothing to change ({out.ms:.1f} ms)", DEBUG)
        for note in out.notes:
            self.log(note)
        if out.notes and engine.pending():
            self.sched.sweep_soon()
        self.previous = {iface: (up, reason, st.route) for iface, (up, reason, st) in now.items()}

    def sweep(self) -> None:
        """failback = "flush-idle": flush the busy connections that went idle meanwhile (what
        `connpin sweep --follow` does for hooks), then come back when the next may be due."""
        from connpin import pins
        from connpin.kernel import state

        try:
            with state.locked():
                n, wait = pins.sweep(self.config)
        except Exception as e:  # noqa: BLE001 - keep watching; try again later
            self.log(f"sweep failed: {e}", ERROR)
            n, wait = 0, self.sched.resync
        if n:
            self.log(f"sweep: {n} idle connection(s) flushed")
        self.sched.swept(wait)

    def reload(self) -> None:
        """SIGHUP: the new config replaces the running one only if it loads, and a config without
        uplinks only if it says so (`[pinning] allow_empty = true`): an editor's truncated save
        must not tear down the pinning. Whatever loading raises, the daemon keeps running."""
        keep = "keeping the running config"
        try:
            config = model.load(self.config_path)
        except model.ConfigError as e:
            self.log(f"{e}; {keep}", ERROR)
            return
        except RecursionError:
            self.log(f"{self.config_path}: nested too deeply; {keep}", ERROR)
            return
        except Exception as e:  # noqa: BLE001 - a reload never kills the daemon
            self.log(f"{self.config_path}: cannot load ({_one_line(e)}); {keep}", ERROR)
            return
        if not config.uplinks and not getattr(config.pinning, "allow_empty", False):
            self.log(f"{self.config_path}: no [[uplink]]: refusing to remove all pinning on a "
                     f"reload (set `allow_empty = true` under [pinning] to mean it); {keep}", ERROR)
            return
        self.config = config
        self.classifier.nft_table = config.pinning.nft_table
        self.log(f"config reloaded from {self.config_path}")
        self._metrics_start()
        self.converge("config reloaded")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        code = 0
        self._wake_w = wake_w
        try:
            self._open()
            self._record()
            self._metrics_start()
            self.converge("start")
            if engine.pending():  # a restart picks up busy connections still waiting
                self.sched.sweep_soon()
            uplinks = ", ".join(f"{u.name}={u.interface}" for u in self.config.uplinks)
            self.log(f"watching {uplinks or 'no uplinks'} "
                     f"(resync every {self.sched.resync:g} s)")
            notify("READY=1")
            self._status()
            self._loop(wake_r)
        except Fatal as e:
            self.log(f"giving up: {e}", CRITICAL)
            code = 1
        finally:
            notify("STOPPING=1")
            self._health_stop()
            self._metrics_stop()
            if self.hooks is not None:
                self.hooks.close()
            self._close()
            record.clear()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
        if code == 0:
            self.log("stopped; pinning left installed (`connpin remove` uninstalls)")
        return code

    def _loop(self, wake_r: int) -> None:
        while not self._stop:
            try:
                self._step(wake_r)
            except Exception as e:  # noqa: BLE001 - recover in place, see _recover
                self._recover(e)

    def _step(self, wake_r: int) -> None:
        if self.events is None or self.nft_events is None:
            self._open()
            self.sched.overflow()
        timeout = 0.0 if self.more else self.sched.timeout()
        if (look := self.coexist.wait()) is not None:
            timeout = min(timeout, look)
        if not self._hup:
            readable, _, _ = select.select([self.events, self.nft_events, wake_r], [], [],
                                           timeout)
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
        if self._stop:
            return
        self._inject_fault()
        self._take()
        self._health_take()
        if self._hup:
            self._hup = False
            notify("RELOADING=1")
            self.reload()
            notify("READY=1")
            return
        what = self.sched.next()
        if what == "watchdog":
            self.sched.pinged()
            self._status(ping=True)
        elif what == "sweep":
            self.sweep()
        elif what is not None:
            if self.verbose and what == "periodic resync":
                self.log("periodic resync", DEBUG)
            if what == "periodic resync":
                self.coexist.changed()
                self._metric("resync", "periodic")
            self.converge(what)
        elif self.coexist.due():  # idle: nothing of the pinning waits for this
            self.conflicts()

    def conflicts(self) -> None:
        """Log conflicts with other software that are new since the last look (issue 12)."""
        from connpin import conflicts
        from connpin.kernel import inventory

        try:
            found = conflicts.conflicts(self.config, inventory.take(self.config))
        except Exception as e:  # noqa: BLE001 - a look that fails changes nothing
            self.log(f"cannot look for conflicts: {_one_line(e)}", WARNING)
            self.coexist.skip()
            return
        new = self.coexist.seen(found)
        for c in new:
            self.log(f"conflict: {c}", WARNING)
        if self.verbose:
            self.log(f"looked for conflicts: {len(found)} ({len(new)} new)", DEBUG)

    def _recover(self, error: Exception) -> None:
        """An error outside a converge (a read, a decode, a socket): rebuild the netlink sockets
        and resync; give up (Fatal) only when that keeps failing."""
        now = self.clock()
        self.recoveries = [t for t in self.recoveries if now - t < RECOVERY_WINDOW] + [now]
        if len(self.recoveries) > MAX_RECOVERIES:
            raise Fatal(f"{len(self.recoveries)} errors outside a converge within "
                        f"{RECOVERY_WINDOW:g} s, the last: {_one_line(error)}") from error
        self.log(f"error outside a converge ({_one_line(error)}): "
                 "rebuilding the netlink sockets, full resync", WARNING)
        self.sleep(0.1 * 2 ** (len(self.recoveries) - 1))  # a little patience when it repeats
        try:
            self._open()
        except Exception as e:  # noqa: BLE001 - retried by the next _step, counted above
            self._close()
            self.log(f"cannot open the netlink sockets: {_one_line(e)}", ERROR)
            return
        self.sched.overflow()
        self._metric("resync", "recovery")

    # -- metrics ([metrics]: connpin.metrics) ----------------------------------------------------
    def _metric(self, what: str, *args: Any) -> None:
        if self.metrics is not None:
            getattr(self.metrics, what)(*args)

    def _metrics_start(self) -> None:
        """(Re)start publishing as the config's [metrics] says (a reload may change it)."""
        settings = self.config.metrics
        uplinks = [u.name for u in self.config.uplinks]
        if self._publisher is not None and self._publisher.settings == settings:
            self.metrics.configure(self.config.pinning.nft_table, uplinks)
            return
        self._metrics_stop()
        if settings is not None:
            from connpin.metrics import publish

            self.metrics, self._publisher = publish.start(settings, self.config.pinning.nft_table,
                                                          uplinks, self.log)
            self.metrics.health(self.health_record)

    def _metrics_stop(self) -> None:
        if self._publisher is not None:
            self._publisher.stop()
        self.metrics = self._publisher = None


def run(config_path: str, config: model.Config, *, verbose: bool = False,
        resync: float = RESYNC) -> int:
    """The CLI's entry: watch until SIGTERM/SIGINT; 0 on a clean stop, 1 when it had to give up."""
    return Watcher(config_path, config, verbose=verbose, resync=resync).run()
