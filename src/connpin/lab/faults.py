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
    jitter(lab, k, 100)       ISP k delays what it forwards towards the internet host by
                              uniform(0, 100) ms per packet (mean 50 ms; reordering included):
                              netem where the kernel has sch_netem, else the userspace NFQUEUE
                              delay line `lab.delay` (how="netem"/"nfqueue" forces one;
                              `netem_missing` says why there is no netem)
    clear(lab, k)             no fault, no jitter

Each nft call replaces ISP k's fault table in one nft transaction. Jitter is a netem qdisc on
ISP k's up0, or a queue rule with bypass in the forward hook (nft table `inet jitter`, or
iptables-nft's NFQUEUE where nft has no `queue`: this kernel has no nft_queue) feeding a delay
line process in ISP k's namespace; `clear_jitter` removes either. Only the lab's public API
(`Lab.exec`, `Lab.ns`, `Lab.workdir`) is used.
"""

from __future__ import annotations

import subprocess
import weakref
from dataclasses import dataclass

from connpin.lab import delay
from connpin.lab.core import Lab

TABLE = "faults"
JITTER_TABLE = "jitter"


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
    """Remove ISP k's faults, jitter included."""
    lab.exec(f"isp{k}", ["nft", "-f", "-"],
             input=f"table inet {TABLE}\ndelete table inet {TABLE}\n")
    clear_jitter(lab, k)


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
    lab.exec(f"isp{k}", ["tc", "qdisc", "del", "dev", "up0", "root"], check=False)
    return None


@dataclass
class _Jitter:
    how: str  # "netem" | "nft" | "iptables-nft": what holds the packets / what queues them
    proc: subprocess.Popen[str] | None = None


#: the jitter this module put on each lab's ISPs, so that `clear` removes exactly that
_jitters: weakref.WeakKeyDictionary[Lab, dict[int, _Jitter]] = weakref.WeakKeyDictionary()
_QUEUE_RULE = ("-o", "up0", "-j", "NFQUEUE", "--queue-num", str(delay.QUEUE), "--queue-bypass")


def jitter(lab: Lab, k: int, ms: float, how: str = "auto", delay_ms: float = 0.0) -> str:
    """ISP k delays each packet it forwards to the internet host by delay_ms + uniform(0, ms)
    ms (so each round trip gets up to `ms` of jitter), replacing any jitter it had. Returns
    how, for reports: "netem" (`delay d+ms/2 ms/2` on up0), or "nfqueue via nft" / "nfqueue
    via iptables-nft" (the userspace delay line `lab.delay` behind a queue-with-bypass rule in
    the forward hook: nft's `queue` where the kernel has nft_queue, else iptables' NFQUEUE
    target through xt compat). how="auto": netem where the kernel has it, else nfqueue."""
    if how not in ("auto", "netem", "nfqueue"):
        raise ValueError(f"how {how!r} is not auto, netem or nfqueue")
    clear_jitter(lab, k)
    if how == "auto":
        how = "netem" if netem_missing(lab, k) is None else "nfqueue"
    if how == "netem":
        half = f"{ms / 2:g}ms"
        lab.exec(f"isp{k}", ["tc", "qdisc", "replace", "dev", "up0", "root", "netem", "delay",
                             f"{delay_ms + ms / 2:g}ms", half])
        _jitters.setdefault(lab, {})[k] = _Jitter("netem")
        return "netem"
    proc = delay.start(lab.ns(f"isp{k}"), delay_ms=delay_ms, jitter_ms=ms,
                       log=lab.workdir / f"delay-isp{k}.log")
    try:
        via = _queue_rule(lab, k)
    except BaseException:
        delay.stop(proc)
        raise
    _jitters.setdefault(lab, {})[k] = _Jitter(via, proc)
    return f"nfqueue via {via}"


def _queue_rule(lab: Lab, k: int) -> str:
    """Send what ISP k forwards out of up0 to the delay line's queue, with bypass; nft first."""
    r = lab.exec(f"isp{k}", ["nft", "-f", "-"], check=False, input=(
        f"table inet {JITTER_TABLE} {{\n  chain forward {{\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f'    oifname "up0" queue num {delay.QUEUE} bypass\n  }}\n}}\n'))
    if r.returncode == 0:
        return "nft"
    for tool in ("iptables-nft", *(["ip6tables-nft"] if lab.ipv6 else [])):
        lab.exec(f"isp{k}", [tool, "-w", "-I", "FORWARD", *_QUEUE_RULE])
    return "iptables-nft"


def clear_jitter(lab: Lab, k: int) -> str:
    """Remove the jitter `jitter` put on ISP k (nothing if none); the delay line's last words
    (its figures) for nfqueue, else ""."""
    j = _jitters.get(lab, {}).pop(k, None)
    if j is None:
        return ""
    if j.how == "netem":
        lab.exec(f"isp{k}", ["tc", "qdisc", "del", "dev", "up0", "root"], check=False)
        return ""
    if j.how == "nft":
        lab.exec(f"isp{k}", ["nft", "delete", "table", "inet", JITTER_TABLE], check=False)
    else:
        for tool in ("iptables-nft", *(["ip6tables-nft"] if lab.ipv6 else [])):
            lab.exec(f"isp{k}", [tool, "-w", "-D", "FORWARD", *_QUEUE_RULE], check=False)
    return delay.stop(j.proc) if j.proc is not None else ""


def jittered(lab: Lab, k: int) -> str | None:
    """How ISP k's jitter is made ("netem", "nft", "iptables-nft"), None without jitter."""
    j = _jitters.get(lab, {}).get(k)
    return None if j is None else j.how


def delay_line(lab: Lab, k: int) -> subprocess.Popen[str] | None:
    """The delay line process behind ISP k's nfqueue jitter (None: none), e.g. to kill it."""
    j = _jitters.get(lab, {}).get(k)
    return None if j is None else j.proc


def dropped(lab: Lab, k: int) -> int:
    """Packets ISP k's fault rules have dropped (0 without a fault)."""
    out = lab.exec(f"isp{k}", ["nft", "list", "table", "inet", TABLE], check=False).stdout
    words = out.split()
    return sum(int(nxt) for word, nxt in zip(words, words[1:], strict=False)
               if word == "packets")
