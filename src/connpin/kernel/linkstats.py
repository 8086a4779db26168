"""What `connpin top` reads of links and main's default routes through rtnetlink (pyroute2):
the byte and packet counters of interfaces (IFLA_STATS64), and which interface holds main's
best IPv4 default route (where the routing table sends a new connection when connpin does not
choose). Reads only; in the network namespace of the calling thread."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from pyroute2.iproute import IPRoute

from connpin.const import MAIN_TABLE
from connpin.values import Counters


class LinkStats:
    """One rtnetlink socket, kept across refreshes."""

    def __init__(self) -> None:
        self.ipr = IPRoute(strict_check=True)

    def close(self) -> None:
        self.ipr.close()

    def counters(self, names: Iterable[str]) -> dict[str, Counters]:
        """Interface name -> its counters (in = received from the uplink, out = sent to it);
        interfaces that do not exist are left out. `new` stays 0: links do not count
        connections."""
        wanted = set(names)
        out: dict[str, Counters] = {}
        for ln in self.ipr.link("dump"):
            name = ln.get_attr("IFLA_IFNAME")
            if name not in wanted:
                continue
            s = ln.get_attr("IFLA_STATS64") or ln.get_attr("IFLA_STATS")
            if s is None:
                continue
            out[name] = Counters(packets_out=s["tx_packets"], bytes_out=s["tx_bytes"],
                                 packets_in=s["rx_packets"], bytes_in=s["rx_bytes"])
        return out

    def default_interface(self) -> str | None:
        """The interface of main's best (lowest metric) IPv4 default route, or None."""
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in self.ipr.link("dump")}
        best: tuple[int, str] | None = None
        routes = self.ipr.route("dump", family=socket.AF_INET, dump_filter={}, table=MAIN_TABLE)
        for r in routes:
            if r["dst_len"] != 0 or r.get_attr("RTA_TABLE", r["table"]) != MAIN_TABLE:
                continue
            oif = r.get_attr("RTA_OIF")
            multipath = r.get_attr("RTA_MULTIPATH")
            if oif is None and multipath:
                oif = multipath[0]["oif"]
            if oif is None or oif not in names:
                continue
            metric = r.get_attr("RTA_PRIORITY") or 0
            if best is None or metric < best[0]:
                best = (metric, names[oif])
        return best[1] if best else None
