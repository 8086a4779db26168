"""Shared helpers for the benchmarks in bench/: arguments, statistics, tables, CSV, markdown,
plots, the machine description, and the set-ups compared on the lab's namespaces.

Interface every bench/<name>.py follows (bench/run.py runs each in its own process):
    .venv/bin/python bench/<name>.py [--quick] [--out DIR]      (DIR defaults to bench/results)
prints its tables, writes DIR/<name>.csv and DIR/<name>.md (a markdown section starting with
`## `), optionally DIR/<name>*.png.

Set-ups (same lab, same interfaces, only the router's rules differ):
    base     routing + masquerade only (one nft masquerade rule on the real uplink)
    recipe   the reference recipe: iptables (the machine's default, iptables-nft on Debian)
             mangle CONNMARK rules, one per uplink per chain, MASQUERADE per uplink, and one
             `ip rule fwmark M table T` per uplink (no priority: each new one goes first)
    linear   connpin's nft ruleset with the old linear ip rules (one fwmark rule per uplink)
    connpin  connpin apply (nft ruleset + the mark tree)
Of N configured uplinks only one or two are real ISPs; the others are the lab's spare
interfaces (port-less bridges with an address), so every set-up carries the rules of N uplinks.
The real uplink sits in the middle of the uplink list, which for the linear layouts is the
average position.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))

from connpin import alloc  # noqa: E402
from connpin.kernel import tools as kernel_tools  # noqa: E402
from connpin.lab import Lab  # noqa: E402
from connpin.model import RULE_BAND  # noqa: E402

UPLINKS = (2, 16, 64, 256)
MASK = 0x01FF0000  # 511 marks: room for 256 uplinks
PRIO = 10000
LAN_NET = "10.77.0.0/24"
RECIPE_TABLE = 2000  # the recipe's tables: 2000 + i
SETUPS = ("base", "recipe", "linear", "connpin", "checked")
LABELS = {
    "base": "routing + masquerade",
    "recipe": "recipe (iptables + linear ip rules)",
    "linear": "connpin ruleset, linear ip rules",
    "connpin": "connpin (mark tree)",
    "checked": "connpin with check (chooses; passive signal rules)",
}


# -- command line, statistics, output ---------------------------------------------------------
def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """--quick and --out (plus what `extra` adds); exits unless root; makes the out directory."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: needs root (network namespaces)")
    return args


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def spread(values: Sequence[float]) -> str:
    """The spread as +-half the range relative to the median, e.g. '±3%'."""
    med, lo, hi = summary(values)
    return f"±{(hi - lo) / 2 / med * 100:.0f}%" if med else "-"


def fmt(value: float, unit: str = "") -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.2f} {prefix}{unit}".rstrip()
    return f"{value:.0f} {unit}".rstrip() if value >= 10 else f"{value:.2f} {unit}".rstrip()


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (also readable in a terminal)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths,  # noqa: E731
                                                                        strict=True)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join([*out, *(line(r) for r in rows)]) + "\n"


