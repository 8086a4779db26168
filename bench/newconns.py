"""New connections per second through the router: many short TCP connections from the LAN host
to the internet host (connect, then reset).

1. For each set-up at 2, 16, 64 and 256 uplinks, as a ratio to routing + masquerade alone (same
   run, interleaved, median of the repetitions).
2. The cost of connpin choosing (issue 14): 64 uplinks that all carry traffic (point-to-point
   veth pairs from the router into ISP 1, like the lab's PPP-like uplinks) and 16 [[class]]
   tables, against the same 64 uplinks without selection (the routing table chooses, connpin
   pins), and against main's multipath default route over the same 64 uplinks (hash of
   addresses and ports; connpin pins: spreading without connpin choosing), same lab,
   interleaved. No class matches the bench's port, so every new connection
   walks all 16 class rules, then the default class's map over the 64 uplinks (the worst case).
   Goal: within 5%.
"""

from __future__ import annotations

import json
import statistics

import _common as C
from connpin import alloc

NAME = "newconns"
METRICS = {
    "conn_rate": ("new TCP connections/s", "conn/s", True),
    "conn_cpu": ("client CPU per connection (router path included)", "µs", False),
}
SECONDS = 1.0
SELECT_UPLINKS = 64
SELECT_CLASSES = 16
SELECT_SETUPS = ("plain", "ecmp", "select", "select1")
SELECT_LABELS = {"plain": "64 uplinks, routing table chooses",
                 "ecmp": "the same, main's multipath route spreads (L4 hash)",
                 "select": f"64 uplinks, connpin chooses ({SELECT_CLASSES} classes)",
                 "select1": f"the same, 1 uplink in the best tier ({SELECT_CLASSES} classes)"}
PORT = 5202
SELECT_REPS = 20
SELECT_SECONDS = 1.0


def measure(b: C.Bench, seconds: float = SECONDS) -> dict[str, float]:
    rate, cpu = b.conn_rate(seconds)
    return {"conn_rate": rate, "conn_cpu": cpu}


# -- 2. selection ---------------------------------------------------------------------------------
class SelectBench(C.Bench):
    """One PPP-like ISP and `extra` more point-to-point uplinks from the router into it: veth
    pairs with ARP off and one MAC on both ends (as the lab's PPP-like uplinks), the router at
    100.64.1.(10 + i), ISP 1 at 100.64.1.1 (inside ISP 1's customer range, so the internet
    host's route back already covers them)."""

    def __init__(self, extra: int):
        super().__init__(real=1, max_uplinks=1)
        self.extra = extra
        self.links: list[str] = []

    def __enter__(self) -> SelectBench:
        super().__enter__()
        try:
            self._add_links()
        except BaseException:
            self.lab.destroy()
            raise
        return self

    def _add_links(self) -> None:
        isp_ns = self.lab.ns("isp1")
        router, isp = [], []
        for i in range(self.extra):
            name, mac = f"sel{i}", f"02:65:00:00:{i >> 8:02x}:{i & 255:02x}"
            addr = f"100.64.1.{10 + i}"
            router += [f"link add {name} address {mac} type veth peer name c{i} address {mac} "
                       f"netns {isp_ns}",
                       f"link set {name} arp off up",
                       f"addr add {addr}/32 peer 100.64.1.1 dev {name}"]
            isp += [f"link set c{i} arp off up",
                    f"addr add 100.64.1.1/32 peer {addr} dev c{i}"]
            self.links.append(name)
        self.lab.exec("router", ["ip", "-batch", "-"], input="\n".join(router) + "\n")
        self.lab.exec("isp1", ["ip", "-batch", "-"], input="\n".join(isp) + "\n")
        ks = [("router", n) for n in self.links]
        C.wait_for(lambda: all(s == "UP" for s in self._operstates(ks)), 10.0, "uplinks up")

    def _operstates(self, pairs: list[tuple[str, str]]) -> list[str]:
        links = json.loads(self.lab.exec("router", ["ip", "-j", "link", "show"]).stdout)
        state = {ln["ifname"]: ln.get("operstate") for ln in links}
        return [state.get(name, "") for _, name in pairs]

    def config(self, select: bool, tiers: bool = False) -> str:
        """All uplinks (the real one first) with explicit marks; with `select`, one tier,
        weight 1 each and SELECT_CLASSES classes on ports the bench does not use; with `tiers`
        too, the real uplink alone in the best tier (the rules' cost without the spreading)."""
        ifaces = [self.lab.iface(1), *self.links]
        text = f"[pinning]\nmark_mask = {C.MASK:#x}\nrule_priority = {C.PRIO}\n"
        for i, iface in enumerate(ifaces):
            text += (f'\n[[uplink]]\nname = "u{i}"\ninterface = "{iface}"\nmasquerade = true\n'
                     f"mark = {alloc.deposit(i + 1, C.MASK):#x}\n"
                     + (f"priority = {1 + (tiers and i > 0)}\nweight = 1\n" if select else ""))
        if select:
            for c in range(SELECT_CLASSES):
                members = ", ".join(f'"u{(c * 4 + j) % len(ifaces)}"' for j in range(4))
                text += (f'\n[[class]]\nname = "c{c}"\nuplinks = [{members}]\n'
                         f'protocol = "tcp"\ndport = {10000 + c}\n')
        return text

    def _install_plain(self, n: int) -> None:
        self.lab.write_config(self.config(False))
        self.lab.connpin("apply")

    def _install_select(self, n: int) -> None:
        self.lab.write_config(self.config(True))
        self.lab.connpin("apply")

    def _install_select1(self, n: int) -> None:
        self.lab.write_config(self.config(True, tiers=True))
        self.lab.connpin("apply")

    def _remove_plain(self, n: int) -> None:
        self.lab.connpin("remove")

    _remove_select = _remove_select1 = _remove_plain

    def tx_packets(self) -> dict[str, int]:
        links = json.loads(self.lab.exec("router", ["ip", "-j", "-s", "link", "show"]).stdout)
        return {ln["ifname"]: ln["stats64"]["tx"]["packets"] for ln in links
                if ln["ifname"] in self.links or ln["ifname"] == self.lab.iface(1)}


