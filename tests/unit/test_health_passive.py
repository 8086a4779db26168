"""The passive signal (pure parts): the detector under a fake clock, its [health] keys, the
nft rules it adds (only with `check` and passive on), and Monitor.hurry's burst."""

from __future__ import annotations

import random
import re

import pytest
from test_health_monitor import T3, FakeProber, run_until

from connpin import model, reconcile
from connpin.health.monitor import Monitor
from connpin.health.passive import Detector, PassiveParams
from connpin.health.probe import Via
from connpin.health.tracker import ALIVE, DEAD, Params, Tracker
from connpin.render import passive as rp
from connpin.render import plan

BASE = '[[uplink]]\nname = "fibre"\ninterface = "wan0"\n'
CHECK = 'check = ["icmp:192.0.2.1"]\n'


def feed(d: Detector, steps: list[tuple[float, int, int]], name: str = "a") -> list[float]:
    """(time, sent, answered) readings -> the times at which `name` became suspect."""
    return [t for t, s, a in steps if name in d.observe({name: (s, a)}, t)]


def test_answered_connections_never_make_it_suspect() -> None:
    d = Detector()
    steps = [(i * 0.2, 10 * i, 10 * i - (5 if i else 0)) for i in range(50)]
    assert feed(d, steps) == []  # 5 always in flight, answered each reading


def test_unanswered_connections_are_suspect_after_the_grace() -> None:
    d = Detector()  # 8 unanswered, each 0.5 s old, within 2 s
    steps = [(0.0, 0, 0)] + [(0.2 * i, 2 * i, 0) for i in range(1, 20)]
    got = feed(d, steps)
    # 2 per reading: at t = 1.4 s those seen at 0.2..0.8 (4 readings) are at least 0.5 s old
    assert got == pytest.approx([1.4, 3.4])  # then quiet for the window, pending forgotten
    assert all(b - a >= 2.0 - 1e-9 for a, b in zip(got, got[1:], strict=False))  # quiet


def test_old_unanswered_connections_expire_and_an_answer_clears() -> None:
    d = Detector(PassiveParams(unanswered=4, window=1.0, grace=0.2))
    # 3 unanswered, then a pause: they age out of the window before a 4th comes
    assert feed(d, [(0.0, 0, 0), (0.1, 3, 0), (1.5, 4, 0), (1.8, 4, 0)]) == []
    d = Detector(PassiveParams(unanswered=4, window=1.0, grace=0.2))
    # 3 unanswered, then an answer settles them; 3 more are not enough
    assert feed(d, [(0.0, 0, 0), (0.1, 3, 0), (0.2, 3, 1), (0.3, 6, 1), (0.6, 6, 1)]) == []


def test_a_replaced_table_starts_over() -> None:
    d = Detector(PassiveParams(unanswered=2, grace=0.0))
    assert feed(d, [(0.0, 100, 100), (0.2, 3, 0), (0.4, 3, 0)]) == []  # lower: new baseline
    assert feed(d, [(0.6, 6, 0)]) == [0.6]


def test_others_answer_required_when_asked() -> None:
    d = Detector(PassiveParams(unanswered=2, grace=0.0), others_answer=True)
    assert d.observe({"a": (0, 0), "b": (0, 0)}, 0.0) == []
    assert d.observe({"a": (5, 0), "b": (0, 0)}, 0.2) == []  # b never answered
    assert d.observe({"a": (10, 0), "b": (3, 3)}, 0.4) == ["a"]


def test_passive_keys_of_health() -> None:
    assert model.loads(BASE).passive == PassiveParams()
    c = model.loads("[health]\npassive = false\npassive_unanswered = 4\npassive_window = 3\n"
                    "passive_grace = 1\npassive_label = 100\nrate = 2\n" + BASE)
    assert c.passive == PassiveParams(False, 4, 3.0, 1.0, 100)
    assert c.health.rate == 2.0