def write_csv(out: Path, name: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    path = out / f"{name}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows(rows)
    return path


def write_md(out: Path, name: str, text: str) -> Path:
    path = out / f"{name}.md"
    path.write_text(text.rstrip("\n") + "\n")
    return path


def plot(out: Path, name: str, title: str, ylabel: str,
         series: dict[str, list[tuple[int, float, float, float]]], *, ref: float | None = 1.0,
         logy: bool = False) -> Path | None:
    """One PNG: each series is [(uplinks, median, low, high)], plotted against uplinks (log2)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"({name}.png skipped: matplotlib is not installed; `make bench` installs it)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, pts in series.items():
        pts = sorted(pts)
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    if ref is not None:
        ax.axhline(ref, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("configured uplinks")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not installed"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "nft": _version(["nft", "--version"]),
        "iptables": _version(["iptables", "--version"]),
        "iperf3": _version(["iperf3", "--version"]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _os_name() -> str:
    with suppress(OSError), open("/etc/os-release") as f:
        for ln in f:
            if ln.startswith("PRETTY_NAME="):
                return ln.split("=", 1)[1].strip().strip('"')
    return platform.system()


# -- the lab and the set-ups ------------------------------------------------------------------
class Bench:
    """A lab with `real` PPP-like ISPs (all up) and spare interfaces up to `max_uplinks`."""

    def __init__(self, real: int = 1, max_uplinks: int = max(UPLINKS)):
        self.lab = Lab(uplinks=("ppp",) * real)
        self.real = real
        self.max_uplinks = max_uplinks
        self.spares: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self.setup: str | None = None
        self.n = 0

    def __enter__(self) -> Bench:
        self.lab.build()
        try:
            self.spares = self.lab.add_spare_uplinks(self.max_uplinks - self.real)
            for k in self.lab.ks:
                self.lab.uplink_up(k)
            # conntrack entries of closed connections would pile up during connection storms
            self.lab.set_sysctl("router", "net.netfilter.nf_conntrack_tcp_timeout_close", 1)
            self.lab.set_sysctl("router", "net.netfilter.nf_conntrack_tcp_timeout_time_wait", 1)
        except BaseException:
            self.lab.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self._procs:
            stop(p)
        self.lab.destroy()

    # -- uplinks --------------------------------------------------------------------------------
    def ifaces(self, n: int) -> list[str]:
        """n uplink interfaces: the spares with the real ISPs' interfaces in the middle."""
        real = [self.lab.iface(k) for k in self.lab.ks]
        spares = self.spares[: n - len(real)]
        mid = len(spares) // 2 if len(real) == 1 else (n - len(real)) // 2
        return spares[:mid] + real + spares[mid:]

    def connpin_config(self, n: int, extra: list[str] | None = None, check: bool = False) -> str:
        """N uplinks on marks 1..N (explicit: hashed names would collide in 511 marks). `check`:
        the real ISPs' uplinks get a health check and tier 1, the spares tier 2, so connpin
        chooses among the real ones and renders the passive signal's rules for them; no daemon
        runs (no probe is sent): what is measured is the rules' cost per packet."""
        text = f"[pinning]\nmark_mask = {MASK:#x}\nrule_priority = {PRIO}\n"
        real = {self.lab.iface(k) for k in self.lab.ks}
        for i, iface in enumerate([*self.ifaces(n), *(extra or [])]):
            text += (f'\n[[uplink]]\nname = "u{i}"\ninterface = "{iface}"\nmasquerade = true\n'
                     f"mark = {alloc.deposit(i + 1, MASK):#x}\n")
            if check:
                text += (f'priority = 1\ncheck = ["icmp:{self.lab.SERVER}"]\n' if iface in real
                         else "priority = 2\n")
        return text

    def sh(self, script: str, host: str = "router", timeout: float = 600) -> None:
        """Run a shell script inside a host's namespace (one `ip netns exec`)."""
        self.lab.exec(host, ["sh", "-s"], input=script, timeout=timeout)

    # -- install / remove -----------------------------------------------------------------------
    def install(self, setup: str, n: int) -> None:
        """Install a set-up for n uplinks (removing the one in place first); flush conntrack."""
        self.remove()
        getattr(self, f"_install_{setup}")(n)
        self.setup, self.n = setup, n
        self.flush_conntrack()

    def remove(self) -> None:
        if self.setup is not None:
            getattr(self, f"_remove_{self.setup}")(self.n)
            self.setup = None
        self.flush_conntrack()

    def flush_conntrack(self) -> None:
        self.lab.exec("router", ["conntrack", "-F"], check=False)

    def _install_base(self, n: int) -> None:
        real = " ".join(f'"{self.lab.iface(k)}"' for k in self.lab.ks)
        self.lab.exec("router", ["nft", "-f", "-"], input=(
            "table ip bench_base {\n chain post {\n"
            "  type nat hook postrouting priority srcnat; policy accept;\n"
            f"  oifname {{ {real} }} masquerade\n }}\n}}\n"))

    def _remove_base(self, n: int) -> None:
        self.lab.exec("router", ["nft", "delete", "table", "ip", "bench_base"])

    def _install_recipe(self, n: int) -> None:
        """The recipe's rules, loaded fast (iptables-restore, ip -batch): same end state as
        the recipe's command-by-command installation, which `recipe_commands` times."""
        ifaces = self.ifaces(n)
        rules = ["*mangle"]
        for chain, flag in (("FORWARD", "-i"), ("INPUT", "-i"), ("POSTROUTING", "-o")):
            rules += [f"-A {chain} -m conntrack --ctstate NEW {flag} {ifc} -j CONNMARK "
                      f"--set-mark {i + 1}" for i, ifc in enumerate(ifaces)]
        rules += [f"-A PREROUTING -i lan0 ! -d {LAN_NET} -j CONNMARK --restore-mark",
                  f"-A OUTPUT ! -d {LAN_NET} -j CONNMARK --restore-mark", "COMMIT", "*nat"]
        rules += [f"-A POSTROUTING -o {ifc} -j MASQUERADE" for ifc in ifaces]
        rules += ["COMMIT", ""]
        self.lab.exec("router", ["iptables-restore"], input="\n".join(rules))
        batch = []
        for i, ifc in enumerate(ifaces):
            batch += [f"route add default dev {ifc} table {RECIPE_TABLE + i}",
                      f"rule add fwmark {i + 1} table {RECIPE_TABLE + i}"]
        self.lab.exec("router", ["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n",
                      check=False)  # an uplink that is down has no route yet, as with ip-up

    def _remove_recipe(self, n: int) -> None:
        for t in ("mangle", "nat", "filter"):
            self.lab.exec("router", ["nft", "delete", "table", "ip", t], check=False)
        batch = []
        for i in range(n):
            batch += [f"rule del fwmark {i + 1} table {RECIPE_TABLE + i}",
                      f"route flush table {RECIPE_TABLE + i}"]
        self.lab.exec("router", ["ip", "-batch", "-"], input="\n".join(batch) + "\n",
                      check=False)

    def recipe_commands(self, n: int, ifaces: list[str] | None = None) -> str:
        """The recipe as the shell runs it: ferm's iptables commands, then each uplink's ip-up
        script (`ip rule del`, `ip route flush`, `ip route add`, `ip rule add`)."""
        ifaces = ifaces or self.ifaces(n)
        cmds = []
        for chain, flag in (("FORWARD", "-i"), ("INPUT", "-i"), ("POSTROUTING", "-o")):
            cmds += [f"iptables -t mangle -A {chain} -m conntrack --ctstate NEW {flag} {ifc} "
                     f"-j CONNMARK --set-mark {i + 1}" for i, ifc in enumerate(ifaces)]
        cmds += [f"iptables -t mangle -A PREROUTING -i lan0 ! -d {LAN_NET} "
                 "-j CONNMARK --restore-mark",
                 f"iptables -t mangle -A OUTPUT ! -d {LAN_NET} -j CONNMARK --restore-mark"]
        cmds += [f"iptables -t nat -A POSTROUTING -o {ifc} -j MASQUERADE" for ifc in ifaces]
        for i, ifc in enumerate(ifaces):
            t = RECIPE_TABLE + i
            cmds += [f"ip rule del lookup {t} 2>/dev/null || true",
                     f"ip route flush table {t} 2>/dev/null || true",
                     f"ip route add default dev {ifc} table {t}",
                     f"ip rule add fwmark {i + 1} table {t}"]
        return "\n".join(cmds) + "\n"

    def _install_connpin(self, n: int) -> None:
        self.lab.write_config(self.connpin_config(n))
        self.lab.connpin("apply")

    def _remove_connpin(self, n: int) -> None:
        self.lab.connpin("remove")

    def _install_checked(self, n: int) -> None:
        self.lab.write_config(self.connpin_config(n, check=True))
        self.lab.connpin("apply")

    def _remove_checked(self, n: int) -> None:
        self.lab.connpin("remove")

    def _install_linear(self, n: int) -> None:
        """connpin's ruleset, then its tree replaced by the old layout: one fwmark rule per
        uplink at P+2 (in uplink order, so the real uplink's is in the middle)."""
        self._install_connpin(n)
        rules = json.loads(self.lab.exec("router", ["ip", "-j", "-4", "rule", "show"]).stdout)
        tree = [r["priority"] for r in rules if PRIO + 2 <= r["priority"] < PRIO + RULE_BAND - 2]
        batch = [f"rule del priority {p}" for p in tree]
        batch += [f"rule add priority {PRIO + 2} fwmark {alloc.deposit(i + 1, MASK):#x}/{MASK:#x}"
                  f" table {1000 + i}" for i in range(n)]
        self.lab.exec("router", ["ip", "-batch", "-"], input="\n".join(batch) + "\n")

    def _remove_linear(self, n: int) -> None:
        """The linear rules first: connpin refuses to touch rules it did not install."""
        self.lab.exec("router", ["ip", "-batch", "-"], input="".join(
            f"rule del priority {PRIO + 2} fwmark {alloc.deposit(i + 1, MASK):#x}/{MASK:#x}\n"
            for i in range(n)))
        self._remove_connpin(n)

    # -- traffic --------------------------------------------------------------------------------
    def start(self, host: str, argv: list[str]) -> subprocess.Popen:
        """A long-running process inside a host (stopped when the bench ends)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.lab.ns(host), *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
        self._procs.append(p)
        return p

    def iperf_server(self) -> None:
        p = self.start("net", ["iperf3", "-s", "-B", Lab.SERVER, "-p", "5201"])
        wait_for(lambda: self.lab.exec("net", ["ss", "-Hltn", "sport", "= :5201"]).stdout.strip()
                 or p.poll() is not None, 5.0, "iperf3 server")
        if p.poll() is not None:
            raise RuntimeError(f"iperf3 server exited: {p.stderr.read().decode()}")

    def iperf(self, *args: str, seconds: float) -> dict:
        """Run the iperf3 client in the LAN host against the internet host; its JSON report."""
        for attempt in range(3):
            p = self.lab.exec("lan", ["iperf3", "-c", Lab.SERVER, "-p", "5201", "-J",
                                      "-t", str(seconds), *args], check=False,
                              timeout=seconds + 30)
            try:
                doc = json.loads(p.stdout)
            except json.JSONDecodeError:
                doc = {"error": p.stderr or p.stdout}
            if "error" not in doc:
                return doc
            time.sleep(0.2 * (attempt + 1))  # server busy with the previous test's teardown
        raise RuntimeError(f"iperf3 {' '.join(args)}: {doc['error']}")

    def udp(self, seconds: float, size: int = 64) -> tuple[float, float]:
        """Small UDP datagrams as fast as one sender can: (datagrams/s that reached the host,
        sender CPU microseconds per datagram).

        The second is the steadier figure on a busy machine: the forwarding through the router
        (and every veth hop) runs in softirq in the sender's context and is charged to it, so
        CPU per datagram measures the work per packet whatever share of the CPU we got.
        """
        end = self.iperf("-u", "-b", "0", "-l", str(size), seconds=seconds)["end"]
        s, cpu = end["sum"], end["cpu_utilization_percent"]["host_total"]
        return ((s["packets"] - s["lost_packets"]) / s["seconds"],
                cpu / 100 * s["seconds"] / s["packets"] * 1e6)

    def tcp_bps(self, seconds: float) -> float:
        return self.iperf(seconds=seconds)["end"]["sum_received"]["bits_per_second"]

    def conn_rate(self, seconds: float, port: int = 5202) -> tuple[float, float]:
        """New TCP connections from the LAN host, one after the other (connect, then reset):
        (connections/s, client CPU microseconds per connection; the handshake's forwarding
        runs in softirq in the client's context, see `udp`)."""
        out = self.lab.exec("lan", [sys.executable, "-c", CONNECT_LOOP, Lab.SERVER, str(port),
                                    str(seconds)], timeout=seconds + 30).stdout.split()
        return float(out[0]), float(out[1])

    def accept_server(self, port: int = 5202) -> None:
        self.start("net", [sys.executable, "-c", ACCEPT_LOOP, Lab.SERVER, str(port)])
        wait_for(lambda: self.lab.exec("net", ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip(),
                 5.0, "accept server")


CONNECT_LOOP = r"""
import resource, socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
r0 = resource.getrusage(resource.RUSAGE_SELF)
linger = struct.pack("ii", 1, 0)
n, fail, t0 = 0, 0, time.monotonic()
end = t0 + seconds
while True:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        n += 1
    except OSError:
        fail += 1
    s.close()
    if time.monotonic() >= end:
        break
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(n / (time.monotonic() - t0), cpu / max(n, 1) * 1e6)
"""

ACCEPT_LOOP = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
"""


# -- set-ups compared at several numbers of uplinks ---------------------------------------------
#: (metric, set-up, uplinks) -> the measured values, one per repetition
Data = dict[tuple[str, str, int], list[float]]


def sweep(args: argparse.Namespace, start: Callable[[Bench], None],
          measure: Callable[[Bench], dict[str, float]],
          offset: int = 0) -> tuple[Data, Sequence[int], int]:
    """Every set-up at each number of uplinks (2 and 64 with --quick), `reps` times, interleaved
    with a rotating order (`offset` shifts it); `start` runs once in the lab first, `measure`
    returns {metric: value} for the set-up in place. Returns (data, sizes, reps)."""
    reps = 1 if args.quick else 3
    sizes = (2, 64) if args.quick else UPLINKS
    data: Data = {}
    with Bench(max_uplinks=max(sizes)) as b:
        start(b)
        for rep in range(reps):
            for n in sizes:
                for setup in rotate(SETUPS, rep + n + offset):
                    with section(f"rep {rep + 1}/{reps}: {n} uplinks, {setup}"):
                        b.install(setup, n)
                        for metric, value in measure(b).items():
                            data.setdefault((metric, setup, n), []).append(value)
        b.remove()
    return data, sizes, reps


def ratio_report(out: Path, name: str, data: Data, sizes: Sequence[int],
                 metrics: dict[str, tuple[str, str, bool]], intro: str,
                 shown: Callable[[float, str], str] | None = None) -> None:
    """Per metric (title, unit, higher is better): a table and a plot of each set-up relative to
    routing + masquerade at the same number of uplinks; then NAME.csv and NAME.md."""
    shown = shown or (lambda med, unit: f"{med:.1f} {unit}")
    rows, md = [], [intro]
    for metric, (title, unit, better) in metrics.items():
        trows, series = [], {}
        for n in sizes:
            base = summary(data[(metric, "base", n)])[0]
            for setup in SETUPS:
                vals = data[(metric, setup, n)]
                med, lo, hi = summary(vals)
                ratio = med / base if better else base / med
                lo_r, hi_r = (lo / base, hi / base) if better else (base / hi, base / lo)
                rows.append([metric, setup, n, len(vals), f"{med:.4g}", f"{lo:.4g}",
                             f"{hi:.4g}", f"{ratio:.3f}"])
                trows.append([n, LABELS[setup], shown(med, unit), spread(vals), f"{ratio:.2f}"])
                if setup != "base":
                    series.setdefault(LABELS[setup], []).append((n, ratio, lo_r, hi_r))
        text = table(["uplinks", "set-up", title, "spread", "ratio to base"], trows)
        print(f"\n{title}\n{text}")
        md.append(f"### {title}\n\n{text}\n![{metric}]({name}_{metric}.png)\n")
        plot(out, f"{name}_{metric}", title, "ratio to routing + masquerade", series)
    write_csv(out, name, ["metric", "setup", "uplinks", "reps", "median", "min", "max",
                          "ratio_to_base"], rows)
    write_md(out, name, "\n".join(md))


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout}s")
        time.sleep(0.02)


def stop(p: subprocess.Popen) -> None:
    """Stop a process we started (its own session: the group is ours alone)."""
    if p.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(3)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rotate(items: Sequence[str], k: int) -> list[str]:
    """Interleave: each repetition starts with a different set-up."""
    k %= len(items)
    return [*items[k:], *items[:k]]


@contextmanager
def section(title: str) -> Any:
    print(f"\n== {title}", flush=True)
    t0 = time.monotonic()
    yield
    print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)


def need(*tools: str) -> None:
    missing = [t for t in tools if not kernel_tools.exists(t)]
    if missing:
        sys.exit(f"missing tools: {' '.join(missing)} (`make bench` installs them)")
