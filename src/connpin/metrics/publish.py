"""Where `connpin watch` publishes its metrics ([metrics]): an HTTP endpoint (prometheus-client's
server, in a thread of its own) and/or a node_exporter textfile, rewritten atomically (a temporary
file renamed over it) every `interval` seconds and at once after a state change.

Neither can stop the pinning: an address already in use or an unwritable directory is logged
(once per distinct error) and the daemon goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import disable_created_metrics, start_http_server, write_to_textfile

from connpin.metrics.collector import Metrics
from connpin.metrics.settings import Metrics as Settings


class Publisher:
    """Serves and/or writes one Metrics as `settings` say; `stop` ends both."""

    def __init__(self, settings: Settings, metrics: Metrics, log: Callable[[str], None]) -> None:
        self.settings, self.metrics, self.log = settings, metrics, log
        self._server = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_error = ""

    def start(self) -> None:
        s = self.settings
        if s.listen is not None:
            addr, port = s.listen
            try:
                self._server, _ = start_http_server(port, addr, self.metrics.registry)
            except OSError as e:
                self.log(f"metrics: cannot serve on {addr}:{port}: {e.strerror or e}")
            else:
                shown = f"[{addr}]" if ":" in addr else addr
                self.log(f"metrics: serving http://{shown}:{port}/metrics")
        if s.textfile is not None:
            self._thread = threading.Thread(target=self._write_loop, name="connpin-textfile",
                                            daemon=True)
            self._thread.start()

    def write(self) -> bool:
        """Write the textfile now; False (logged once per distinct error) when it fails."""
        assert self.settings.textfile is not None
        try:
            write_to_textfile(self.settings.textfile, self.metrics.registry)
        except OSError as e:
            error = f"metrics: cannot write {self.settings.textfile}: {e.strerror or e}"
            if error != self._last_error:
                self.log(error)
            self._last_error = error
            return False
        self._last_error = ""
        return True

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self.metrics.changed.clear()
            self.write()
            self.metrics.changed.wait(self.settings.interval)

    def stop(self) -> None:
        self._stop.set()
        self.metrics.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start(settings: Settings | None, table: str, uplinks: list[str],
          log: Callable[[str], None]) -> tuple[Metrics | None, Publisher | None]:
    """The daemon's metrics for a config ([metrics] absent: none)."""
    if settings is None:
        return None, None
    disable_created_metrics()  # no `_created` twin of every counter (process-wide; the daemon's)
    metrics = Metrics(table, uplinks)
    pub = Publisher(settings, metrics, log)
    pub.start()
    return metrics, pub
