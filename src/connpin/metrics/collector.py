"""The daemon's metrics (docs/metrics.md): what `connpin watch` counts as it runs (converges and
their duration, failures, events, resyncs, flushes) and a custom collector that, at scrape time,
turns the daemon's last known state (uplinks up, health) and connpin's nft counters into metric
families. A scrape costs one netlink dump of the nft counters (kernel/counters.py), never a
conntrack dump, so it costs the same at 1M connections as at 10.

The nft counters start at zero whenever connpin's table is replaced (an apply that changes the
ruleset); `Totals` keeps Prometheus counters monotonic across that: the daemon reads the counters
just before each converge, and a counter found lower than last time adds its last value to a base.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from connpin.kernel import counters as kc
from connpin.render import passive as rp

#: Converge durations (seconds): a no-op converge takes a few ms, a full apply tens to hundreds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A failback/on_down note of engine.converge: `flush ... pinned to UPLINK (IFACE): why: N flushed`
_FLUSHED = re.compile(r" pinned to (\S+) \([^)]*\): .*: (\d+) flushed$")
HEALTH_STATES = ("alive", "dead", "unknown")

Reader = Callable[[], dict[str, tuple[int, int]]]


def flushed(notes: Iterable[str]) -> dict[str, int]:
    """Connections flushed per uplink, from a converge's notes (pins.carry_out's lines)."""
    out: dict[str, int] = {}
    for note in notes:
        m = _FLUSHED.search(note)
        if m:
            out[m[1]] = out.get(m[1], 0) + int(m[2])
    return out


class Totals:
    """nft counter values made monotonic across table reloads (per counter name)."""

    def __init__(self) -> None:
        self.base: dict[str, tuple[int, int]] = {}
        self.last: dict[str, tuple[int, int]] = {}

    def update(self, raw: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Take a fresh reading; the totals by counter name (counters that vanished keep theirs)."""
        for name in set(self.last) | set(raw):
            last = self.last.get(name, (0, 0))
            now = raw.get(name, (0, 0))
            if now[0] < last[0] or now[1] < last[1]:  # the table was replaced (or slot gone)
                b = self.base.get(name, (0, 0))
                self.base[name] = (b[0] + last[0], b[1] + last[1])
            self.last[name] = now
        return {n: (self.base.get(n, (0, 0))[0] + v[0], self.base.get(n, (0, 0))[1] + v[1])
                for n, v in self.last.items()}


class Metrics:
    """What the daemon tells (`converged`, `event`, `resync`, `health`), and the registry that
    a scrape or the textfile writer collects."""

    def __init__(self, table: str, uplinks: Iterable[str], reader: Reader | None = None) -> None:
        self.table = table
        self.uplinks = list(uplinks)  # config order: every uplink has its series, even down
        self.reader = reader or (lambda: kc.read_raw(None, self.table))
        self.totals = Totals()
        self._lock = threading.Lock()
        self.up: dict[str, bool] = {}
        self.health_record: dict[str, dict] = {}
        self.changed = threading.Event()  # a state changed: the textfile is rewritten now
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.converges = Counter("connpin_converges", "Converges run by the daemon",
                                 registry=r)
        self.duration = Histogram("connpin_converge_duration_seconds",
                                  "Wall time of each converge", buckets=BUCKETS, registry=r)
        self.failures = Counter("connpin_converge_failures",
                                "Converges that failed or left the kernel differing", registry=r)
        self.events = Counter("connpin_events", "Events the daemon acted on, by source",
                              ["source"], registry=r)
        self.resyncs = Counter("connpin_resyncs", "Full resyncs, by reason", ["reason"],
                               registry=r)
        self.flushes = Counter("connpin_uplink_flushed_connections",
                               "Connections flushed by failback or on_down, by uplink",
                               ["uplink"], registry=r)
        self.read_failures = Counter("connpin_counter_read_failures",
                                     "Scrapes whose nft counter read failed", registry=r)
        r.register(_Collector(self))

    def configure(self, table: str, uplinks: Iterable[str]) -> None:
        """A reloaded config: its table and uplinks."""
        with self._lock:
            self.table, self.uplinks = table, list(uplinks)

    # -- what the daemon tells -------------------------------------------------------------------
    def before_converge(self) -> None:
        """Read the counters before a converge may replace the table (keeps totals exact)."""
        self.counters()

    def converged(self, ms: float | None, failed: bool, uplinks: Iterable[Any] = (),
                  notes: Iterable[str] = ()) -> None:
        """One converge: its duration (None: it raised), whether it failed, the uplink states of
        its result (values.UplinkState) and its notes (flushes)."""
        self.converges.inc()
        if ms is not None:
            self.duration.observe(ms / 1000)
        if failed:
            self.failures.inc()
        states = list(uplinks)
        if states:
            up: dict[str, bool] = {}
            for s in states:
                up[s.uplink] = up.get(s.uplink, False) or bool(s.up)
            if up != self.up:
                self.up = up
                self.changed.set()
        for uplink, n in flushed(notes).items():
            self.flushes.labels(uplink).inc(n)

    def event(self, source: str) -> None:
        self.events.labels(source).inc()

    def resync(self, reason: str) -> None:
        self.resyncs.labels(reason).inc()

    def health(self, record: dict[str, dict]) -> None:
        """The daemon's health snapshot (watch.health.snapshot per uplink)."""
        if {n: h.get("state") for n, h in record.items()} != {
                n: h.get("state") for n, h in self.health_record.items()}:
            self.changed.set()
        self.health_record = record

    # -- reading ----------------------------------------------------------------------------------
    def counters(self) -> dict[str, tuple[int, int]] | None:
        """The nft counters' totals by counter name (None: the read failed)."""
        with self._lock:
            try:
                raw = self.reader()
            except Exception:  # noqa: BLE001 - a scrape without traffic figures, counted
                self.read_failures.inc()
                return None
            return self.totals.update(raw)


