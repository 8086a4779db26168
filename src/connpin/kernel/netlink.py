"""Links, addresses, rules and routes through rtnetlink (pyroute2). Observes and applies; decides
nothing. Works in the network namespace of the calling thread."""

from __future__ import annotations

import errno
import socket

from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from connpin.conflicts import OWNER_PROTO
from connpin.const import IFF_UP, MAIN_TABLE
from connpin.values import Link, Route, Rule

RTEXT_FILTER_SKIP_STATS = 1 << 3  # link dumps without counters: a third cheaper to decode
_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_ACTION_IDS = {v: k for k, v in _ACTIONS.items()}
_UNSET32 = 0xFFFFFFFF
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTN_LOCAL = 2
LOCAL_TABLE = 255
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY = {v: k for k, v in _AF.items()}


class NetlinkFailure(Exception):
    pass


class Netlink:
    def __init__(self) -> None:
        # Strict checking: a dump request's table/protocol/type are filters the kernel applies
        # (Linux >= 4.20), so thousands of others' routes are never sent, let alone decoded.
        self.ipr = IPRoute(strict_check=True)
        self._names: dict[int, str] = {}

    def close(self) -> None:
        self.ipr.close()

    # -- observe -----------------------------------------------------------------------------
    def links(self) -> dict[str, Link]:
        addrs: dict[int, list[str]] = {}
        for a in self.ipr.get_addr(family=socket.AF_INET):
            addrs.setdefault(a["index"], []).append(a.get_attr("IFA_LOCAL") or
                                                    a.get_attr("IFA_ADDRESS"))
        out: dict[str, Link] = {}
        self._names = {}
        for ln in self.ipr.link("dump", ext_mask=RTEXT_FILTER_SKIP_STATS):
            name = ln.get_attr("IFLA_IFNAME")
            self._names[ln["index"]] = name
            out[name] = Link(name, ln["index"], bool(ln["flags"] & IFF_UP),
                             tuple(sorted(addrs.get(ln["index"], ()))))
        return out

    def _name(self, index: int | None) -> str:
        if index is None:
            return "?"
        if index not in self._names:
            self.links()
        return self._names.get(index, f"if{index}")

    def filtered(self, family: int, **select: int) -> list:
        """The routes the kernel selects for `select` (table=, proto=, type=): with the
        explicit dump_filter, pyroute2 sends these keys in the request instead of filtering a
        full dump itself. A table that does not exist yields nothing."""
        try:
            return list(self.ipr.route("dump", family=_AF[family], dump_filter={}, **select))
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return []
            raise

    def route_dump(self, family: int = 4) -> list:
        """What observe needs of a family's routes, once, filtered in the kernel: main (its
        default routes, and its routes for `inside`), the local table's local routes, and
        every route with connpin's protocol (its tables are picked from these). Cost does not
        grow with others' tables (a full BGP table, a mesh VPN's routes)."""
        return (self.filtered(family, table=MAIN_TABLE)
                + self.filtered(family, table=LOCAL_TABLE, type=RTN_LOCAL)
                + self.filtered(family, proto=OWNER_PROTO))

    def main_gateways(self, dump: list | None = None) -> dict[str, str]:
        """Per interface, the gateway of its best default route in the main table."""
        best: dict[str, tuple[int, str]] = {}
        if dump is None:
            dump = self.ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE)
        for r in dump:
            if r["dst_len"] != 0 or r.get_attr("RTA_TABLE", r["table"]) != MAIN_TABLE:
                continue
            gw, oif = r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")
            if gw is None or oif is None:
                continue
            metric = r.get_attr("RTA_PRIORITY") or 0
            name = self._name(oif)
            if name not in best or metric < best[name][0]:
                best[name] = (metric, gw)
        return {k: v[1] for k, v in best.items()}

    def main_gateways6(self, dump: list | None = None) -> dict[str, str | None]:
        """Per interface with an IPv6 default route in main: the gateway of the best one
        (None for a `dev` route, as on point-to-point links)."""
        best: dict[str, tuple[int, str | None]] = {}
        if dump is None:
            dump = self.ipr.get_routes(family=socket.AF_INET6, table=MAIN_TABLE)
        for r in dump:
            if r["dst_len"] != 0 or r["type"] != RTN_UNICAST or \
                    r.get_attr("RTA_TABLE", r["table"]) != MAIN_TABLE:
                continue
            oif = r.get_attr("RTA_OIF")
            if oif is None:
                continue
            metric = r.get_attr("RTA_PRIORITY") or 0
            name = self._name(oif)
            if name not in best or metric < best[name][0]:
                best[name] = (metric, r.get_attr("RTA_GATEWAY"))
        return {k: v[1] for k, v in best.items()}

    def main_defaults(self, family: int = 4) -> list[dict]:
        """main's default routes, each nexthop of a multipath one on its own: interface,
        gateway, metric, weight (None unless multipath), for `connpin status`."""
        out = []
        for r in self.filtered(family, table=MAIN_TABLE):
            if r["dst_len"] != 0 or r["type"] != RTN_UNICAST:
                continue
            metric = r.get_attr("RTA_PRIORITY") or 0
            hops = r.get_attr("RTA_MULTIPATH")
            if hops:
                for h in hops:
                    out.append({"interface": self._name(h["oif"]), "metric": metric,
                                "gateway": h.get_attr("RTA_GATEWAY"), "weight": h["hops"] + 1})
            elif r.get_attr("RTA_OIF") is not None:
                out.append({"interface": self._name(r.get_attr("RTA_OIF")), "metric": metric,
                            "gateway": r.get_attr("RTA_GATEWAY"), "weight": None})
        return out

    def inside(self, dumps: list[list], is_uplink) -> tuple[str, ...]:
        """Where connections start on this side: the router's own addresses (local routes) and
        what main routes to an interface that is not an uplink (the LAN, static routes)."""
        out = set()
        for dump in dumps:
            for r in dump:
                table = r.get_attr("RTA_TABLE") or r["table"]
                dst, plen = r.get_attr("RTA_DST"), r["dst_len"]
                if dst is None or not plen:
                    continue
                if r["type"] == RTN_LOCAL:
                    out.add(f"{dst}/{plen}")
                elif table == MAIN_TABLE and r["type"] == RTN_UNICAST:
                    oif = r.get_attr("RTA_OIF")
                    if oif is not None and not is_uplink(self._name(oif)):
                        out.add(f"{dst}/{plen}")
        return tuple(sorted(out))

    def rules(self, *bands: range, families: tuple[int, ...] = (4,), owned: bool = True
              ) -> list[Rule]:
        """connpin's rules (protocol OWNER_PROTO; of these families, 4 and/or 6) whose priority
        lies in one of `bands`. Others' rules in the band are never connpin's to change
        (owned=False: those without the protocol, for adopt)."""
        out = []
        for r in (r for f in families for r in self.ipr.get_rules(family=_AF[f])):
            prio = r.get_attr("FRA_PRIORITY") or 0
            if not any(prio in band for band in bands) or (
                    r.get_attr("FRA_PROTOCOL") == OWNER_PROTO) != owned:
                continue
            mask = r.get_attr("FRA_FWMASK")
            mark = r.get_attr("FRA_FWMARK")
            if mask is not None and mark is None:
                mark = 0
            sup = r.get_attr("FRA_SUPPRESS_PREFIXLEN")
            out.append(Rule(
                priority=prio,
                action=_ACTIONS.get(r["action"], f"action{r['action']}"),
                table=r.get_attr("FRA_TABLE") or r["table"] if r["action"] == 1 else 0,
                fwmark=mark,
                fwmask=mask if mark is not None else None,
                goto=r.get_attr("FRA_GOTO"),
                suppress_prefixlength=None if sup in (None, _UNSET32) else sup,
                family=_FAMILY[r["family"]],
            ))
        return out

    def routes(self, *tables: range, dump: list | None = None, dump6: list | None = None,
               families: tuple[int, ...] = (4,)) -> list[Route]:
        """Routes (of these families) of the tables in `tables`; `dump`/`dump6`: route_dump()s
        already read."""
        out = []
        for f in families:
            rows = (dump if f == 4 else dump6)
            for r in self.route_dump(f) if rows is None else rows:
                table = r.get_attr("RTA_TABLE") or r["table"]
                if not any(table in t for t in tables) or r["proto"] != OWNER_PROTO:
                    continue
                out.append(self._route(r, table, f))
        return out

    def _route(self, r, table: int, family: int) -> Route:  # noqa: ANN001 - a pyroute2 message
        dst = r.get_attr("RTA_DST")
        return Route(table, self._name(r.get_attr("RTA_OIF")), r.get_attr("RTA_GATEWAY"),
                     "default" if not r["dst_len"] else f"{dst}/{r['dst_len']}", family=family)

    def unowned_routes(self, tables: set[int], families: tuple[int, ...] = (4,)
                       ) -> list[Route]:
        """Routes without connpin's protocol in these tables (one filtered dump each)."""
        out = []
        for f in families:
            for t in sorted(tables):
                for r in self.filtered(f, table=t):
                    if r["proto"] == OWNER_PROTO:
                        continue
                    out.append(self._route(r, t, f))
        return out

    # -- apply -------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kw) -> None:
        try:
            fn(*args, **kw)
        except NetlinkError as e:
            raise NetlinkFailure(e.args[1] if len(e.args) > 1 else str(e)) from None

    def rule(self, op: str, rule: Rule, owned: bool = True) -> None:
        """owned=False: the rule as an older connpin installed it, without the protocol."""
        kw: dict = {"priority": rule.priority, "action": _ACTION_IDS[rule.action],
                    "family": _AF[rule.family]}
        if owned:
            kw["protocol"] = OWNER_PROTO
        if rule.action == "lookup":
            kw["table"] = rule.table
        if rule.fwmark is not None:
            kw.update(fwmark=rule.fwmark, fwmask=rule.fwmask)
        if rule.goto is not None:
            kw["goto"] = rule.goto
        if rule.suppress_prefixlength is not None:
            kw["suppress_prefixlen"] = rule.suppress_prefixlength
        self._call(f"ip rule {op} {rule}", self.ipr.rule, op, **kw)

    def _index(self, name: str, op: str) -> list[int]:
        """The interface's index as last observed (no request on the way to the pinning), else
        looked up; always looked up to delete, where the interface may be gone meanwhile."""
        known = [i for i, n in self._names.items() if n == name] if op != "del" else []
        return known or self.ipr.link_lookup(ifname=name)

    def route(self, op: str, route: Route) -> None:
        index = self._index(route.oif, op)
        v6 = route.family == 6
        if op == "del" and route.dst != "default":
            kw: dict = {"dst": route.dst, "table": route.table, "family": _AF[route.family],
                        "proto": OWNER_PROTO}
            if not v6:
                kw["scope"] = RT_SCOPE_NOWHERE
        else:
            if not index and op != "del":
                raise NetlinkFailure(f"{route.ip} route {op} {route}: no interface {route.oif}")
            kw = {"dst": "::/0" if v6 else "0.0.0.0/0", "table": route.table,
                  "family": _AF[route.family], "proto": OWNER_PROTO}
            if index:
                kw["oif"] = index[0]
            if route.gateway:
                kw["gateway"] = route.gateway
            if not v6:  # IPv6 routes have no scope
                kw["scope"] = RT_SCOPE_NOWHERE if op == "del" else (
                    RT_SCOPE_LINK if not route.gateway else 0)
        self._call(f"{route.ip} route {op} {route}", self.ipr.route, op, **kw)
