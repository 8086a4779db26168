"""Health tracking in the daemon (watch.health) without the kernel: what is probed after a
converge, the thread's step with a fake prober and clock (transitions, re-adding on a changed
address, unknown when an uplink goes away, the snapshot), and the events.d hooks."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from connpin import alloc, model
from connpin.health.probe import Result
from connpin.health.tracker import Params, Transition
from connpin.values import Link, UplinkState
from connpin.watch import health

CONFIG = model.loads(
    '[[uplink]]\nname = "a"\ninterface = "wan0"\ncheck = ["icmp:192.0.2.1", "icmp:192.0.2.2"]\n'
    '[[uplink]]\nname = "b"\ninterface = "ppp*"\ncheck = ["tcp:198.51.100.1:443"]\n'
    '[[uplink]]\nname = "c"\ninterface = "wan9"\n')


def state(name: str, iface: str, index: int, up: bool, reason: str = "up") -> UplinkState:
    return UplinkState(name, iface, alloc.slot(index, model.DEFAULT_MARK_MASK, 1000), up,
                       reason, None, False)


def result(states: list[UplinkState], links: dict[str, tuple[str, ...]]) -> SimpleNamespace:
    observed = SimpleNamespace(links={n: Link(n, i + 1, True, a)
                                      for i, (n, a) in enumerate(links.items())})
    return SimpleNamespace(desired=SimpleNamespace(uplinks=tuple(states)), observed=observed)


def test_wanted_probes_the_checked_uplinks_that_are_up() -> None:
    r = result([state("a", "wan0", 1, True), state("b", "ppp0", 3, False, "interface is down"),
                state("b", "ppp1", 4, True), state("c", "wan9", 2, True)],
               {"wan0": ("100.64.1.2",), "ppp1": ("100.64.2.2",), "wan9": ("100.64.9.2",)})
    want, why = health.wanted(CONFIG, r)
    assert want == {"a": ("wan0", 0x01000000, "100.64.1.2", CONFIG.uplinks[0].check),
                    "b": ("ppp1", 0x04000000, "100.64.2.2", CONFIG.uplinks[1].check)}
    assert why == {}  # c has no check
    want, why = health.wanted(CONFIG, result([state("a", "wan0", 1, False, "no IPv4 address")],
                                             {"wan0": ()}))
    assert want == {} and why == {"a": "wan0 no IPv4 address", "b": "no interface"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProber:
    """Answers in 10 ms unless the uplink's key is in `dead` (then lost at the timeout)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.dead: set[str] = set()
        self.pending: list[tuple[str, object, float, float]] = []
        self.vias: dict[str, object] = {}
        self.closed = False

    def send(self, key, via, target, timeout) -> None:  # noqa: ANN001
        self.vias[key] = via
        done = self.clock.now + (timeout if key in self.dead else 0.01)
        self.pending.append((key, target, self.clock.now, done))

    def poll(self, until: float) -> list[Result]:
        self.clock.now = max(self.clock.now, until)
        out = [Result(k, t, s, None if k in self.dead else d - s, d)
               for k, t, s, d in self.pending if d <= until]
        self.pending = [p for p in self.pending if p[3] > until]
        return out

    def close(self) -> None:
        self.closed = True


def make() -> tuple[health.Health, FakeProber, Clock, list[int]]:
    clock = Clock()
    prober = FakeProber(clock)
    wakes: list[int] = []
    h = health.Health(Params(), lambda: wakes.append(1), lambda line: None, clock, prober)
    h.open()
    return h, prober, clock, wakes


def run_until(h: health.Health, clock: Clock, cond, limit: float = 30.0) -> list[Transition]:  # noqa: ANN001
    out: list[Transition] = []
    end = clock.now + limit
    while clock.now < end:
        h.step()
        got, _ = h.take()
        out += got
        if cond(out):
            return out
    raise AssertionError(f"not within {limit} s: {out}")


