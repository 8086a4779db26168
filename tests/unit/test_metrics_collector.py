"""[metrics]: the config table (exit-2 errors), counters rendered only with it (every other
ruleset unchanged), counter names read back to uplinks, totals kept across table reloads, the
flush notes counted, and the scrape output of the daemon's collector (a fake counter reader:
the real one is proven in tests/kernel/test_metrics.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connpin import model, reconcile
from connpin.kernel import counters as kc
from connpin.metrics import collector
from connpin.metrics.settings import Metrics
from connpin.values import Counters

BASE = """
[[uplink]]
name = "a-1"
interface = "wan1"
[[uplink]]
name = "b"
interface = "ppp*"
"""


def load(extra: str) -> model.Config:
    return model.loads(BASE + extra, "c.toml")


def test_absent_is_none_and_empty_table_turns_counters_on() -> None:
    assert load("").metrics is None
    assert load("[metrics]\n").metrics == Metrics()
    m = load('[metrics]\nlisten = "[::1]:9100"\ntextfile = "/x/c.prom"\ninterval = 5\n').metrics
    assert m == Metrics(("::1", 9100), "/x/c.prom", 5)
    assert load('[metrics]\nlisten = "127.0.0.1:9647"\n').metrics.listen == ("127.0.0.1", 9647)


def test_metrics_must_be_a_table() -> None:
    with pytest.raises(model.ConfigError, match=r"^c.toml: metrics: must be a table"):
        model.loads("metrics = 1\n" + BASE, "c.toml")


@pytest.mark.parametrize(("extra", "want"), [
    ("[metrics]\nport = 1\n", "c.toml: metrics.port: unknown key"),
    ('[metrics]\nlisten = "localhost:9647"\n', "c.toml: metrics.listen: 'localhost:9647' is not"),
    ('[metrics]\nlisten = "127.0.0.1"\n', "c.toml: metrics.listen: '127.0.0.1' is not"),
    ('[metrics]\nlisten = "127.0.0.1:0"\n', "c.toml: metrics.listen: port 0 is out of range"),
    ('[metrics]\nlisten = 9647\n', "c.toml: metrics.listen: 9647 is not"),
    ('[metrics]\ntextfile = "c.prom"\n', "c.toml: metrics.textfile: 'c.prom' is not an absolute"),
    ('[metrics]\ntextfile = "/x/c.txt"\n', "c.toml: metrics.textfile: '/x/c.txt': node_exporter"),
    ("[metrics]\ninterval = 0\n", "c.toml: metrics.interval: 0 is out of range 1..3600"),
])
def test_bad_metrics_tables_are_one_line_errors(extra: str, want: str) -> None:
    with pytest.raises(model.ConfigError) as e:
        load(extra)
    assert str(e.value).startswith(want) and "\n" not in str(e.value)


def ruleset(config: model.Config) -> str:
    return reconcile.run(config, reconcile.Imagined(), effects=False).desired.ruleset


def test_counters_only_with_metrics() -> None:
    plain, counted = ruleset(load("")), ruleset(load("[metrics]\n"))
    assert "counter" not in plain and "count_by_mark" not in plain
    for name in ("new_", "out_", "in_"):
        assert f"counter {name}" in counted
    rest = iter(counted.splitlines())  # every line of the plain ruleset, in order
    assert all(any(line == other for other in rest) for line in plain.splitlines())


def test_counter_names_read_back() -> None:
    assert kc.split("out_236_fibre-1") == ("out", 236, "fibre-1")
    assert kc.split("new_7_a_b") == ("new", 7, "a_b")
    assert kc.split("other_7_a") is None and kc.split("in_x_a") is None
    assert kc.split("in_7_") is None
    assert kc.split("reset_236_fibre") == ("reset", 236, "fibre")
    raw = {"new_1_b": (3, 180), "new_2_b": (1, 60), "out_1_b": (10, 1000), "in_2_b": (5, 500),
           "out_9_a-1": (1, 28), "foreign": (9, 9), "reset_1_b": (2, 120), "reset_2_b": (1, 60)}
    assert kc.per_uplink(raw) == {
        "b": Counters(new=4, packets_out=10, bytes_out=1000, packets_in=5, bytes_in=500,
                      resets=3),
        "a-1": Counters(packets_out=1, bytes_out=28)}


def test_totals_survive_a_table_reload() -> None:
    t = collector.Totals()
    assert t.update({"out_1_a": (10, 1000)}) == {"out_1_a": (10, 1000)}
    assert t.update({"out_1_a": (12, 1200)}) == {"out_1_a": (12, 1200)}
    assert t.update({"out_1_a": (1, 100)}) == {"out_1_a": (13, 1300)}  # replaced table
    assert t.update({}) == {"out_1_a": (13, 1300)}  # the slot went away: its total stays
    assert t.update({"out_1_a": (2, 200)}) == {"out_1_a": (15, 1500)}


def test_flush_notes_counted_per_uplink() -> None:
    from connpin.steer import Flush

    notes = [f"{Flush('b', 'ppp0', 1, 'isp a came back')}: 7 flushed",
             f"{Flush('b', 'ppp1', 2, 'x (y)', outbound_only=True, idle=30)}: 2 flushed",
             "  3 busy connection(s) of b move once idle for 30s",
             f"{Flush('a-1', 'wan1', 3, 'on_down = flush')}: 0 flushed"]
    assert collector.flushed(notes) == {"b": 9, "a-1": 0}


def scrape(m: collector.Metrics) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_scrape_output() -> None:
    raw = {"new_1_b": (3, 180), "out_1_b": (10, 1000), "in_1_b": (5, 500)}
    m = collector.Metrics("connpin", ["a-1", "b"], reader=lambda: dict(raw))
    m.converged(12.0, False, [SimpleNamespace(uplink="b", up=True),
                              SimpleNamespace(uplink="a-1", up=False)])
    m.converged(None, True)
    m.event("kernel")
    m.resync("periodic")
    m.health({"b": {"state": "alive", "targets": [
        {"target": "icmp:192.0.2.9", "srtt_ms": 20.0, "loss": 0.1}]}})
    got = scrape(m)
    assert got["connpin_uplink_up"] == {(("uplink", "a-1"),): 0.0, (("uplink", "b"),): 1.0}
    assert got["connpin_uplink_new_connections_total"][(("uplink", "b"),)] == 3
    assert got["connpin_uplink_new_connections_total"][(("uplink", "a-1"),)] == 0
    assert got["connpin_uplink_bytes_total"][(("direction", "out"), ("uplink", "b"))] == 1000
    assert got["connpin_uplink_packets_total"][(("direction", "in"), ("uplink", "b"))] == 5
    assert got["connpin_converges_total"][()] == 2
    assert got["connpin_converge_failures_total"][()] == 1
    assert got["connpin_converge_duration_seconds_count"][()] == 1
    assert got["connpin_events_total"][(("source", "kernel"),)] == 1
    assert got["connpin_resyncs_total"][(("reason", "periodic"),)] == 1
    assert got["connpin_uplink_alive"] == {(("uplink", "b"),): 1.0}
    assert got["connpin_uplink_health"][(("state", "dead"), ("uplink", "b"))] == 0.0
    key = (("target", "icmp:192.0.2.9"), ("uplink", "b"))
    assert got["connpin_uplink_rtt_seconds"][key] == 0.02
    assert got["connpin_uplink_loss_ratio"][key] == 0.1
    assert "connpin_uplink_resets_total" not in got  # no uplink has on_down = "reset"
    raw["out_1_b"] = (1, 100)  # the table was replaced: the total goes on
    assert scrape(m)["connpin_uplink_bytes_total"][(("direction", "out"), ("uplink", "b"))] == 1100


def test_resets_per_uplink_only_where_counted() -> None:
    """connpin_uplink_resets_total{uplink}: only uplinks whose reset counters exist (on_down =
    "reset"), interfaces of a pattern uplink summed, monotonic across a table reload."""
    raw = {"new_1_b": (3, 180), "reset_1_b": (4, 240), "reset_2_b": (1, 60), "new_3_a": (1, 60)}
    m = collector.Metrics("connpin", ["a", "b"], reader=lambda: dict(raw))
    assert scrape(m)["connpin_uplink_resets_total"] == {(("uplink", "b"),): 5}
    raw["reset_1_b"] = (1, 60)  # the table was replaced
    assert scrape(m)["connpin_uplink_resets_total"] == {(("uplink", "b"),): 6}


def test_a_failed_counter_read_still_scrapes_state() -> None:
    def fail() -> dict:
        raise RuntimeError("nft: no")

    m = collector.Metrics("connpin", ["a-1"], reader=fail)
    got = scrape(m)
    assert got["connpin_uplink_up"] == {(("uplink", "a-1"),): 0.0}
    assert "connpin_uplink_bytes_total" not in got
    assert scrape(m)["connpin_counter_read_failures_total"][()] == 1  # counted after the first


def test_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    from connpin.steer import Flush

    path = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "connpin.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"connpin_[a-z_]+", e)}
    m = collector.Metrics("connpin", ["b"], reader=lambda: {"out_1_b": (1, 2),
                                                            "reset_1_b": (1, 60)})
    m.converged(1.0, True, [SimpleNamespace(uplink="b", up=True)],
                [f"{Flush('b', 'x', 1, 'y')}: 1 flushed"])
    m.event("kernel")
    m.resync("periodic")
    m.health({"b": {"state": "alive", "targets": [
        {"target": "icmp:192.0.2.9", "srtt_ms": 1.0, "loss": 0.0}]}})
    have = set(scrape(m))
    assert used and used <= have, used - have


def test_textfile_written_whole_and_errors_logged_once(tmp_path) -> None:  # noqa: ANN001
    from connpin.metrics.publish import Publisher

    m = collector.Metrics("connpin", ["b"], reader=dict)
    logged: list[str] = []
    path = tmp_path / "connpin.prom"
    pub = Publisher(Metrics(textfile=str(path), interval=1), m, logged.append)
    assert pub.write()
    got = {s.name for fam in text_string_to_metric_families(path.read_text())
           for s in fam.samples}
    assert "connpin_uplink_up" in got and list(tmp_path.iterdir()) == [path]
    gone = Publisher(Metrics(textfile=str(tmp_path / "no" / "c.prom")), m, logged.append)
    assert not gone.write() and not gone.write()
    assert len(logged) == 1 and "cannot write" in logged[0]


def test_a_reload_starts_changes_and_stops_publishing(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from connpin.watch import daemon

    path = tmp_path / "connpin.toml"
    prom = tmp_path / "c.prom"
    path.write_text(BASE)
    lines: list[str] = []
    w = daemon.Watcher(str(path), model.loads(BASE, str(path)), log=lines.append)
    monkeypatch.setattr(w, "converge", lambda why: None)  # the kernel side: tests/kernel
    w._metrics_start()
    assert w.metrics is None
    try:
        path.write_text(BASE + f'[metrics]\ntextfile = "{prom}"\n')
        w.reload()
        assert w.metrics is not None and w.metrics.uplinks == ["a-1", "b"]
        deadline = time.monotonic() + 5
        while not prom.exists():
            assert time.monotonic() < deadline, lines
            time.sleep(0.02)
        first = w._publisher
        path.write_text(BASE.replace('"b"', '"c"') + f'[metrics]\ntextfile = "{prom}"\n')
        w.reload()
        assert w._publisher is first and w.metrics.uplinks == ["a-1", "c"]  # same settings
        path.write_text(BASE)
        w.reload()
        assert w.metrics is None and w._publisher is None
    finally:
        w._metrics_stop()
