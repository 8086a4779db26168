"""Desired uplinks -> connpin's nftables table, as one `nft -f` transaction. Pure; golden-tested.

Per-packet cost does not grow with the number of uplinks: the interface -> uplink and
mark -> uplink decisions are single verdict-map lookups. Every mark write keeps the bits outside
the mask: nft 1.0.6 cannot combine two non-constant operands (`meta mark and ~M or ct mark and M`),
so each uplink has two tiny chains with constant operands, reached through the maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connpin.desired import UplinkState
    from connpin.model import Config

HEADER = "# connpin ruleset: generated, replaced as a whole on every apply; do not edit.\n"


def _hex(v: int) -> str:
    return f"{v:#010x}"


def body(config: Config, uplinks: Sequence[UplinkState]) -> str:
    """The `table inet NAME { ... }` block."""
    mask = config.pinning.mark_mask
    keep = _hex(~mask & 0xFFFFFFFF)
    name = config.pinning.nft_table
    ifmap = ",\n\t\t\t".join(f'"{u.interface}" : jump pin_{u.slot.index}' for u in uplinks)
    markmap = ",\n\t\t\t".join(f"{_hex(u.slot.mark)} : jump restore_{u.slot.index}"
                                  for u in uplinks)
    masq = sorted({u.interface for u in uplinks if u.masquerade})
    out = [f"table inet {name} {{"]
    out.append("\t# interface of a new connection -> its uplink's pin chain")
    out.append("\tmap uplink_by_iface {\n\t\ttype ifname : verdict")
    if ifmap:
        out.append(f"\t\telements = {{ {ifmap} }}")
    out.append("\t}\n")
    out.append("\t# pinned conntrack mark -> chain that copies it into the packet mark")
    out.append("\tmap restore_by_mark {\n\t\ttype mark : verdict")
    if markmap:
        out.append(f"\t\telements = {{ {markmap} }}")
    out.append("\t}\n")
    if masq:
        elems = ", ".join(f'"{i}"' for i in masq)
        out.append(f"\tset masq_ifaces {{\n\t\ttype ifname\n\t\telements = {{ {elems} }}\n\t}}\n")
    for u in uplinks:  # one slot per interface: alloc never gives two the same mark
        out.append(f"\t# {u.uplink} ({u.interface}): {_hex(u.slot.mark)}, table {u.slot.table}")
        out.append(f"\tchain pin_{u.slot.index} {{\n"
                   f"\t\tct mark set ct mark and {keep} or {_hex(u.slot.mark)}\n\t}}\n")
        out.append(f"\tchain restore_{u.slot.index} {{\n"
                   f"\t\tmeta mark set meta mark and {keep} or {_hex(u.slot.mark)}\n\t}}\n")
    out.append(
        "\t# arriving on an uplink: pin new connections to it; then every packet of a pinned\n"
        "\t# connection (forwarded or to the router) carries its uplink's mark for routing\n"
        "\tchain prerouting {\n"
        "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
        "\t\tmeta nfproto ipv4 ct state new iifname vmap @uplink_by_iface\n"
        f"\t\tmeta nfproto ipv4 ct mark and {_hex(mask)} vmap @restore_by_mark\n"
        "\t}\n"
    )
    out.append(
        "\t# the router's own packets of pinned connections: marked, then re-routed (type route)\n"
        "\tchain output {\n"
        "\t\ttype route hook output priority mangle; policy accept;\n"
        f"\t\tmeta nfproto ipv4 ct mark and {_hex(mask)} vmap @restore_by_mark\n"
        "\t}\n"
    )
    out.append(
        "\t# first routed out of an uplink: pin the new connection to it (if not pinned yet)\n"
        "\tchain postrouting {\n"
        "\t\ttype filter hook postrouting priority mangle; policy accept;\n"
        f"\t\tmeta nfproto ipv4 ct state new ct mark and {_hex(mask)} == 0 "
        "oifname vmap @uplink_by_iface\n"
        "\t}"
    )
    if masq:
        out.append(
            "\n\tchain nat_out {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            "\t\tmeta nfproto ipv4 oifname @masq_ifaces masquerade\n"
            "\t}"
        )
    out.append("}")
    return "\n".join(out) + "\n"


def render(config: Config, uplinks: Sequence[UplinkState]) -> str:
    """The whole ruleset as shown by `plan`."""
    return HEADER + body(config, uplinks)


def transaction(table: str, ruleset: str | None) -> str:
    """An `nft -f` script that replaces (or, with None, deletes) connpin's table atomically.

    `table inet X {}` first makes the delete valid when the table does not exist yet; the
    whole file is one kernel transaction, so packets see either the old or the new table.
    """
    script = f"table inet {table}\ndelete table inet {table}\n"
    return script + (ruleset or "")
