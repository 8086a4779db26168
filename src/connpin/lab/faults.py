"""Faults of an ISP in the lab, for health tracking: an ISP whose network is dead behind its
first hop while the link stays up (blackhole), one whose gateway answers nothing but ARP
(silent gateway), and random loss (nft `numgen random`), all in the ISP's namespace (table
`inet faults`; the router and its links are not touched).

    blackhole(lab, k)         forwarding through ISP k stops in both directions; the ISP itself
                              (the PPP peer / Ethernet gateway, ARP included) still answers
    silent_gateway(lab, k)    ISP k's gateway stops answering after the router's link: no IP
                              packet from the customer is forwarded or answered (not even a ping
                              of the gateway), but ARP still is (nft's inet tables never see
                              ARP), so on an Ethernet-like uplink the neighbour stays resolved
                              and the link looks perfectly fine
    loss(lab, k, 10)          ISP k drops 10% of the packets it forwards, each direction
    jitter(lab, k, 100)       ISP k delays what it sends towards the internet host by 0-2x50 ms
                              (netem: `netem_missing` says why not when the kernel has none)
    clear(lab, k)             no fault

Each nft call replaces ISP k's fault table in one nft transaction; jitter is a netem qdisc
on ISP k's up0 (`clear_jitter` removes it). Only the lab's public API
(`Lab.exec`) is used.
"""

from __future__ import annotations

from connpin.lab.core import Lab

TABLE = "faults"


def _apply(lab: Lab, k: int, rules: str, input_rules: str = "") -> None:
    ns_host = f"isp{k}"
    extra = ("  chain input {\n    type filter hook input priority -10; policy accept;\n"
             f"{input_rules}  }}\n") if input_rules else ""
    lab.exec(ns_host, ["nft", "-f", "-"], input=(
        f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n  chain forward {{\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f"{rules}  }}\n{extra}}}\n"))


def clear(lab: Lab, k: int) -> None:
    """Remove ISP k's faults."""
    lab.exec(f"isp{k}", ["nft", "-f", "-"],
             input=f"table inet {TABLE}\ndelete table inet {TABLE}\n")


def blackhole(lab: Lab, k: int) -> None:
    """ISP k forwards nothing (both directions); its own address still answers."""
    _apply(lab, k, "    counter drop\n")


def silent_gateway(lab: Lab, k: int) -> None:
    """ISP k forwards nothing and its gateway answers no IP packet from the customer link
    (ICMP, TCP, UDP: all dropped on input); ARP is untouched."""
    _apply(lab, k, "    counter drop\n", '    iifname "cust0" counter drop\n')


def loss(lab: Lab, k: int, percent: int, direction: str = "both") -> None:
    """ISP k drops `percent`% of forwarded packets at random: direction "both", "up" (from the
    customer) or "down" (towards it)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent {percent} is not in 0..100")
    match = {"both": "", "up": 'iifname "cust0" ', "down": 'oifname "cust0" '}[direction]
    _apply(lab, k, f"    {match}numgen random mod 100 < {percent} counter drop\n")


def netem_missing(lab: Lab, k: int) -> str | None:
    """None when netem works in ISP k's namespace (tried on its up0, then removed), else why
    not (e.g. a kernel without sch_netem: tc's own error)."""
    r = lab.exec(f"isp{k}", ["tc", "qdisc", "add", "dev", "up0", "root", "netem", "delay",
                             "1ms"], check=False)
    if r.returncode != 0:
        return (r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout) \
            else f"tc exited {r.returncode}"
    clear_jitter(lab, k)
    return None


def jitter(lab: Lab, k: int, ms: int) -> None:
    """ISP k delays the packets it sends to the internet host uniformly by 0..ms ms (netem
    `delay ms/2 ms/2` on up0, so each round trip gets up to `ms` of jitter). Raises LabError
    (from the command) when the kernel has no netem: check `netem_missing` first."""
    half = f"{ms / 2:g}ms"
    lab.exec(f"isp{k}", ["tc", "qdisc", "replace", "dev", "up0", "root", "netem", "delay",
                         half, half])


def clear_jitter(lab: Lab, k: int) -> None:
    lab.exec(f"isp{k}", ["tc", "qdisc", "del", "dev", "up0", "root"], check=False)


def dropped(lab: Lab, k: int) -> int:
    """Packets ISP k's fault rules have dropped (0 without a fault)."""
    out = lab.exec(f"isp{k}", ["nft", "list", "table", "inet", TABLE], check=False).stdout
    words = out.split()
    return sum(int(nxt) for word, nxt in zip(words, words[1:], strict=False)
               if word == "packets")
