"""New connections per second through the router: many short TCP connections from the LAN host
to the internet host (connect, then reset), for each set-up at 2, 16, 64 and 256 uplinks, as a
ratio to routing + masquerade alone (same run, interleaved, median of the repetitions)."""

from __future__ import annotations

import _common as C

NAME = "newconns"
METRICS = {
    "conn_rate": ("new TCP connections/s", "conn/s", True),
    "conn_cpu": ("client CPU per connection (router path included)", "µs", False),
}


def main() -> None:
    args = C.parse_args(__doc__)
    C.need("iptables", "conntrack")
    reps = 1 if args.quick else 3
    seconds = 1.0
    sizes = (2, 64) if args.quick else C.UPLINKS
    data: dict[tuple[str, str, int], list[float]] = {}
    with C.Bench(max_uplinks=max(sizes)) as b:
        b.accept_server()
        for rep in range(reps):
            for n in sizes:
                for setup in C.rotate(C.SETUPS, rep + n + 1):
                    with C.section(f"rep {rep + 1}/{reps}: {n} uplinks, {setup}"):
                        b.install(setup, n)
                        rate, cpu = b.conn_rate(seconds)
                        data.setdefault(("conn_rate", setup, n), []).append(rate)
                        data.setdefault(("conn_cpu", setup, n), []).append(cpu)
        b.remove()
    md = ["## New connections per second\n\nLAN host -> router -> internet host, one TCP "
          f"connection after the other for 1 s (connect, reset), {reps} repetition(s), "
          "interleaved; median (± half the range). Ratio relative to routing + masquerade at "
          "the same number of uplinks (1.00 = no cost; for CPU: base CPU / set-up CPU). The "
          "client is Python: its own per-connection work dilutes the router's share.\n"]
    rows = []
    for metric, (title, unit, better) in METRICS.items():
        trows, series = [], {}
        for n in sizes:
            base = C.summary(data[(metric, "base", n)])[0]
            for setup in C.SETUPS:
                vals = data[(metric, setup, n)]
                med, lo, hi = C.summary(vals)
                ratio = med / base if better else base / med
                lo_r, hi_r = (lo / base, hi / base) if better else (base / hi, base / lo)
                rows.append([metric, setup, n, len(vals), f"{med:.4g}", f"{lo:.4g}",
                             f"{hi:.4g}", f"{ratio:.3f}"])
                trows.append([n, C.LABELS[setup], f"{med:.1f} {unit}", C.spread(vals),
                              f"{ratio:.2f}"])
                if setup != "base":
                    series.setdefault(C.LABELS[setup], []).append((n, ratio, lo_r, hi_r))
        text = C.table(["uplinks", "set-up", title, "spread", "ratio to base"], trows)
        print(f"\n{title}\n{text}")
        md.append(f"### {title}\n\n{text}\n![{metric}]({NAME}_{metric}.png)\n")
        C.plot(args.out, f"{NAME}_{metric}", title, "ratio to routing + masquerade", series)
    C.write_csv(args.out, NAME, ["metric", "setup", "uplinks", "reps", "median", "min", "max",
                                 "ratio_to_base"], rows)
    C.write_md(args.out, NAME, "\n".join(md))


if __name__ == "__main__":
    main()
