"""What a role change does, as plain values (pure): the conntrackd commands of `connpin ha
promote / demote / fault` in order, the converge after them, and, on promotion, which pinned
connections are stranded (NATed to an address this router does not have).

The order follows conntrackd's primary-backup scheme (conntrackd(8), Debian's
/usr/share/doc/conntrackd/examples/sync/primary-backup.sh):
- promote (this router becomes master): commit the external cache (the peer's connections,
  with their marks) into the kernel first, so the peer's connections find their entries as early
  as possible; then flush conntrackd's caches, resync its internal cache from the kernel and
  send the peer a bulk update. Then converge, then `on_promote`.
- demote (becomes backup): `-t` has conntrackd flush the kernel's now stale entries after
  PurgeTimeout (60 s; a promotion before then cancels it, seen with conntrackd 1.4.7) and `-n`
  asks the new master for a full resync. Then converge.
- fault: only `-t`. Then converge.
Each conntrackd step that fails is reported and the rest still run: a promotion goes on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from connpin.ha.settings import HA

ROLES = ("promote", "demote", "fault")


@dataclass(frozen=True)
class Command:
    """One conntrackd client call: argv without the binary's path, and why."""

    argv: tuple[str, ...]
    why: str

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class Plan:
    role: str
    commands: tuple[Command, ...]
    converge: bool = True
    flush_stranded: bool = False  # on_promote = "flush-stranded"

    def lines(self) -> list[str]:
        """The plan, one line per step (`--dry-run`)."""
        out = [f"{c}    # {c.why}" for c in self.commands]
        if self.converge:
            out.append("converge    # connpin apply: the ruleset, rules and routes of the uplinks "
                       "up here")
        if self.flush_stranded:
            out.append("flush stranded    # on_promote = \"flush-stranded\": delete the pinned "
                       "connections NATed to an address this router does not have")
        return out


def _ct(ha: HA, option: str, why: str) -> Command:
    return Command(("conntrackd", "-C", ha.conntrackd_config, option), why)


def plan(ha: HA, role: str) -> Plan:
    """The steps of `role` for this router."""
    if role == "promote":
        return Plan(role, (
            _ct(ha, "-c", "commit the external cache (the peer's connections, marks included) "
                "to the kernel"),
            _ct(ha, "-f", "flush conntrackd's internal and external caches"),
            _ct(ha, "-R", "resync the internal cache with the kernel's table"),
            _ct(ha, "-B", "send the peer a bulk update of this router's connections"),
        ), flush_stranded=ha.on_promote == "flush-stranded")
    if role == "demote":
        return Plan(role, (
            _ct(ha, "-t", "flush the kernel's now stale entries after PurgeTimeout (60 s)"),
            _ct(ha, "-n", "ask the master for a full resync"),
        ))
    if role == "fault":
        return Plan(role, (
            _ct(ha, "-t", "flush the kernel's now stale entries after PurgeTimeout (60 s)"),
        ))
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def own_addresses(addresses: Iterable[str], local_prefixes: Iterable[str]) -> frozenset[str]:
    """This router's addresses: the interfaces' (IPv4) addresses and the host prefixes of its
    local routes (IPv6 too), as normalised text."""
    out = set()
    for a in addresses:
        out.add(str(ipaddress.ip_address(a)))
    for p in local_prefixes:
        net = ipaddress.ip_network(p, strict=False)
        if net.prefixlen == net.max_prefixlen:
            out.add(str(net.network_address))
    return frozenset(out)


def stranded(entries: Iterable, mask: int, own: frozenset[str]) -> list:
    """The pinned entries (`mark & mask` set) whose source NAT address is not one of `own`:
    their replies go to the old master's address and will never come here. Entries are
    `kernel.conntrack.Entry`-like (mark, status, reply.dst); unNATed ones always stay."""
    src_nat = 0x10  # IPS_SRC_NAT
    out = []
    for e in entries:
        if not e.mark & mask or not e.status & src_nat:
            continue
        if str(ipaddress.ip_address(e.reply.dst)) not in own:
            out.append(e)
    return out
