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

Detection under loss + jitter: the same blackhole cycles for connpin alone, one monitor per ISP
on three ISPs with 10% random loss each way and 100 ms of jitter (the blackhole replaces the
loss rule while it lasts; the jitter stays), so detection p50/p99 clean and impaired compare.
(dpinger flaps at this loss and mwan3 needs ~50 s per cycle: neither gives a useful figure.)

Soak: 10% random loss EACH WAY (nft `numgen random`, ~19% of probes lost) plus 100 ms of jitter
(each packet towards the internet host delayed by uniform(0, 100) ms; `connpin.lab.faults.jitter`:
netem where the kernel has sch_netem, else the userspace NFQUEUE delay line `connpin.lab.delay`;
the output says which) on three ISPs, every monitor on every ISP, for 10 minutes (--quick:
1 minute), after a minute without loss (so that dpinger's window is full); a false alarm is any
dead transition. --no-jitter: loss only.

    .venv/bin/python bench/health.py [--quick] [--no-jitter] [--out DIR]     (root)
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
def impair(lab: Lab, k: int, jitter: bool) -> str | None:
    """10% loss each way on ISP k, plus 100 ms of jitter when asked: how the jitter is made."""
    faults.loss(lab, k, 10)
    return faults.jitter(lab, k, JITTER_MS) if jitter else None


def detection(seconds: float, profiles: Sequence[str] = PROFILES, impaired: bool = False,
              jitter: bool = True
              ) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Blackhole cycles, one ISP per entry of `profiles`, in parallel: detection and recovery
    times per profile, and how long each nft command took. impaired: every ISP has 10% loss
    each way (and 100 ms of jitter if `jitter`); the blackhole replaces the loss rule while it
    lasts, then the loss comes back (the jitter stays throughout)."""
    nft_s: list[float] = []
    det: dict[str, list[float]] = {p: [] for p in profiles}
    rec: dict[str, list[float]] = {p: [] for p in profiles}
    with Lab(("ppp",) * len(profiles)) as lab:
        build(lab)
        if impaired:
            for k in lab.ks:
                impair(lab, k, jitter)
        run = Recorder(lab.ns("router"))
        for k, prof in enumerate(profiles, 1):
            run.monitor.add((prof, k), via(lab, k), targets_of(prof), make(prof, True))
        run.start()
        end = time.monotonic() + seconds

        def cycle(k: int, prof: str) -> None:
            rng = random.Random(k)
            key = (prof, k)
            tracker = run.monitor.tracker_of(key)
            while time.monotonic() < end:
                after = run.count()
                if (tracker.state(key) != ALIVE
                        and run.wait(key, ALIVE, end + 120, after=after) is None):
                    return
                # settle so that the monitor starts from a clean slate: dpinger's 60 s window
                # free of the previous losses, a random phase for the others
                time.sleep(SETTLE[prof] + rng.random() * 2)
                if time.monotonic() >= end:
                    return
                after = run.count()
                if tracker.state(key) != ALIVE:
                    continue
                t0 = time.monotonic()
                faults.blackhole(lab, k)
                nft_s.append(time.monotonic() - t0)
                dead = run.wait(key, DEAD, t0 + 180, after=after)
                t1 = time.monotonic()
                if impaired:
                    faults.loss(lab, k, 10)  # the jitter stays
                else:
                    faults.clear(lab, k)
                if dead is None:
                    print(f"{prof} on isp{k}: not dead within 180 s", flush=True)
                    return
                det[prof].append(dead.at - t0)
                after = run.count()
                alive = run.wait(key, ALIVE, t1 + 180, after=after)
                if alive is not None:
                    rec[prof].append(alive.at - t1)

        threads = [threading.Thread(target=cycle, args=(k, p), daemon=True)
                   for k, p in enumerate(profiles, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 400)
        run.close()
        for k in lab.ks:
            faults.clear(lab, k)
    return det, rec, nft_s


@dataclass
class Soak:
    alarms: dict[str, int]
    rates: dict[str, float]
    jitter: str | None  # how the jitter was made ("netem", "nfqueue via ..."), None: none
    no_netem: str | None  # why there is no netem (None: there is)
    dropped: int
    delay_line: list[str]  # the delay lines' own figures, one per ISP (nfqueue only)


def soak(seconds: float, jitter: bool = True) -> Soak:
    """10% loss each way on 3 ISPs (and 100 ms of jitter unless jitter=False), every monitor
    on every ISP: false alarms per monitor, probe rates, how the jitter was made."""
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
        hows = {impair(lab, k, jitter) for k in lab.ks}
        p0, t0 = dict(run.prober.packets_by), time.monotonic()
        time.sleep(seconds)
        with run.cond:
            bad = [t for t in run.events[n0:] if t.new == DEAD]
        took = time.monotonic() - t0
        rates = {prof: sum(run.prober.packets_by[(prof, k)] - p0[(prof, k)] for k in lab.ks)
                 / took / len(lab.ks) for prof in PROFILES}
        dropped = sum(faults.dropped(lab, k) for k in lab.ks)
        run.close()
        words = [w for k in lab.ks if (w := faults.clear_jitter(lab, k))]
    alarms = {p: sum(1 for t in bad if t.uplink[0] == p) for p in PROFILES}
    return Soak(alarms, rates, " + ".join(sorted(h for h in hows if h)) or None, no_netem,
                dropped, words)


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _p(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.median(values) if q == 0.5 else pct(values, q)


def main() -> int:
    args = C.parse_args(__doc__.split("\n\n")[0], lambda p: p.add_argument(
        "--no-jitter", action="store_true", help="soak and impaired detection without jitter"))
    jit = not args.no_jitter
    det_s, imp_s, soak_s = (90, 45, 60) if args.quick else (420, 150, 600)
    print(f"detection: blackhole cycles for {det_s} s ...", flush=True)
    det, rec, nft_s = detection(det_s)
    print(f"detection under 10% loss{f' + {JITTER_MS} ms jitter' if jit else ''}, connpin on 3 "
          f"ISPs, for {imp_s} s ...", flush=True)
    idet, irec, _ = detection(imp_s, ("connpin",) * 3, impaired=True, jitter=jit)
    print(f"soak: 10% loss each way{f' + {JITTER_MS} ms jitter' if jit else ''} for {soak_s} s"
          " ...", flush=True)
    sk = soak(soak_s, jit)

    rows, csv_rows = [], []
    base50, base99 = _p(det["connpin"], 0.5), _p(det["connpin"], 0.99)
    for prof in PROFILES:
        d, r = det[prof], rec[prof]
        p50, p99 = _p(d, 0.5), _p(d, 0.99)
        rows.append((prof, len(d), f"{p50:.2f}", f"{p99:.2f}", f"{max(d):.2f}" if d else "-",
                     f"{p50 / base50:.1f}x", f"{p99 / base99:.1f}x",
                     f"{statistics.median(r):.1f}" if r else "-", sk.alarms[prof],
                     f"{sk.rates[prof]:.2f}"))
        csv_rows += [(prof, "detect_s", f"{v:.3f}") for v in d]
        csv_rows += [(prof, "recover_s", f"{v:.3f}") for v in r]
        csv_rows.append((prof, "false_alarms", sk.alarms[prof]))
    d, r = idet["connpin"], irec["connpin"]
    i50, i99 = _p(d, 0.5), _p(d, 0.99)
    rows.append(("connpin, loss+jitter" if jit else "connpin, loss", len(d), f"{i50:.2f}",
                 f"{i99:.2f}", f"{max(d):.2f}" if d else "-", f"{i50 / base50:.1f}x",
                 f"{i99 / base99:.1f}x", f"{statistics.median(r):.1f}" if r else "-", "", ""))
    csv_rows += [("connpin-impaired", "detect_s", f"{v:.3f}") for v in d]
    csv_rows += [("connpin-impaired", "recover_s", f"{v:.3f}") for v in r]
    head = ("monitor", "events", "detect p50 s", "p99 s", "max s", "p50 vs connpin",
            "p99 vs connpin", "recovery p50 s", f"false alarms ({soak_s // 60} min x 3 ISPs)",
            "packets/s per uplink (soak)")
    tab = C.table(head, rows)
    if not jit:
        jitter = "no jitter (--no-jitter)"
    elif sk.jitter == "netem":
        jitter = f"{JITTER_MS} ms jitter by netem on each ISP's up0"
    else:
        jitter = (f"{JITTER_MS} ms jitter by the userspace delay line ({sk.jitter}; this kernel "
                  f"has no netem: {sk.no_netem!r}); delay lines: {'; '.join(sk.delay_line)}")
    nft50 = statistics.median(nft_s) if nft_s else float("nan")
    notes = (f"Soak: 10% random loss each way on 3 ISPs for {soak_s} s ({sk.dropped} packets "
             f"dropped), every monitor on every ISP; {jitter}. Impaired detection: connpin "
             f"alone on 3 ISPs with the same loss and jitter, {imp_s} s of cycles. Detection "
             f"times include starting nft in the ISP's namespace (median {nft50 * 1000:.0f} ms).")
    print(tab)
    print(notes)
    C.write_csv(args.out, "health", ("monitor", "figure", "value"), csv_rows)
    C.write_md(args.out, "health", "## Health tracking: detection and false alarms\n\n"
               f"Blackhole cycles for {det_s} s (one ISP per monitor, in parallel); detection "
               "time from just before the nft command to the dead transition.\n\n"
               f"{tab}\n{notes}\n")
    ok = (bool(det["connpin"]) and base50 <= 1.0 and base99 <= 2.0
          and sk.alarms["connpin"] == 0 and i99 <= 2.0)
    print("goals (p50 <= 1 s, p99 <= 2 s clean and impaired, no false alarm):",
          "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