def test_health_thread_step_transitions_and_snapshot() -> None:
    h, prober, clock, wakes = make()
    check_a, check_b = CONFIG.uplinks[0].check, CONFIG.uplinks[1].check
    h.update({"a": ("wan0", 0x01000000, "100.64.1.2", check_a),
              "b": ("ppp0", 0x02000000, "100.64.2.2", check_b)}, {})
    out = run_until(h, clock, lambda o: len(o) == 2)
    assert {(t.uplink, t.old, t.new) for t in out} == {("a", "unknown", "alive"),
                                                      ("b", "unknown", "alive")}
    assert prober.vias["a"].device == "wan0" and prober.vias["a"].mark == 0x01000000
    assert prober.vias["a"].source == "100.64.1.2" and wakes
    prober.dead.add("b")
    start = clock.now
    out = run_until(h, clock, lambda o: any(t.new == "dead" for t in o))
    assert [(t.uplink, t.old, t.new) for t in out] == [("b", "alive", "dead")]
    assert out[0].at - start < 2.0 + 1.0  # the tracker's goal, plus the fake prober's timeout
    assert h.dead == frozenset({"b"})
    _, snap = h.take()
    assert snap["b"]["state"] == "dead" and snap["b"]["interface"] == "ppp0"
    assert snap["b"]["targets"][0]["target"] == "tcp:198.51.100.1:443"
    assert snap["b"]["targets"][0]["loss"] > 0 and snap["a"]["targets"][0]["rtt_ms"] == 10.0
    assert snap["b"]["since"].count(":") == 2  # wall clock text
    prober.dead.clear()
    out = run_until(h, clock, lambda o: any(t.new == "alive" for t in o))
    assert [(t.uplink, t.old, t.new) for t in out] == [("b", "dead", "alive")]
    assert h.dead == frozenset()
    # b goes down: unknown, no longer probed; a's address changes: starts over
    h.update({"a": ("wan0", 0x01000000, "100.64.1.9", check_a)}, {"b": "ppp0 interface is down"})
    out = run_until(h, clock, lambda o: len(o) >= 3)
    assert [(t.uplink, t.old, t.new) for t in out] == [
        ("a", "alive", "unknown"), ("b", "alive", "unknown"), ("a", "unknown", "alive")]
    assert "changed" in out[0].reason and "interface is down" in out[1].reason
    _, snap = h.take()
    assert snap["b"] == {**snap["b"], "state": "unknown", "interface": None, "targets": []}
    assert prober.vias["a"].source == "100.64.1.9"
    sent = len(prober.pending)
    h.step()
    assert all(p[0] == "a" for p in prober.pending[sent:])


def test_transition_line() -> None:
    t = Transition("fibre", "alive", "dead", 1.0, "all 3 targets lost 3 of their last 3 probes")
    assert health.transition_line(t) == \
        "health: fibre alive -> dead (all 3 targets lost 3 of their last 3 probes)"


def _script(path: Path, body: str, mode: int = 0o755) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)


def test_hooks_run_executables_in_order_with_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _script(tmp_path / "10-first", f'echo "1 $CONNPIN_UPLINK $CONNPIN_OLD $CONNPIN_NEW '
            f'$CONNPIN_REASON" >> {out}\n')
    _script(tmp_path / "20-fails", "echo oops >&2; exit 3\n")
    _script(tmp_path / "30-second", f'echo "2 $CONNPIN_UPLINK; $(pwd)" >> {out}\n')
    _script(tmp_path / "40-not-executable", f"echo no >> {out}\n", mode=0o644)
    _script(tmp_path / ".hidden", f"echo no >> {out}\n")
    (tmp_path / "50-dir").mkdir()
    logged: list[str] = []
    hooks = health.Hooks(logged.append, str(tmp_path))
    assert [os.path.basename(p) for p in hooks.programs()] == ["10-first", "20-fails",
                                                               "30-second"]
    hooks.run(Transition("isp1", "alive", "dead", 0.0, "all lost; `rm -rf /`"))
    hooks.close()
    lines = out.read_text().splitlines()
    assert lines[0] == "1 isp1 alive dead all lost; `rm -rf /`"  # no shell saw the reason
    assert lines[1].startswith("2 isp1;") and len(lines) == 2
    assert logged == [f"events hook {tmp_path / '20-fails'}: exit 3: oops"]