def selection(quick: bool) -> tuple[dict[tuple[str, str], list[float]], int, dict[str, int]]:
    """The set-ups in one lab: {(metric, setup): values}, the repetitions, and over how many
    uplinks the chosen connections left (proof that the choice spreads them).

    Each set-up is applied once by `connpin apply` and its nft table saved; the ip rules and
    routes of the three are the same (same uplinks, same marks), so the repetitions switch
    set-ups by loading the saved table again (one nft transaction, as connpin does), which
    keeps them seconds apart: drift in the machine's load then hits all of them alike."""
    reps = 2 if quick else SELECT_REPS
    data: dict[tuple[str, str], list[float]] = {}
    used: dict[str, int] = {}
    with SelectBench(SELECT_UPLINKS - 1) as b:
        b.accept_server(PORT)
        tables = {}
        for setup in ("plain", "select", "select1"):
            b.install(setup, SELECT_UPLINKS)
            tables[setup] = b.lab.exec("router", ["nft", "list", "table", "inet",
                                                  "connpin"]).stdout
        tables["ecmp"] = tables["plain"]
        b.lab.set_sysctl("router", "net.ipv4.fib_multipath_hash_policy", 1)
        hops = " ".join(f"nexthop dev {i}" for i in [b.lab.iface(1), *b.links])
        for rep in range(reps):
            for setup in C.rotate(SELECT_SETUPS, rep):
                b.lab.exec("router", ["nft", "-f", "-"], input=(
                    "table inet connpin\ndelete table inet connpin\n" + tables[setup]))
                b.lab.exec("router", ["ip", "-batch", "-"], check=False, input=(
                    f"route replace default metric 5 {hops}\n" if setup == "ecmp"
                    else "route del default metric 5\n"))
                b.flush_conntrack()
                before = b.tx_packets()
                for metric, value in measure(b, SELECT_SECONDS).items():
                    data.setdefault((metric, setup), []).append(value)
                after = b.tx_packets()
                used[setup] = max(used.get(setup, 0),
                                  sum(1 for k in after if after[k] - before[k] > 2))
            print(f"selection rep {rep + 1}/{reps} done", flush=True)
        b.remove()
    return data, reps, used


