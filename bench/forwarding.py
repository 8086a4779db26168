"""Forwarding cost per packet: small-packet UDP datagrams/s and TCP throughput from the LAN host
through the router to the internet host, for each set-up at 2, 16, 64 and 256 uplinks, as a
ratio to routing + masquerade alone (same run, interleaved, median of the repetitions)."""

from __future__ import annotations

import _common as C

NAME = "forwarding"
METRICS = {
    "udp_pps": ("UDP 64-byte datagrams/s", "pps"),
    "udp_cpu": ("UDP sender CPU per datagram (router path included)", "µs"),
    "tcp_bps": ("TCP throughput", "bit/s"),
}
HIGHER_IS_BETTER = {"udp_pps": True, "udp_cpu": False, "tcp_bps": True}


def main() -> None:
    args = C.parse_args(__doc__)
    C.need("iperf3", "iptables", "conntrack")
    reps = 1 if args.quick else 3
    seconds = 1
    sizes = (2, 64) if args.quick else C.UPLINKS
    data: dict[tuple[str, str, int], list[float]] = {}
    with C.Bench(max_uplinks=max(sizes)) as b:
        b.iperf_server()
        for rep in range(reps):
            for n in sizes:
                for setup in C.rotate(C.SETUPS, rep + n):
                    with C.section(f"rep {rep + 1}/{reps}: {n} uplinks, {setup}"):
                        b.install(setup, n)
                        pps, cpu = b.udp(seconds)
                        data.setdefault(("udp_pps", setup, n), []).append(pps)
                        data.setdefault(("udp_cpu", setup, n), []).append(cpu)
                        data.setdefault(("tcp_bps", setup, n), []).append(b.tcp_bps(seconds))
        b.remove()
    report(args.out, data, sizes, reps)


def report(out, data, sizes, reps) -> None:
    rows, md = [], [f"## Forwarding cost per packet\n\nLAN host -> router -> internet host, "
                    f"iperf3, {reps} repetition(s) of 1 s each, interleaved; median "
                    "(± half the range). Ratio = throughput relative to routing + masquerade "
                    "at the same number of uplinks (1.00 = no cost; for CPU per datagram: "
                    "base CPU / set-up CPU). CPU per datagram is the steadier figure on a busy "
                    "machine: the forwarding runs in softirq in the sender's context.\n"]
    for metric, (title, unit) in METRICS.items():
        trows, series = [], {}
        for n in sizes:
            base = C.summary(data[(metric, "base", n)])[0]
            for setup in C.SETUPS:
                vals = data[(metric, setup, n)]
                med, lo, hi = C.summary(vals)
                better = HIGHER_IS_BETTER[metric]
                ratio = med / base if better else base / med
                lo_r, hi_r = (lo / base, hi / base) if better else (base / hi, base / lo)
                rows.append([metric, setup, n, len(vals), f"{med:.4g}", f"{lo:.4g}", f"{hi:.4g}",
                             f"{ratio:.3f}"])
                shown = f"{med:.2f} {unit}" if unit == "µs" else C.fmt(med, unit)
                trows.append([n, C.LABELS[setup], shown, C.spread(vals),
                              f"{ratio:.2f}"])
                if setup != "base":
                    series.setdefault(C.LABELS[setup], []).append((n, ratio, lo_r, hi_r))
        text = C.table(["uplinks", "set-up", title, "spread", "ratio to base"], trows)
        print(f"\n{title}\n{text}")
        md.append(f"### {title}\n\n{text}\n![{metric}]({NAME}_{metric}.png)\n")
        C.plot(out, f"{NAME}_{metric}", title, "ratio to routing + masquerade", series)
    C.write_csv(out, NAME, ["metric", "setup", "uplinks", "reps", "median", "min", "max",
                            "ratio_to_base"], rows)
    C.write_md(out, NAME, "\n".join(md))


if __name__ == "__main__":
    main()
