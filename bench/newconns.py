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
SECONDS = 1.0


def measure(b: C.Bench) -> dict[str, float]:
    rate, cpu = b.conn_rate(SECONDS)
    return {"conn_rate": rate, "conn_cpu": cpu}


def main() -> None:
    args = C.parse_args(__doc__)
    C.need("iptables", "conntrack")
    data, sizes, reps = C.sweep(args, C.Bench.accept_server, measure, offset=1)
    C.ratio_report(
        args.out, NAME, data, sizes, METRICS,
        "## New connections per second\n\nLAN host -> router -> internet host, one TCP "
        f"connection after the other for {SECONDS:.0f} s (connect, reset), {reps} "
        "repetition(s), interleaved; median (± half the range). Ratio relative to routing + "
        "masquerade at the same number of uplinks (1.00 = no cost; for CPU: base CPU / set-up "
        "CPU). The client is Python: its own per-connection work dilutes the router's share.\n")


if __name__ == "__main__":
    main()
