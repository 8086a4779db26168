"""Desired uplinks -> connpin's iptables chains, as `iptables-restore --noflush` input. Pure;
golden-tested. Also the pure half of applying it: which lines of `iptables-save` are connpin's,
and the restore input that turns what is installed into what is wanted.

connpin owns the chains named CONNPIN-* in the mangle and nat tables (both families), hooked
from the built-in chains by a single jump each. Declaring an existing chain in a --noflush
restore flushes it, so the chains are rewritten as a whole; a table's section commits at once.

Per-packet cost does not grow with the number of uplinks: established packets see one
`--ctstate NEW` test and one masked `CONNMARK --restore-mark`; only a connection's first packet
walks the per-interface list (one rule per uplink, one jump to that uplink's chain).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from connpin.const import NEVER_PINNED6

if TYPE_CHECKING:
    from connpin.model import Config
    from connpin.values import UplinkState

PREFIX = "CONNPIN-"
HEADER = "# connpin iptables ruleset: generated, chains CONNPIN-* replaced on every apply.\n"
SECTION = {4: "# iptables-restore --noflush\n", 6: "# ip6tables-restore --noflush\n"}
TABLES = ("mangle", "nat")
#: ICMPv6 neighbour discovery, router solicitation/advertisement, redirect: never pinned.
ND_TYPES = (133, 134, 135, 136, 137)


def _hex(v: int) -> str:
    return f"{v:#x}"


def _skip6(chain: str) -> list[str]:
    """IPv6 packets connpin never pins nor re-routes leave its chain at once."""
    out = [f"-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in ND_TYPES]
    out.append(f"-A {chain} -s {NEVER_PINNED6[0]} -j RETURN")
    out += [f"-A {chain} -d {net} -j RETURN" for net in NEVER_PINNED6]
    return out


def script(config: Config, uplinks: Sequence[UplinkState], family: int) -> str:
    """The restore input for one family on a machine without any of connpin's chains."""
    mask = _hex(config.pinning.mark_mask)
    masks = f"--nfmask {mask} --ctmask {mask}"
    pins = [f"{PREFIX}PIN-{u.slot.index}" for u in uplinks]
    lines = ["*mangle"]
    lines += [f":{c} - [0:0]" for c in (f"{PREFIX}PRE", f"{PREFIX}OUT", f"{PREFIX}POST",
                                         f"{PREFIX}IN-NEW", f"{PREFIX}OUT-NEW", *pins)]
    lines += [f"-I {b} 1 -j {PREFIX}{c}"
              for b, c in (("PREROUTING", "PRE"), ("OUTPUT", "OUT"), ("POSTROUTING", "POST"))]
    skip = family == 6
    # arriving on an uplink: pin new connections to it; every packet gets its connection's mark
    lines += _skip6(f"{PREFIX}PRE") if skip else []
    lines.append(f"-A {PREFIX}PRE -m conntrack --ctstate NEW -j {PREFIX}IN-NEW")
    lines.append(f"-A {PREFIX}PRE -j CONNMARK --restore-mark {masks}")
    # the router's own packets: marked, and re-routed by the mangle table when the mark changed
    lines += _skip6(f"{PREFIX}OUT") if skip else []
    lines.append(f"-A {PREFIX}OUT -j CONNMARK --restore-mark {masks}")
    # first routed out of an uplink: pin the new connection to it (if not pinned yet)
    lines += _skip6(f"{PREFIX}POST") if skip else []
    lines.append(f"-A {PREFIX}POST -m conntrack --ctstate NEW -m connmark --mark 0x0/{mask} "
                 f"-j {PREFIX}OUT-NEW")
    for u, chain in zip(uplinks, pins, strict=True):
        lines.append(f"-A {PREFIX}IN-NEW -i {u.interface} -j {chain}")
    for u, chain in zip(uplinks, pins, strict=True):
        lines.append(f"-A {PREFIX}OUT-NEW -o {u.interface} -j {chain}")
    for u, chain in zip(uplinks, pins, strict=True):
        lines.append(f"-A {chain} -j CONNMARK --set-xmark {_hex(u.slot.mark)}/{mask}")
    lines.append("COMMIT")
    nat = _nat(uplinks, family)
    return "\n".join(lines + nat) + "\n"


