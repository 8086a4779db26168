"""A LAN host that keeps opening new TCP connections, for the passive health signal's test and
bench: one connection every `interval` s, each in its own thread (so unanswered ones do not
slow the rate), and which uplink each one left by."""

from __future__ import annotations

import threading
import time

from connpin.lab.core import Lab


class Opener:
    """New connections from the LAN host to `dst`:`port` (the lab's echo server by default);
    `results` holds (start time, the peer address the server saw or None)."""

    def __init__(self, lab: Lab, dst: str | None = None, port: int = 7,
                 interval: float = 0.1) -> None:
        self.lab, self.dst, self.port, self.interval = lab, dst, port, interval
        self.results: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _one(self, started: float) -> None:
        try:
            peer = self.lab.connect(dst=self.dst, port=self.port, timeout=1.0)
        except Exception:  # noqa: BLE001 - counted as unanswered
            peer = None
        self.results.append((started, peer))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            threading.Thread(target=self._one, args=(time.monotonic(),), daemon=True).start()

    def first_by(self, k: int, after: float) -> float | None:
        """When the first connection started at or after `after` that left by uplink k began."""
        times = [t for t, peer in list(self.results)
                 if t >= after and self.lab.uplink_of(peer) == k]
        return min(times) if times else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