def selection_report(data: dict[tuple[str, str], list[float]], reps: int,
                     used: dict[str, int]) -> tuple[str, list[list[object]]]:
    rows, csv_rows = [], []
    for metric, (title, unit, better) in METRICS.items():
        base = statistics.median(data[(metric, "plain")])
        for setup in SELECT_SETUPS:
            vals = data[(metric, setup)]
            med = statistics.median(vals)
            ratio = med / base if better else base / med
            rows.append([title, SELECT_LABELS[setup], f"{med:.1f} {unit}", C.spread(vals),
                         f"{ratio:.3f}"])
            csv_rows.append([metric, setup, SELECT_UPLINKS, len(vals), f"{med:.4g}",
                             f"{min(vals):.4g}", f"{max(vals):.4g}", f"{ratio:.3f}"])
    text = C.table(["figure", "set-up", "median", "spread", "ratio to no selection"], rows)
    rate = (statistics.median(data[("conn_rate", "select")])
            / statistics.median(data[("conn_rate", "plain")]))
    cpu = (statistics.median(data[("conn_cpu", "plain")])
           / statistics.median(data[("conn_cpu", "select")]))
    ecmp_cpu = (statistics.median(data[("conn_cpu", "ecmp")])
                / statistics.median(data[("conn_cpu", "select")]))
    spread = ", ".join(f"{s}: {n}" for s, n in used.items())
    note = (f"Uplinks that carried connections ({spread}) of {SELECT_UPLINKS}. With selection / "
            f"without: new connections/s {rate:.3f}, CPU per connection (inverted) {cpu:.3f} "
            f"(goal: within 5%: {'met' if min(rate, cpu) >= 0.95 else 'NOT met'}; on a busy "
            "machine the rate swings with other work, the CPU per connection much less). "
            f"CPU per connection, multipath / choosing (both spread over {SELECT_UPLINKS} "
            f"uplinks; see docs/health.md \"Cost of choosing\"): {ecmp_cpu:.3f}.")
    print(f"\nselection cost\n{text}\n{note}")
    return ("### Cost of connpin choosing: 64 uplinks, 16 classes\n\n"
            f"The same lab: {SELECT_UPLINKS} point-to-point uplinks that all carry traffic; "
            "connpin with the routing table choosing (no weight, no class) against connpin "
            f"choosing (one tier, weight 1 each, {SELECT_CLASSES} [[class]] tables on other "
            "ports, so every connection walks all 16 class rules, then the default map), "
            f"{reps} repetition(s) of {SELECT_SECONDS:.0f} s, interleaved (each set-up applied "
            "once, then its saved nft table loaded again before each repetition); median (± "
            f"half the range).\n\n{text}\n{note}\n"), csv_rows


def main() -> None:
    args = C.parse_args(__doc__.split("\n\n")[0], lambda p: p.add_argument(
        "--select-only", action="store_true", help="only part 2 (the cost of choosing)"))
    C.need("iptables", "conntrack")
    if args.select_only:
        sdata, sreps, used = selection(args.quick)
        md, rows = selection_report(sdata, sreps, used)
        C.write_md(args.out, f"{NAME}_select", "## New connections per second\n\n" + md)
        return
    data, sizes, reps = C.sweep(args, C.Bench.accept_server, measure, offset=1)
    C.ratio_report(
        args.out, NAME, data, sizes, METRICS,
        "## New connections per second\n\nLAN host -> router -> internet host, one TCP "
        f"connection after the other for {SECONDS:.0f} s (connect, reset), {reps} "
        "repetition(s), interleaved; median (± half the range). Ratio relative to routing + "
        "masquerade at the same number of uplinks (1.00 = no cost; for CPU: base CPU / set-up "
        "CPU). The client is Python: its own per-connection work dilutes the router's share.\n")
    sdata, sreps, used = selection(args.quick)
    md, rows = selection_report(sdata, sreps, used)
    with (args.out / f"{NAME}.md").open("a") as f:
        f.write("\n" + md)
    C.write_csv(args.out, f"{NAME}_select", ["metric", "setup", "uplinks", "reps", "median",
                                             "min", "max", "ratio_to_plain"], rows)


if __name__ == "__main__":
    main()
