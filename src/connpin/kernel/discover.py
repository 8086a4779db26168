"""What `connpin init` reads of the machine: the main table's default routes (rtnetlink, in the
calling thread's network namespace) and pppd's peer files. Reads only; decides nothing (the
starter config is made in `connpin.starter`)."""

from __future__ import annotations

import os

from connpin.const import MAIN_TABLE
from connpin.kernel.netlink import RTN_UNICAST, Netlink
from connpin.starter import DefaultRoute

#: A peer file larger than this is no pppd options file (it is not read).
MAX_PEER_BYTES = 64 * 1024


def default_routes() -> list[DefaultRoute]:
    """Every unicast default route of the main table, both families (multipath: one per hop)."""
    nl = Netlink()
    try:
        out = []
        for family in (4, 6):
            for r in nl.filtered(family, table=MAIN_TABLE):
                if r["dst_len"] != 0 or r["type"] != RTN_UNICAST or \
                        r.get_attr("RTA_TABLE", r["table"]) != MAIN_TABLE:
                    continue
                metric = r.get_attr("RTA_PRIORITY") or 0
                hops = [(h.get("oif"), h.get_attr("RTA_GATEWAY"))
                        for h in r.get_attr("RTA_MULTIPATH") or ()]
                hops = hops or [(r.get_attr("RTA_OIF"), r.get_attr("RTA_GATEWAY"))]
                out += [DefaultRoute(nl._name(oif), family, metric, gw)
                        for oif, gw in hops if oif is not None]
        return out
    finally:
        nl.close()


def peer_files(directory: str) -> dict[str, str]:
    """Name -> text of the regular files in pppd's peers directory ({} when there is none; ""
    for a file that cannot be read, e.g. one only root may read: the peer is still there)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            if os.path.getsize(path) > MAX_PEER_BYTES:
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                out[name] = f.read()
        except OSError:
            out[name] = ""
    return out
