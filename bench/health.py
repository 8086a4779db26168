"""Health tracking: how fast a dead uplink is detected and how often a healthy but lossy one is
declared dead, for connpin's defaults against mwan3's and pfSense dpinger's parameters, all
simulated with the same prober (ICMP echo through the uplink) on the same lab.

  connpin  3 ICMP targets, 10 probes/s per uplink (a round every 0.3 s), dead when every target
           lost its last 3 probes, alive after 3 s of answers (connpin.health.tracker.Params)
  mwan3    the same 3 targets, a round every 10 s, 4 s timeout, dead after 5 failed rounds
           (fewer than reliability=1 targets answered), alive after 5 good rounds
  dpinger  1 target (pfSense monitors one address per gateway), a probe every 0.5 s, lost after
           2 s, dead while the loss over the last 60 s exceeds 20%

Detection: three PPP-like ISPs, one per monitor; each in turn is blackholed beyond its first hop
(nft drop of everything it forwards; `connpin.lab.faults`) at a random moment while its monitor
says alive, then cleared once it says dead. Detection time = dead transition - the moment just
before the nft command (so it includes nft's start-up: a conservative figure). connpin's flap
damping is off in this phase (flap_window = 0) so that back-to-back cycles do not lengthen its
recovery; detection is unaffected by it.

Soak: 10% random loss EACH WAY (nft `numgen random`, ~19% of probes lost) on three ISPs, every
monitor on every ISP, for 10 minutes (--quick: 1 minute), after a minute without loss (so that
dpinger's window is full); a false alarm is any dead transition.
100 ms jitter needs netem (sch_netem, `connpin.lab.faults.jitter`): the soak tries it in the
lab; when the kernel has none that part is skipped, and the output and health.md say so.

    .venv/bin/python bench/health.py [--quick] [--out DIR]     (root)
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _common as C

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from connpin.health.probe import Via  # noqa: E402
from connpin.health.targets import Target, parse_all  # noqa: E402
from connpin.health.tracker import ALIVE, DEAD, UNKNOWN, Params, Tracker, Transition  # noqa: E402
from connpin.lab import Lab, faults  # noqa: E402
from connpin.lab.monitoring import Recorder  # noqa: E402

EXTRA = ("203.0.113.11", "203.0.113.12")
TARGETS3 = parse_all([f"icmp:{Lab.SERVER}", *(f"icmp:{a}" for a in EXTRA)])
TARGET1 = TARGETS3[:1]
PROFILES = ("connpin", "dpinger", "mwan3")
#: seconds alive before the next blackhole (plus 0-2 s at random)
SETTLE = {"connpin": 1.0, "dpinger": 62.0, "mwan3": 1.0}
JITTER_MS = 100


# -- other monitors' rules, as tracker-like objects -------------------------------------------
@dataclass
class _Rounds:
    targets: tuple[Hashable, ...]
    results: dict[Hashable, list[bool]] = field(default_factory=dict)
    done: int = 0
    fails: int = 0
    oks: int = 0
    state: str = UNKNOWN


class Mwan3:
    """mwan3's track: a round pings every target; a round fails when fewer than `reliability`
    answered; dead after `down` failed rounds in a row, alive after `up` good ones."""

    def __init__(self, interval: float = 10.0, timeout: float = 4.0, down: int = 5,
                 up: int = 5, reliability: int = 1):
        self.i, self.t, self.down, self.up, self.rel = interval, timeout, down, up, reliability
        self.u: dict[Hashable, _Rounds] = {}

    def add(self, uplink: Hashable, targets: Iterable[Hashable], now: float) -> None:
        ts = tuple(targets)
        self.u[uplink] = _Rounds(ts, {t: [] for t in ts})

    def interval(self, uplink: Hashable, costs: Sequence[int] | None = None) -> float:
        return self.i

    def timeout(self, uplink: Hashable, target: Hashable) -> float:
        return self.t

    def record(self, uplink: Hashable, target: Hashable, sent_at: float, rtt: float | None,
               now: float) -> list[Transition]:
        r = self.u[uplink]
        r.results[target].append(rtt is not None)
        out = []
        while all(len(v) > r.done for v in r.results.values()):
            ok = sum(v[r.done] for v in r.results.values()) >= self.rel
            r.done += 1
            r.fails, r.oks = (0, r.oks + 1) if ok else (r.fails + 1, 0)
            new = r.state
            if r.state != DEAD and r.fails >= self.down:
                new = DEAD
            elif r.state == DEAD and r.oks >= self.up or r.state == UNKNOWN and ok:
                new = ALIVE
            if new != r.state:
                out.append(Transition(uplink, r.state, new, now, "mwan3"))
                r.state = new
        return out

    def tick(self, now: float) -> list[Transition]:
        return []

    def state(self, uplink: Hashable) -> str:
        return self.u[uplink].state


class Dpinger:
    """dpinger as pfSense runs it: a probe every 0.5 s, lost after 2 s, loss averaged over the
    last 60 s of probes; pfSense takes the gateway down above 20% loss."""

    def __init__(self, interval: float = 0.5, loss_interval: float = 2.0, period: float = 60.0,
                 loss_high: float = 0.20):
        self.i, self.t, self.period, self.high = interval, loss_interval, period, loss_high
        self.u: dict[Hashable, tuple[list[tuple[float, bool]], list[str]]] = {}

    def add(self, uplink: Hashable, targets: Iterable[Hashable], now: float) -> None:
        self.u[uplink] = ([], [UNKNOWN])

    def interval(self, uplink: Hashable, costs: Sequence[int] | None = None) -> float:
        return self.i

    def timeout(self, uplink: Hashable, target: Hashable) -> float:
        return self.t

    def record(self, uplink: Hashable, target: Hashable, sent_at: float, rtt: float | None,
               now: float) -> list[Transition]:
        results, state = self.u[uplink]
        results.append((sent_at, rtt is not None))
        while results and results[0][0] < now - self.period - self.t:
            results.pop(0)
        loss = sum(1 for _, ok in results if not ok) / len(results)
        new = DEAD if loss > self.high else ALIVE
        if new != state[0]:
            old, state[0] = state[0], new
            return [Transition(uplink, old, new, now, f"dpinger loss {loss:.0%}")]
        return []

    def tick(self, now: float) -> list[Transition]:
        return []

    def state(self, uplink: Hashable) -> str:
        return self.u[uplink][1][0]


def make(profile: str, detection: bool) -> object:
    if profile == "connpin":
        return Tracker(Params(flap_window=0) if detection else Params())
    return Dpinger() if profile == "dpinger" else Mwan3()


def targets_of(profile: str) -> tuple[Target, ...]:
    return TARGET1 if profile == "dpinger" else TARGETS3


def build(lab: Lab) -> None:
    for k in lab.ks:
        lab.uplink_up(k)
    for a in EXTRA:
        lab.exec("net", ["ip", "addr", "add", f"{a}/32", "dev", "lo"])


def via(lab: Lab, k: int) -> Via:
    return Via(device=lab.iface(k), source=lab.address(k))


# -- phases ---------------------------------------------------------------------------------------
def detection(seconds: float) -> tuple[dict[str, list[float]], dict[str, list[float]],
                                       list[float]]:
    """Blackhole cycles, one ISP per monitor, in parallel: detection and recovery times, and
    how long each nft command took."""
    nft_s: list[float] = []
    det: dict[str, list[float]] = {p: [] for p in PROFILES}
    rec: dict[str, list[float]] = {p: [] for p in PROFILES}
    with Lab(("ppp",) * len(PROFILES)) as lab:
        build(lab)
        run = Recorder(lab.ns("router"))
        for k, prof in enumerate(PROFILES, 1):
            run.monitor.add(prof, via(lab, k), targets_of(prof), make(prof, True))
        run.start()
        end = time.monotonic() + seconds

        def cycle(k: int, prof: str) -> None:
            rng = random.Random(k)
            tracker = run.monitor.tracker_of(prof)
            while time.monotonic() < end:
                after = run.count()
                if (tracker.state(prof) != ALIVE
                        and run.wait(prof, ALIVE, end + 120, after=after) is None):
                    return
                # settle so that the monitor starts from a clean slate: dpinger's 60 s window
                # free of the previous losses, a random phase for the others
                time.sleep(SETTLE[prof] + rng.random() * 2)
                if time.monotonic() >= end:
                    return
                after = run.count()
                if tracker.state(prof) != ALIVE:
                    continue
                t0 = time.monotonic()
                faults.blackhole(lab, k)
                nft_s.append(time.monotonic() - t0)
                dead = run.wait(prof, DEAD, t0 + 180, after=after)
                t1 = time.monotonic()
                faults.clear(lab, k)
                if dead is None:
                    print(f"{prof}: not dead within 180 s", flush=True)
                    return
                det[prof].append(dead.at - t0)
                after = run.count()
                alive = run.wait(prof, ALIVE, t1 + 180, after=after)
                if alive is not None:
                    rec[prof].append(alive.at - t1)

        threads = [threading.Thread(target=cycle, args=(k, p), daemon=True)
                   for k, p in enumerate(PROFILES, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 400)
        run.close()
    return det, rec, nft_s


def soak(seconds: float) -> tuple[dict[str, int], dict[str, float], str | None, int]:
    """10% loss each way on 3 ISPs (and 100 ms of jitter where the kernel has netem), every
    monitor on every ISP: false alarms per monitor, probe rates, why there was no jitter (None:
    there was), packets dropped."""
    with Lab(("ppp", "ppp", "ppp")) as lab:
        build(lab)
        no_netem = faults.netem_missing(lab, 1)
        run = Recorder(lab.ns("router"))
        for k in lab.ks:
            for prof in PROFILES:
                run.monitor.add((prof, k), via(lab, k), targets_of(prof), make(prof, False))
        run.start()
        deadline = time.monotonic() + 130
        for k in lab.ks:
            for prof in PROFILES:
                if run.wait((prof, k), ALIVE, deadline) is None:
                    raise SystemExit(f"{prof} on isp{k} never alive")
        time.sleep(SETTLE["dpinger"])  # dpinger's 60 s loss window full before the loss starts
        n0 = run.count()
        for k in lab.ks:
            faults.loss(lab, k, 10)
            if no_netem is None:
                faults.jitter(lab, k, JITTER_MS)
        p0, t0 = dict(run.prober.packets_by), time.monotonic()
        time.sleep(seconds)
        with run.cond:
            bad = [t for t in run.events[n0:] if t.new == DEAD]
        took = time.monotonic() - t0
        rates = {prof: sum(run.prober.packets_by[(prof, k)] - p0[(prof, k)] for k in lab.ks)
                 / took / len(lab.ks) for prof in PROFILES}
        dropped = sum(faults.dropped(lab, k) for k in lab.ks)
        run.close()
    alarms = {p: sum(1 for t in bad if t.uplink[0] == p) for p in PROFILES}
    return alarms, rates, no_netem, dropped


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    args = C.parse_args(__doc__.split("\n\n")[0])
    det_s, soak_s = (90, 60) if args.quick else (420, 600)
    print(f"detection: blackhole cycles for {det_s} s ...", flush=True)
    det, rec, nft_s = detection(det_s)
    print(f"soak: 10% loss each way (+{JITTER_MS} ms jitter where netem exists) for {soak_s} s"
          " ...", flush=True)
    alarms, rates, no_netem, dropped = soak(soak_s)

    rows, csv_rows = [], []
    base50 = statistics.median(det["connpin"]) if det["connpin"] else float("nan")
    base99 = pct(det["connpin"], 0.99) if det["connpin"] else float("nan")
    for prof in PROFILES:
        d, r = det[prof], rec[prof]
        p50 = statistics.median(d) if d else float("nan")
        p99 = pct(d, 0.99) if d else float("nan")
        rows.append((prof, len(d), f"{p50:.2f}", f"{p99:.2f}", f"{max(d):.2f}" if d else "-",
                     f"{p50 / base50:.1f}x", f"{p99 / base99:.1f}x",
                     f"{statistics.median(r):.1f}" if r else "-", alarms[prof],
                     f"{rates[prof]:.2f}"))
        csv_rows += [(prof, "detect_s", f"{v:.3f}") for v in d]
        csv_rows += [(prof, "recover_s", f"{v:.3f}") for v in r]
        csv_rows.append((prof, "false_alarms", alarms[prof]))
    head = ("monitor", "events", "detect p50 s", "p99 s", "max s", "p50 vs connpin",
            "p99 vs connpin", "recovery p50 s", f"false alarms ({soak_s // 60} min x 3 ISPs)",
            "packets/s per uplink (soak)")
    tab = C.table(head, rows)
    jitter = (f"{JITTER_MS} ms jitter (netem on each ISP's up0) with the loss" if no_netem is None
              else f"{JITTER_MS} ms jitter: SKIPPED, this kernel has no netem (tc qdisc add ... "
              f"netem in the lab: {no_netem!r}); loss only")
    nft50 = statistics.median(nft_s) if nft_s else float("nan")
    notes = (f"Soak: 10% random loss each way on 3 ISPs for {soak_s} s ({dropped} packets "
             f"dropped), every monitor on every ISP. Detection times include starting nft in "
             f"the ISP's namespace (median {nft50 * 1000:.0f} ms). {jitter}.")
    print(tab)
    print(notes)
    C.write_csv(args.out, "health", ("monitor", "figure", "value"), csv_rows)
    C.write_md(args.out, "health", "## Health tracking: detection and false alarms\n\n"
               f"Blackhole cycles for {det_s} s (one ISP per monitor, in parallel); detection "
               "time from just before the nft command to the dead transition.\n\n"
               f"{tab}\n{notes}\n")
    ok = bool(det["connpin"]) and base50 <= 1.0 and base99 <= 2.0 and alarms["connpin"] == 0
    print("goals (p50 <= 1 s, p99 <= 2 s, no false alarm):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