def _passive(totals: dict[str, tuple[int, int]]) -> Iterator[Any]:
    """The passive health signal's counters (render/passive.py), when rendered."""
    per = rp.per_uplink(totals)
    if not per:
        return
    fam = CounterMetricFamily("connpin_uplink_passive_connections",
                              "Outbound connections pinned to a checked uplink (sent) and those "
                              "answered (passive health signal)", labels=["uplink", "kind"])
    for n in sorted(per):
        fam.add_metric([n, "sent"], per[n][0])
        fam.add_metric([n, "answered"], per[n][1])
    yield fam


def _ms_to_s(v: Any) -> float | None:
    return None if v is None else float(v) / 1000


class _Collector(Collector):
    """Per-uplink families, built at each collect from the daemon's state and the counters."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def describe(self) -> list:
        return []  # families are built at collect time; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        m = self.m
        names = list(dict.fromkeys([*m.uplinks, *m.up]))
        up = GaugeMetricFamily("connpin_uplink_up",
                               "1 while the uplink (one of its interfaces) is up and routed",
                               labels=["uplink"])
        for n in names:
            up.add_metric([n], 1.0 if m.up.get(n) else 0.0)
        yield up
        yield from self._health(m.health_record)
        totals = m.counters()
        if not totals:  # the read failed, or no counters (nothing applied yet; iptables)
            return
        new = CounterMetricFamily("connpin_uplink_new_connections",
                                  "Connections that became pinned to the uplink",
                                  labels=["uplink"])
        packets = CounterMetricFamily("connpin_uplink_packets",
                                      "Packets of the uplink's pinned connections, out by its "
                                      "interface or in from it", labels=["uplink", "direction"])
        nbytes = CounterMetricFamily("connpin_uplink_bytes",
                                     "Bytes (IP packets, no link header) of the uplink's pinned "
                                     "connections, out by its interface or in from it",
                                     labels=["uplink", "direction"])
        per: dict[str, dict[str, tuple[int, int]]] = {}
        for name, value in totals.items():
            parts = kc.split(name)
            if parts is None:
                continue
            kind, _, uplink = parts
            d = per.setdefault(uplink, {})
            old = d.get(kind, (0, 0))
            d[kind] = (old[0] + value[0], old[1] + value[1])
        resets = CounterMetricFamily("connpin_uplink_resets",
                                     "Packets of the uplink's pinned connections answered with a "
                                     "TCP reset or ICMP error while it was dead or down "
                                     "(on_down = \"reset\")", labels=["uplink"])
        for n in names + sorted(set(per) - set(names)):
            d = per.get(n, {})
            new.add_metric([n], d.get("new", (0, 0))[0])
            if "reset" in d:  # only uplinks with on_down = "reset" have the counter
                resets.add_metric([n], d["reset"][0])
            for direction in ("out", "in"):
                p, b = d.get(direction, (0, 0))
                packets.add_metric([n, direction], p)
                nbytes.add_metric([n, direction], b)
        yield new
        yield packets
        yield nbytes
        if resets.samples:
            yield resets
        yield from _passive(totals)

    @staticmethod
    def _health(record: dict[str, dict]) -> Iterator[Any]:
        if not record:
            return
        state = GaugeMetricFamily("connpin_uplink_health",
                                  "Health state of a checked uplink (1 for its current state)",
                                  labels=["uplink", "state"])
        alive = GaugeMetricFamily("connpin_uplink_alive",
                                  "1 while a checked uplink is alive by its health check",
                                  labels=["uplink"])
        rtt = GaugeMetricFamily("connpin_uplink_rtt_seconds",
                                "Smoothed round-trip time of a health check target",
                                labels=["uplink", "target"])
        loss = GaugeMetricFamily("connpin_uplink_loss_ratio",
                                 "Share of a health check target's recent probes lost",
                                 labels=["uplink", "target"])
        family = GaugeMetricFamily("connpin_uplink_family_alive",
                                   "1 while one family of an uplink checked in both is alive",
                                   labels=["uplink", "family"])
        for n, h in record.items():
            for s in HEALTH_STATES:
                state.add_metric([n, s], 1.0 if h.get("state") == s else 0.0)
            alive.add_metric([n], 1.0 if h.get("state") == "alive" else 0.0)
            for f, side in sorted((h.get("families") or {}).items()):
                family.add_metric([n, f], 1.0 if side.get("state") == "alive" else 0.0)
            for t in h.get("targets", []):
                if (v := _ms_to_s(t.get("srtt_ms"))) is not None:
                    rtt.add_metric([n, t["target"]], v)
                if t.get("loss") is not None:
                    loss.add_metric([n, t["target"]], float(t["loss"]))
        yield from (state, alive, *([family] if family.samples else []), rtt, loss)
