"""Forwarding cost per packet: small-packet UDP datagrams/s and TCP throughput from the LAN host
through the router to the internet host, for each set-up at 2, 16, 64 and 256 uplinks, as a
ratio to routing + masquerade alone (same run, interleaved, median of the repetitions)."""

from __future__ import annotations

import _common as C

NAME = "forwarding"
METRICS = {
    "udp_pps": ("UDP 64-byte datagrams/s", "pps", True),
    "udp_cpu": ("UDP sender CPU per datagram (router path included)", "µs", False),
    "tcp_bps": ("TCP throughput", "bit/s", True),
}
SECONDS = 1


def measure(b: C.Bench) -> dict[str, float]:
    pps, cpu = b.udp(SECONDS)
    return {"udp_pps": pps, "udp_cpu": cpu, "tcp_bps": b.tcp_bps(SECONDS)}


def main() -> None:
    args = C.parse_args(__doc__)
    C.need("iperf3", "iptables", "conntrack")
    data, sizes, reps = C.sweep(args, C.Bench.iperf_server, measure)
    C.ratio_report(
        args.out, NAME, data, sizes, METRICS,
        f"## Forwarding cost per packet\n\nLAN host -> router -> internet host, iperf3, {reps} "
        f"repetition(s) of {SECONDS} s each, interleaved; median (± half the range). Ratio = "
        "throughput relative to routing + masquerade at the same number of uplinks (1.00 = no "
        "cost; for CPU per datagram: base CPU / set-up CPU). CPU per datagram is the steadier "
        "figure on a busy machine: the forwarding runs in softirq in the sender's context.\n",
        shown=lambda med, unit: f"{med:.2f} {unit}" if unit == "µs" else C.fmt(med, unit))


if __name__ == "__main__":
    main()