def test_hooks_are_killed_after_the_timeout(tmp_path: Path) -> None:
    _script(tmp_path / "slow", "exec sleep 30\n")
    logged: list[str] = []
    hooks = health.Hooks(logged.append, str(tmp_path), timeout=0.3)
    started = time.monotonic()
    hooks.run(Transition("isp1", "dead", "alive", 0.0, "answers for 3.0 s"))
    hooks.close()
    assert time.monotonic() - started < 10
    assert logged == [f"events hook {tmp_path / 'slow'}: killed after 0.3 s"]


def test_hooks_directory_from_the_environment(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    monkeypatch.setenv(health.EVENTS_DIR_ENV, str(tmp_path))
    hooks = health.Hooks(print)
    assert hooks.directory == str(tmp_path)
    hooks.close()
    monkeypatch.delenv(health.EVENTS_DIR_ENV)
    hooks = health.Hooks(print)
    assert hooks.directory == health.EVENTS_DIR
    hooks.close()


def test_status_shows_health_from_the_record() -> None:
    from connpin import reconcile
    from connpin.model import loads
    from connpin.render import status, status_text

    config = loads('[[uplink]]\nname = "a"\ninterface = "wan0"\ncheck = ["icmp:192.0.2.1", '
                   '"icmp:192.0.2.2"]\n[[uplink]]\nname = "c"\ninterface = "wan9"\n')
    result = reconcile.run(config, reconcile.Imagined(), effects=False)
    figures = {"state": "dead", "since": "2026-12-02 14:31:02", "at": 1_796_221_862.0,
               "reason": "all lost", "interface": "wan0",
               "targets": [{"target": "icmp:192.0.2.1", "rtt_ms": 1.25, "srtt_ms": 1.3,
                            "loss": 0.25, "probes": 8, "lost": 2},
                           {"target": "icmp:192.0.2.2", "rtt_ms": None, "srtt_ms": None,
                            "loss": None, "probes": 0, "lost": 0}]}
    report = status.build(config, result)
    assert report["uplinks"][0]["health"] is None
    text = status_text.text(report).splitlines()
    assert text[0].split()[4] == "health" and text[1].split()[4] == "-"  # checked, no daemon
    assert "health: not tracked (`connpin watch` is not running)" in text
    assert "health not tracked" in status_text.nagios(dict(report, installed=True))[1]
    report = status.build(config, result, watch={"pid": 1, "health": {"a": figures}},
                          now=1_796_221_862.0 + 75)
    a, c = report["uplinks"]
    assert a["health"]["state"] == "dead" and a["health"]["since"] == "2026-12-02T14:31:02Z"
    assert a["health"]["targets"][0] == {k: v for k, v in figures["targets"][0].items()}
    assert a["state"] == "dead" and c["health"] is None and c["state"] == "up"
    text = status_text.text(report).splitlines()
    assert text[1].split()[:8] == ["a", "wan0", "dead", "-", "dead", "1m15s", "-", "25%"]
    assert text[3].startswith("  a: dead: all lost; ")  # (nothing installed: Imagined)
    verbose = status_text.text(report, verbose=True)
    assert "  health: dead, since 2026-12-02T14:31:02Z (1m15s ago): all lost" in verbose
    assert "    icmp:192.0.2.1  1.25 ms  1.3 ms  25%   8       2" in verbose


def test_daemon_takes_transitions_logs_hooks_converges_and_records(monkeypatch) -> None:  # noqa: ANN001
    from connpin.watch import daemon, record

    saved: list[dict] = []
    monkeypatch.setattr(record, "save", saved.append)
    lines: list[str] = []
    w = daemon.Watcher("c.toml", CONFIG, log=lines.append)
    t = Transition("a", "alive", "dead", 1.0, "all 2 targets lost 5 of their last 5 probes")
    figures = {"a": {"state": "dead"}, "b": {"state": "alive"}}
    w.health = SimpleNamespace(take=lambda: ([t], figures))
    ran: list[Transition] = []
    w.hooks = SimpleNamespace(run=ran.append)
    w._health_take()
    assert lines == [health.transition_line(t)] and ran == [t]
    assert w.sched.take() == {"health a": "alive -> dead"}
    assert saved[-1]["health"] == figures and saved[-1]["dead"] == ["a"]
    w.health = SimpleNamespace(take=lambda: ([], figures))
    w._health_take()
    assert len(saved) == 1  # nothing new: no write
