"""Reading connpin's per-uplink nft counters ([metrics]; rendered by render/nft.py): one
`nft -j list counters table inet T`, whose cost does not depend on the number of connections
(no conntrack dump). Counter names are `new_I_U`, `out_I_U`, `in_I_U` (slot index I, uplink U):
the uplink comes from the name itself, so no comment and no desired state is needed.

The counters count since connpin's table was last loaded (an apply that changes the ruleset
replaces the table and starts them at zero); the daemon's metrics carry totals across that.
"""

from __future__ import annotations

import json
from dataclasses import replace

from connpin.kernel import netns as ns
from connpin.kernel import nft
from connpin.values import Counters

KINDS = ("new", "out", "in")


def read_raw(netns: str | None, table: str) -> dict[str, tuple[int, int]]:
    """Every named counter of connpin's table: name -> (packets, bytes); {} when the table does
    not exist (nothing applied yet, or backend = "iptables"). Raises nft.NftFailure."""
    with ns.inside(netns):
        p = nft._nft(["-j", "list", "counters", "table", "inet", table])
    if p.returncode != 0:
        if "No such file" in p.stderr:
            return {}
        raise nft.NftFailure(p.stderr.strip() or f"nft exited with {p.returncode}")
    out: dict[str, tuple[int, int]] = {}
    for item in json.loads(p.stdout or "{}").get("nftables", []):
        c = item.get("counter") if isinstance(item, dict) else None
        if c and c.get("table") == table and c.get("family") == "inet":
            out[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return out


def split(name: str) -> tuple[str, int, str] | None:
    """`out_236_fibre` -> ("out", 236, "fibre"); None for a name that is not connpin's."""
    kind, _, rest = name.partition("_")
    index, _, uplink = rest.partition("_")
    if kind not in KINDS or not index.isdigit() or not uplink:
        return None
    return kind, int(index), uplink


def per_uplink(raw: dict[str, tuple[int, int]]) -> dict[str, Counters]:
    """Counters by uplink name, the interfaces of a pattern uplink summed."""
    out: dict[str, Counters] = {}
    for name, (packets, nbytes) in raw.items():
        parts = split(name)
        if parts is None:
            continue
        kind, _, uplink = parts
        c = out.get(uplink, Counters())
        if kind == "new":
            c = replace(c, new=c.new + packets)
        elif kind == "out":
            c = replace(c, packets_out=c.packets_out + packets, bytes_out=c.bytes_out + nbytes)
        else:
            c = replace(c, packets_in=c.packets_in + packets, bytes_in=c.bytes_in + nbytes)
        out[uplink] = c
    return out


def read(netns: str | None, table: str) -> dict[str, Counters]:
    """connpin's counters in namespace `netns` (None: this one), by uplink name; {} when the
    table or its counters do not exist ([metrics] absent). Raises nft.NftFailure."""
    return per_uplink(read_raw(netns, table))
