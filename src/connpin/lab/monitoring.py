"""A health `Monitor` running in its own thread inside a lab's router, every transition recorded
in order, and waiting for one with a deadline: what bench/health.py and the kernel tests of
health tracking share (`Recorder`).

    with Recorder(lab.ns("router")) as rec:          # a Monitor over one Prober
        rec.monitor.add(name, via, targets)          # (a tracker per uplink if wanted)
        rec.start()
        t = rec.wait(name, "dead", time.monotonic() + 10)   # None after the deadline
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from connpin.health.monitor import Monitor
from connpin.health.probe import Prober
from connpin.health.tracker import Tracker, Transition


class Recorder:
    """The Monitor's thread and its transitions (`events`, guarded by `cond`)."""

    def __init__(self, namespace: str | None, tracker: Tracker | None = None):
        self.prober = Prober(namespace)
        self.monitor = Monitor(self.prober, tracker)
        self.events: list[Transition] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        def note(t: Transition) -> None:
            with self.cond:
                self.events.append(t)
                self.cond.notify_all()
        self.monitor.run(self.stop, note)

    def start(self) -> Recorder:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def count(self) -> int:
        """How many transitions so far (an `after` for `wait`)."""
        with self.cond:
            return len(self.events)

    def wait(self, key: Hashable, state: str, deadline: float,
             after: int = 0) -> Transition | None:
        """The first transition of `key` to `state` among events[after:], waiting until the
        monotonic `deadline`; None if there is none by then."""
        with self.cond:
            while True:
                for t in self.events[after:]:
                    if t.uplink == key and t.new == state:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        """Stop the thread (if started) and close the prober's sockets (idempotent)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.prober.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