def _nat(uplinks: Sequence[UplinkState], family: int) -> list[str]:
    out_rules, in_rules = [], []
    for u in uplinks:
        if (u.masquerade if family == 4 else u.masquerade6):
            out_rules.append(f"-A {PREFIX}NAT -o {u.interface} -j MASQUERADE")
        if family == 6:
            for inside, outside in u.nptv6:
                out_rules.append(f"-A {PREFIX}NAT -o {u.interface} -s {inside} "
                                 f"-j NETMAP --to {outside}")
                in_rules.append(f"-A {PREFIX}DNAT -i {u.interface} -d {outside} "
                                f"-j NETMAP --to {inside}")
    if not out_rules:
        return []
    lines = ["*nat", f":{PREFIX}NAT - [0:0]"] + ([f":{PREFIX}DNAT - [0:0]"] if in_rules else [])
    # appended: the admin's own NAT rules come first
    lines.append(f"-A POSTROUTING -j {PREFIX}NAT")
    if in_rules:
        lines.append(f"-A PREROUTING -j {PREFIX}DNAT")
    return lines + out_rules + in_rules + ["COMMIT"]


def render(config: Config, uplinks: Sequence[UplinkState], ipv6: bool = True) -> str:
    """Both families' restore input, as `plan` shows it."""
    out = HEADER + SECTION[4] + script(config, uplinks, 4)
    if ipv6:
        out += SECTION[6] + script(config, uplinks, 6)
    return out


def split(text: str | None) -> dict[int, str]:
    """render() output (or a listing) -> restore input per family."""
    out: dict[int, str] = {}
    if not text:
        return out
    family = None
    for line in text.splitlines(keepends=True):
        if line in SECTION.values():
            family = 4 if line == SECTION[4] else 6
            out[family] = ""
        elif family is not None and not line.startswith("#"):
            out[family] += line
    return out


def join(parts: dict[int, str]) -> str | None:
    """Per-family listings -> one text in render()'s shape; None when there is nothing."""
    if not any(parts.values()):
        return None
    return "".join(SECTION[f] + parts[f] for f in sorted(parts) if parts[f])


@dataclass
class Table:
    """connpin's part of one table: its chains, their rules, and the jumps into them."""

    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)  # "-A CONNPIN-X ..."
    jumps: list[tuple[str, str, bool]] = field(default_factory=list)  # (chain, spec, insert)


def parse(text: str) -> dict[str, Table]:
    """connpin's chains, rules and jumps in restore input or `iptables-save` output."""
    tables: dict[str, Table] = {}
    cur: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], Table())
        elif line == "COMMIT" or cur is None:
            cur = None if line == "COMMIT" else cur
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(PREFIX):
                cur.chains.append(name)
        else:
            words = line.split()
            if len(words) < 2 or words[0] not in ("-A", "-I"):
                continue
            chain = words[1]
            if chain.startswith(PREFIX):
                cur.rules.append(line)
            elif f"-j {PREFIX}" in line:
                insert = words[0] == "-I"
                rest = words[3:] if insert and len(words) > 2 and words[2].isdigit() else words[2:]
                cur.jumps.append((chain, " ".join(rest), insert))
    return {k: v for k, v in tables.items() if v.chains or v.rules or v.jumps}


def owned(save: str) -> str:
    """connpin's lines of one family's `iptables-save` output (empty: none), as a listing that
    is also valid restore input (rules appended, jumps appended in their order)."""
    out = []
    for name, t in sorted(parse(save).items()):
        out.append(f"*{name}")
        out += [f":{c} - [0:0]" for c in t.chains]
        out += [f"-A {c} {spec}" for c, spec, _ in t.jumps]
        out += t.rules
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def transaction(want: str | None, have: str) -> str:
    """Restore input (for --noflush) that turns connpin's part `have` (a listing) into `want`
    (restore input, None: nothing) and leaves every other chain and rule alone."""
    w = parse(want or "")
    h = parse(have)
    out: list[str] = []
    for name in [t for t in TABLES if t in w or t in h] + sorted((set(w) | set(h)) - set(TABLES)):
        wt, ht = w.get(name, Table()), h.get(name, Table())
        body = [f":{c} - [0:0]" for c in wt.chains]  # creates, or flushes an existing one
        # jumps: keep one of each wanted; add what is missing; delete the rest
        present = [(c, s) for c, s, _ in ht.jumps]
        for c, s, insert in wt.jumps:
            if (c, s) in present:
                present.remove((c, s))
            else:
                body.append(f"-I {c} 1 {s}" if insert else f"-A {c} {s}")
        body += [f"-D {c} {s}" for c, s in present]
        body += wt.rules
        stale = [c for c in ht.chains if c not in wt.chains]
        body += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
        if body:
            out += [f"*{name}", *body, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""
