"""Changes under load: while a pinned flow and a stream of new connections go through the router,
re-apply the rules 20 times and count what escaped pinning, with nft counters on the router.

Two real ISPs; the pinned flow (UDP to port 9001) was opened while only ISP 2 was up, so it is
pinned to ppp1 while main's default route prefers ppp0. New flows (UDP to port 9002, a new
source port each) must each leave pinned. The other uplinks are spare interfaces.
  connpin: 20 `connpin apply`, alternating between the config and the config plus one uplink
           (so every apply replaces the nft table and lays the rule tree out anew);
  recipe:  20 re-installations command by command (flush, then every iptables command and each
           uplink's ip-up script), as the recipe's ferm/ip-up scripts do.
Counted: packets of the pinned flow that left by another uplink (escaped) or not at all
(dropped), and new connections that left without a conntrack mark (unpinned)."""

from __future__ import annotations

import json
import sys
import time

import _common as C

NAME = "reapply"
APPLIES = 20

WATCH = """
table inet bench_watch {
  counter pinned_sent { }
  counter pinned_ok { }
  counter pinned_escaped { }
  counter new_sent { }
  counter new_unpinned { }
  chain pre {
    type filter hook prerouting priority -100; policy accept;
    iifname "lan0" udp dport 9001 counter name pinned_sent
    iifname "lan0" udp dport 9002 ct state new counter name new_sent
  }
  chain post {
    type filter hook postrouting priority 200; policy accept;
    udp dport 9001 oifname "ppp1" counter name pinned_ok
    udp dport 9001 oifname != "ppp1" counter name pinned_escaped
    udp dport 9002 ct state new ct mark 0 counter name new_unpinned
  }
}
"""

# In the LAN host: one long-lived flow to 9001, and a new flow to 9002 every few packets.
TRAFFIC = r"""
import signal, socket, sys, time
host = sys.argv[1]
pinned = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not connected: the server's
pinned.bind(("0.0.0.0", 0))  # port unreachable replies must not end the flow
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
i = 0
while True:
    pinned.sendto(b"p", (host, 9001))
    i += 1
    if i % 4 == 0:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"n", (host, 9002))
        s.close()
    time.sleep(0.0005)
"""


def counters(b: C.Bench) -> dict[str, int]:
    doc = json.loads(b.lab.exec("router", ["nft", "-j", "list", "counters", "table", "inet",
                                           "bench_watch"]).stdout)
    return {c["counter"]["name"]: c["counter"]["packets"] for c in doc["nftables"]
            if "counter" in c}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    d = {k: after[k] - before.get(k, 0) for k in after}
    d["pinned_dropped"] = d["pinned_sent"] - d["pinned_ok"] - d["pinned_escaped"]
    return d


def run_setup(b: C.Bench, setup: str, n: int, applies: int) -> dict[str, float]:
    b.lab.uplink_down(1)
    b.install(setup, n)
    b.lab.exec("router", ["nft", "-f", "-"], input=WATCH)
    traffic = b.start("lan", [sys.executable, "-c", TRAFFIC, C.Lab.SERVER])
    try:
        C.wait_for(lambda: counters(b)["pinned_ok"] > 20, 5.0, "pinned flow")
        b.lab.uplink_up(1)  # main now prefers ppp0; the flow stays pinned to ppp1
        if setup == "connpin":  # what the ip-up hook does
            b.lab.connpin("apply")
        else:
            i = b.ifaces(n).index("ppp0")
            t = C.RECIPE_TABLE + i
            b.sh(f"ip route add default dev ppp0 table {t}\nip rule add fwmark {i + 1} table {t}\n")
        C.wait_for(lambda: counters(b)["new_sent"] > 20, 5.0, "new flows")
        before = counters(b)
        time.sleep(1.0)
        steady = delta(counters(b), before)
        before = counters(b)
        t0 = time.monotonic()
        for i in range(applies):
            if setup == "connpin":
                extra = [b.spares[-1]] if i % 2 == 0 else None
                b.lab.write_config(b.connpin_config(n, extra=extra))
                b.lab.connpin("apply")
            else:
                b.sh("iptables -t mangle -F\niptables -t nat -F\n" + b.recipe_commands(n))
        seconds = time.monotonic() - t0
        time.sleep(0.2)  # let the last packets through
        during = delta(counters(b), before)
    finally:
        C.stop(traffic)
        b.lab.exec("router", ["nft", "delete", "table", "inet", "bench_watch"], check=False)
        if setup == "connpin":
            b.lab.write_config(b.connpin_config(n))
    return {"seconds": seconds, **{f"steady_{k}": v for k, v in steady.items()},
            **during}


def main() -> None:
    args = C.parse_args(__doc__)
    C.need("iptables", "conntrack")
    sizes = (16,) if args.quick else (16, 64)
    applies = 4 if args.quick else APPLIES
    results = []
    with C.Bench(real=2, max_uplinks=max(sizes) + 1) as b:
        for n in sizes:
            for setup in ("recipe", "connpin"):
                with C.section(f"{n} uplinks, {setup}: {applies} re-applies under load"):
                    results.append((n, setup, run_setup(b, setup, n, applies)))
        b.remove()
    headers = ["uplinks", "set-up", "re-applies", "time", "pinned pkts", "escaped",
               "dropped", "new conns", "unpinned", "steady escaped+unpinned"]
    rows, csv_rows = [], []
    for n, setup, r in results:
        rows.append([n, C.LABELS[setup], applies, f"{r['seconds']:.1f} s", r["pinned_sent"],
                     r["pinned_escaped"], r["pinned_dropped"], r["new_sent"],
                     r["new_unpinned"], r["steady_pinned_escaped"] + r["steady_new_unpinned"]])
        csv_rows.append([n, setup, applies, f"{r['seconds']:.3f}", r["pinned_sent"],
                         r["pinned_escaped"], r["pinned_dropped"], r["new_sent"],
                         r["new_unpinned"], r["steady_pinned_escaped"],
                         r["steady_new_unpinned"]])
    text = C.table(headers, rows)
    print(f"\nChanges under load\n{text}")
    C.write_csv(args.out, NAME, ["uplinks", "setup", "applies", "seconds", "pinned_sent",
                                 "pinned_escaped", "pinned_dropped", "new_sent", "new_unpinned",
                                 "steady_pinned_escaped", "steady_new_unpinned"], csv_rows)
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for n, setup, r in results:
        v = r["pinned_escaped"] + r["new_unpinned"] + 0.5
        series.setdefault(C.LABELS[setup], []).append((n, v, v, v))
    C.plot(args.out, NAME, "escapes during re-applies (+0.5 so zero shows on a log axis)",
           "escaped packets + unpinned connections", series, ref=None, logy=True)
    C.write_md(args.out, NAME, (
        "## Changes under load\n\n"
        f"{applies} re-applies while a pinned UDP flow (~2000 packets/s, pinned to the backup "
        "uplink) and new UDP flows (~500/s) go through the router. connpin alternates between "
        "the config and the config plus one uplink, so each apply replaces the nft table and "
        "re-lays the rule tree; the recipe is re-installed command by command. *escaped*: "
        "packets of the pinned flow that left by another uplink; *dropped*: that did not leave "
        "(e.g. refused by the unreachable rule); *unpinned*: new connections that left without "
        "a conntrack mark. *steady*: the same counts over 1 s without changes (should be 0).\n\n"
        f"{text}\n![{NAME}]({NAME}.png)\n"))


if __name__ == "__main__":
    main()