@pytest.mark.parametrize("text, field, problem", [
    ('passive = "yes"', "health.passive", "true or false"),
    ("passive_unanswered = 0", "health.passive_unanswered", "1..100000"),
    ("passive_unanswered = 2.5", "health.passive_unanswered", "an integer"),
    ("passive_window = 0", "health.passive_window", "> 0"),
    ("passive_grace = 5", "health.passive_grace", "below passive_window"),
    ("passive_label = 0", "health.passive_label", "1..127"),
    ("passive_label = 128", "health.passive_label", "1..127"),
    ("passive_labels = 1", "health.passive_labels", "unknown key"),
])
def test_bad_passive_keys_are_refused(text: str, field: str, problem: str) -> None:
    with pytest.raises(model.ConfigError) as e:
        model.loads(f"[health]\n{text}\n" + BASE, "/etc/connpin/connpin.toml")
    assert e.value.field == field and problem in str(e.value)
    assert "\n" not in str(e.value) and "health." in str(e.value)


def _ruleset(text: str) -> str:
    config = model.loads(text)
    return plan.text(config, reconcile.run(config, reconcile.Imagined(), effects=False),
                     live=False)


def test_rules_only_with_check_and_passive_on() -> None:
    two = BASE + CHECK + '[[uplink]]\nname = "lte"\ninterface = "wwan0"\n'
    got = _ruleset(two)
    assert re.search(r'counter sent_\d+_fibre \{', got)
    assert re.search(r'iifname != "wan0" ct label set 126 counter name "sent_\d+_fibre"', got)
    assert re.search(r'ct direction reply ct label 126 ct label ! 127 ct label set 127 '
                     r'counter name "answered_\d+_fibre"', got)
    assert "_lte" not in got.replace("# lte", "")  # no check: no counters
    assert "ct label" not in _ruleset(BASE + '[[uplink]]\nname = "lte"\ninterface = "wwan0"\n')
    assert "ct label" not in _ruleset("[health]\npassive = false\n" + two)
    assert "ct label set 99 " in _ruleset("[health]\npassive_label = 100\n" + two)


def test_counter_names_round_trip() -> None:
    raw = {"sent_3_fibre": (7, 0), "answered_3_fibre": (5, 0), "sent_4_fibre": (1, 0),
           "new_3_fibre": (9, 9), "out_3_fibre": (1, 1)}
    assert rp.per_uplink(raw) == {"fibre": (8, 5)}
    assert rp.split("sent_12_a_b") == ("sent", 12, "a_b") and rp.split("in_1_a") is None


def test_hurry_bursts_until_dead_even_at_a_slow_rate() -> None:
    """rate 0.5: a round of 3 targets every 6 s; hurried, rounds of 0.1 s, so a blackhole is
    dead ~1 s after the hurry where the steady pace needs many seconds."""
    times = []
    for seed in range(10):
        p = FakeProber(seed)
        m = Monitor(p, Tracker(Params(rate=0.5)), rng=random.Random(seed))  # type: ignore[arg-type]
        m.add("isp1", Via(device="ppp0"), T3)
        assert [e.new for e in run_until(m, p, 13.0)] == [ALIVE]
        p.dead = True
        assert m.hurry("isp1") and not m.hurry("isp1")  # already bursting
        ev = []
        while not ev and p.now < 30:
            ev = [e for e in m.step(p.now + 5) if e.new == DEAD]
        times.append(ev[0].at - 13.0)
        assert not m.hurry("isp1")  # dead: nothing to hurry
    assert max(times) < 2.0, times


def test_hurry_ends_at_the_first_answer() -> None:
    p = FakeProber(1)
    m = Monitor(p, Tracker(Params(rate=0.5)), rng=random.Random(1))  # type: ignore[arg-type]
    m.add("isp1", Via(device="ppp0"), T3)
    run_until(m, p, 13.0)
    packets = p.packets
    assert m.hurry("isp1")
    run_until(m, p, 33.0)  # answered: back to 3 packets per 6 s after the first answer
    assert p.packets - packets <= 3 + 3 * 20 / 6 + 3, p.packets - packets
    assert m.hurry("isp1")  # may be hurried again


