"""Latency from the kernel event (an uplink interface goes up, holding its address) to connpin's
rule and route for it being in place, for three ways of reacting, interleaved in one run:

  daemon  `connpin watch` running in the router (rtnetlink events, no hooks)
  hook    the `connpin up IFACE` hook script pppd would run (`connpin hooks install --ppp`)
  shell   the reference recipe's ip-up script (`ip rule` / `ip route`), with connpin's numbers

All in a lab of network namespaces (removed whatever happens). The event is the interface's
IFF_UP (set through netlink by this process; t0 is taken just before); "in place" is when a
netlink monitor in the router has seen both the route in the uplink's table and the rule that
points at it (t1). For the hook and the shell script, t0 includes starting them, as pppd would.
The daemon is frozen (SIGSTOP, while idle) during the other two, so each path does the work.

Then where the hook path's time goes: shell start, interpreter start, imports, the converge.

    .venv/bin/python bench/watch.py [--quick] [--out DIR]     (root; default DIR bench/results)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE

import _common as C  # before connpin: puts this checkout's src/ on sys.path
from connpin import hooks, model, reconcile, watch
from connpin.const import IFF_UP
from connpin.kernel import netns, state
from connpin.lab import Lab
from connpin.lab.commands import HOOK_PATH
from connpin.render.columns import columns

PATHS = ("daemon", "hook", "shell")
LABELS = {
    "daemon": "connpin watch (daemon)",
    "hook": "connpin up (pppd hook script)",
    "shell": "reference ip-up script (sh + ip)",
}
RTM_NEWROUTE, RTM_NEWRULE = 24, 32
HOOK_ENV = {"PATH": HOOK_PATH, "PPP_IFACE": "ppp0"}

REFERENCE = """#!/bin/sh
# The reference recipe's ip-up, with connpin's table, mark and rule priority for this uplink.
TABLE={table}
MARK={mark}/{mask}
ip rule del lookup "$TABLE"
ip route flush table "$TABLE"
ip route add default dev "$PPP_IFACE" table "$TABLE"
ip rule add fwmark "$MARK" table "$TABLE" priority {priority}
"""


class Monitor:
    """A netlink socket in the router on the rule and route groups, read raw and decoded by
    pyroute2, stamped when read (this process blocks on it while waiting: it wakes at once)."""

    def __init__(self) -> None:
        self.ipr = IPRoute()
        self.ipr.bind(groups=RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE)
        self.sock = self.ipr.asyncore.socket
        self.sock.setblocking(True)

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(1 << 18)
        self.sock.setblocking(True)

    def wait(self, table: int, need_rule: bool, timeout: float = 10.0) -> float | None:
        """perf_counter when both the default route in `table` and (if `need_rule`) a rule
        looking it up have appeared; None on timeout."""
        route = rule = None
        deadline = time.perf_counter() + timeout
        while route is None or (need_rule and rule is None):
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 18)
            except (TimeoutError, BlockingIOError):
                return None
            now = time.perf_counter()
            for msg in self.ipr.marshal.parse(data):
                kind = msg["header"]["type"]
                t = msg.get_attr("FRA_TABLE" if kind == RTM_NEWRULE else "RTA_TABLE") or msg.get(
                    "table")
                if t != table:
                    continue
                if kind == RTM_NEWROUTE and msg["dst_len"] == 0:
                    route = route or now
                elif kind == RTM_NEWRULE:
                    rule = rule or now
        return max(route, rule or 0.0)

    def close(self) -> None:
        self.ipr.close()


class Bench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.ns = lab.ns("router")
        with netns.inside(self.ns):
            self.ctl = IPRoute()
            self.monitor = Monitor()
            self.lock_path = os.path.join(state.directory(), "lock")
        config = model.load(lab.config_path)
        want = reconcile.run(config, reconcile.Imagined(), effects=False).desired
        slot = next(u.slot for u in want.uplinks if u.interface == "ppp0")
        self.table, self.mark = slot.table, slot.mark
        self.mask = config.pinning.mark_mask
        self.priority = next(r.priority for r in want.rules  # its leaf in the mark tree
                             if r.action == "lookup" and r.table == slot.table and r.family == 4)
        self.hook = lab.workdir / "ip-up-connpin"
        self.hook.write_text(hooks.script(hooks.PPP[0], str(lab.config_path)))
        self.shell = lab.workdir / "ip-up-reference"
        self.shell.write_text(REFERENCE.format(table=self.table, mark=hex(self.mark),
                                               mask=hex(self.mask), priority=self.priority))
        for f in (self.hook, self.shell):
            f.chmod(0o755)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.index = 0

    # -- the daemon ---------------------------------------------------------------------------
    def start_daemon(self) -> None:
        path = self.lab.workdir / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
            ready.bind(str(path))
            ready.settimeout(30)
            log = open(self.lab.workdir / "watch.log", "wb")  # noqa: SIM115 - the child's
            with log:
                self.daemon = subprocess.Popen(
                    [sys.executable, "-m", "connpin", "--netns", self.ns, "-c",
                     str(self.lab.config_path), "watch"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    env={**os.environ, "NOTIFY_SOCKET": str(path)})
            while b"READY=1" not in ready.recv(4096):
                pass

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGCONT)
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def _state(self) -> str:
        with open(f"/proc/{self.daemon.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    @contextlib.contextmanager
    def frozen(self, freeze: bool) -> Iterator[None]:
        """SIGSTOP the daemon while it is idle (holding connpin's lock meanwhile, so it is not
        stopped in the middle of a converge), SIGCONT afterwards."""
        if not freeze:
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.daemon.send_signal(signal.SIGSTOP)
            while self._state() != "T":
                time.sleep(0.001)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            self.daemon.send_signal(signal.SIGCONT)

    # -- one measurement ----------------------------------------------------------------------
    def _idx(self) -> int:
        return self.ctl.link_lookup(ifname="ppp0")[0]

    def _pinned(self) -> tuple[bool, bool]:
        rule = any((r.get_attr("FRA_TABLE") or r["table"]) == self.table
                   for r in self.ctl.get_rules(family=socket.AF_INET))
        route = any((r.get_attr("RTA_TABLE") or r["table"]) == self.table
                    for r in self.ctl.route("dump", family=socket.AF_INET))
        return rule, route

    def prepare(self) -> bool:
        """ppp0 present with its address but down; the daemon (running) has removed what it
        installed for it. Returns whether the rule for the table is per uplink (it went away;
        a rule still there a second after the route is one that stays whatever the uplink does,
        and then only the route is waited for)."""
        self.lab.uplink_up(1)
        self.ctl.link("set", index=self._idx(), flags=0, change=IFF_UP)
        deadline, route_gone = time.monotonic() + 10, None
        while True:
            rule, route = self._pinned()
            now = time.monotonic()
            if not route and not rule:
                return True
            if not route:
                route_gone = route_gone or now
                if now - route_gone > 1.0:
                    return False
            elif now > deadline:
                raise RuntimeError("connpin's route for ppp0 stayed after the link went down")
            time.sleep(0.002)

    def settle(self) -> None:
        """Let the daemon finish the converge that followed prepare() (connpin's lock is free)
        and leave its coalescing window (watch.GAP): the event then arrives to an idle daemon,
        not as the tail of a burst."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)
        time.sleep(2.5 * watch.GAP)

    def measure(self, path: str) -> tuple[float | None, float | None]:
        need_rule = self.prepare()
        self.settle()
        with self.frozen(path != "daemon"):
            self.monitor.drain()
            proc = None
            t0 = time.perf_counter()
            self.ctl.link("set", index=self._idx(), flags=IFF_UP, change=IFF_UP)
            if path != "daemon":
                script = self.hook if path == "hook" else self.shell
                with netns.inside(self.ns):
                    proc = subprocess.Popen([str(script)], env=HOOK_ENV, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t1 = self.monitor.wait(self.table, need_rule)
            done = None
            if proc is not None:
                proc.wait(timeout=60)
                done = (time.perf_counter() - t0) * 1000
            if path == "shell":
                self.unshell()
        return (None if t1 is None else (t1 - t0) * 1000), done

    def unshell(self) -> None:
        """Take the reference script's rule and route away again (connpin's too, which the
        daemon puts back): left in connpin's band, its rule (not connpin's protocol) is a
        conflict that makes the next `connpin up` refuse, as it would on a real router."""
        for r in self.ctl.get_rules(family=socket.AF_INET):
            if (r.get_attr("FRA_TABLE") or r["table"]) == self.table:
                with contextlib.suppress(Exception):
                    self.ctl.rule("del", priority=r.get_attr("FRA_PRIORITY"), table=self.table)
        with contextlib.suppress(Exception):
            self.ctl.route("flush", table=self.table)

    def close(self) -> None:
        self.stop_daemon()
        self.monitor.close()
        self.ctl.close()


# -- where the hook path's time goes -------------------------------------------------------------

def _timed(argv: list[str], ns: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    with netns.inside(ns):
        t = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        return (time.perf_counter() - t) * 1000, p.stdout + p.stderr


def breakdown(lab: Lab, reps: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Medians of the hook path's stages, and the heaviest top-level imports of `connpin up`."""
    ns, py = lab.ns("router"), sys.executable
    cfg = str(lab.config_path)
    stages = {
        "sh -c true (shell start)": ["sh", "-c", "true"],
        "ip rule show (one ip command)": ["ip", "rule", "show"],
        "python -I -c pass (interpreter)": [py, "-I", "-c", "pass"],
        "python: import pyroute2 whole (`from pyroute2 import IPRoute`)": [
            py, "-I", "-c", "from pyroute2 import IPRoute"],
        "python: import pyroute2 lazily (connpin.kernel.netlink)": [
            py, "-I", "-c", "import connpin.kernel.netlink"],
        "python: import what `connpin up` imports": [
            py, "-I", "-c", "import connpin.cli, connpin.model, connpin.engine, "
            "connpin.kernel.machine"],
        "python -I -m connpin up ppp0 (no change)": [py, "-I", "-m", "connpin", "-c", cfg,
                                                     "up", "ppp0"],
        "hook script (sh + env + connpin up)": [str(lab.workdir / "ip-up-connpin")],
    }
    times: dict[str, list[float]] = {k: [] for k in stages}
    imports: dict[str, list[float]] = {}
    for _ in range(reps):
        for label, argv in stages.items():
            times[label].append(_timed(argv, ns, HOOK_ENV if "hook" in label else None)[0])
        _, err = _timed([py, "-I", "-X", "importtime", "-m", "connpin", "-c", cfg, "up", "ppp0"],
                        ns)
        for line in err.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
            if m and len(m.group(2)) <= 2:  # top level, as imported by connpin's modules
                imports.setdefault(m.group(3), []).append(int(m.group(1)) / 1000)
    stage_rows = [(k, statistics.median(v)) for k, v in times.items()]
    heavy = sorted(((k, statistics.median(v)) for k, v in imports.items()), key=lambda r: -r[1])
    return stage_rows, heavy[:8]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> int:
    args = C.parse_args(__doc__.split("\n\n")[0])
    reps = 8 if args.quick else 40
    rows: list[tuple[str, int, float | None, float | None]] = []
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.connpin("apply")
        lab.uplink_up(2)
        bench = Bench(lab)
        try:
            bench.start_daemon()
            for path in PATHS:  # warm caches once per path, not measured
                bench.measure(path)
            for i in range(reps):
                for path in PATHS[i % 3:] + PATHS[:i % 3]:  # interleaved, rotating order
                    latency, done = bench.measure(path)
                    rows.append((path, i, latency, done))
            bench.stop_daemon()
            stages, heavy = breakdown(lab, max(3, reps // 4))
        finally:
            bench.close()
    return report(rows, stages, heavy, reps, args.out)


def report(rows, stages, heavy, reps: int, out: Path) -> int:
    summary = []
    for path in PATHS:
        lat = [r[2] for r in rows if r[0] == path and r[2] is not None]
        lost = sum(1 for r in rows if r[0] == path and r[2] is None)
        done = [r[3] for r in rows if r[0] == path and r[3] is not None]
        summary.append((path, lat, lost, done))
    shell_p50 = statistics.median(summary[2][1]) if summary[2][1] else float("nan")
    head = ("path", "p50 ms", "p99 ms", "x shell p50", "exit p50 ms", "missed")
    table = [head]
    for path, lat, lost, done in summary:
        p50 = statistics.median(lat) if lat else float("nan")
        table.append((LABELS[path], f"{p50:.1f}", f"{pct(lat, 0.99):.1f}" if lat else "-",
                      f"{p50 / shell_p50:.2f}", f"{statistics.median(done):.1f}" if done else "-",
                      str(lost)))
    text = "\n".join(columns(table))
    where = "\n".join(f"  {k:<62} {v:7.1f} ms" for k, v in stages)
    imp = "\n".join(f"  {k:<45} {v:7.1f} ms" for k, v in heavy)
    machine = f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs"
    print(f"event (uplink up with its address) -> connpin's rule and route in place, "
          f"{reps} runs each, interleaved ({machine})\n{text}\n")
    print(f"where the hook path's time goes (medians):\n{where}\n")
    print(f"heaviest imports of `connpin up` (cumulative, -X importtime):\n{imp}")
    C.write_csv(out, "watch", ["path", "run", "event_to_pinned_ms", "process_exit_ms"],
                ([path, i, "" if lat is None else f"{lat:.3f}",
                  "" if done is None else f"{done:.3f}"] for path, i, lat, done in rows))
    md = ["## connpin watch: from the kernel event to the pinning in place", "",
          f"{reps} runs per path, interleaved in one run; {machine}. The event is the uplink "
          "interface going up (IFF_UP) with its address; \"in place\" is when a netlink monitor "
          "has seen connpin's route and rule for it. The hook and the shell script are started "
          "at the event, as pppd would; `exit` is when they finished.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in table[1:]]
    md += ["", "Where the hook path's time goes (medians):", "", "| stage | ms |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in stages]
    md += ["", "Heaviest top-level imports of `connpin up` (`python -X importtime`, cumulative):",
           "", "| module | ms |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in heavy]
    C.write_md(out, "watch", "\n".join(md))
    missed = sum(s[2] for s in summary)
    if missed:
        print(f"\n{missed} runs never saw the pinning within 10 s", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