def test_watcher_reads_every_period_and_hurries_probed_uplinks() -> None:
    from connpin.watch import passive as wp

    now = [0.0]
    sent = {"a": 0, "b": 0}
    reads: list[float] = []

    def reader(table: str) -> dict[str, tuple[int, int]]:
        assert table == "connpin"
        reads.append(now[0])
        return {f"sent_1_{n}": (v, 0) for n, v in sent.items()} | {"answered_1_a": (0, 0),
                                                                   "new_1_a": (5, 5)}

    class FakeMonitor:
        hurried: list[str] = []

        def hurry(self, name: str) -> bool:
            self.hurried.append(name)
            return True

    logs: list[str] = []
    w = wp.Watcher(logs.append, lambda: now[0], reader)
    mon = FakeMonitor()
    w.poll(mon, {"a"})
    assert reads == []  # not configured: nothing read
    config = model.loads(BASE + CHECK)
    w.configure(wp.spec(config))
    for i in range(15):
        now[0] = i * 0.1
        sent["a"] += 1
        sent["b"] += 5
        w.poll(mon, {"a"})  # b is not probed: never hurried
    assert reads == pytest.approx([i * 0.2 for i in range(8)])
    assert mon.hurried == ["a"] and "a suspect: 8 new connections unanswered" in logs[0]
    assert w.figures("a") == {"sent": 15, "answered": 0, "unanswered": 8, "hurries": 1}
    assert wp.spec(model.loads("[health]\npassive = false\n" + BASE + CHECK)) is None
    assert wp.spec(model.loads(BASE)) is None


def test_metric_passive_connections() -> None:
    from test_metrics_collector import scrape

    from connpin.metrics import collector

    raw = {"new_1_b": (3, 180), "sent_1_b": (7, 400), "answered_1_b": (6, 300)}
    got = scrape(collector.Metrics("connpin", ["b"], reader=lambda: dict(raw)))
    fam = got["connpin_uplink_passive_connections_total"]
    assert fam == {(("kind", "sent"), ("uplink", "b")): 7,
                   (("kind", "answered"), ("uplink", "b")): 6}
    assert got["connpin_uplink_new_connections_total"][(("uplink", "b"),)] == 3
    raw = {"new_1_b": (3, 180)}
    got = scrape(collector.Metrics("connpin", ["b"], reader=lambda: dict(raw)))
    assert "connpin_uplink_passive_connections_total" not in got


def test_other_label_users_conflict_only_when_passive_renders() -> None:
    from connpin import conflicts as C

    doc = {"nftables": [{"rule": {"family": "inet", "table": "other", "chain": "c",
                                  "handle": 4, "expr": [{"mangle": {
                                      "key": {"ct": {"key": "label"}}, "value": 127}}]}},
                        {"rule": {"family": "inet", "table": "connpin", "chain": "pin_1",
                                  "handle": 5, "expr": [{"mangle": {
                                      "key": {"ct": {"key": "label"}}, "value": 126}}]}}]}
    inv = C.Inventory(writes=tuple(C.nft_writes(doc)), own_tables=("connpin",))
    found = C.conflicts(model.loads(BASE + CHECK), inv)
    assert [(c.kind, c.where) for c in found] == [("label", "nft table inet other chain c "
                                                             "handle 4")]
    assert "health.passive_label" in str(found[0]) and C.blocking(found) == found
    assert C.conflicts(model.loads(BASE), inv) == []  # no check: no labels used
    assert C.conflicts(model.loads("[health]\npassive_label = 100\n" + BASE + CHECK), inv) == []
    assert C.used_bits(model.loads(BASE + CHECK), inv) == 0  # not mark bits
