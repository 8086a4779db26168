"""The HA lab's address plan (pure, no root needed): hosts and namespace names, each router's
LAN, sync-link and uplink addresses, the virtual addresses, which uplink (and router) a public
address belongs to, and the connpin config of each router. Drawings: `lab.ha`."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

TOPOLOGIES = ("shared", "own")
ROUTERS = ("r1", "r2")
KS = (1, 2)


class HaPlan:
    """Names and addresses of an HA lab (pure): see the module docstring."""

    SERVERS = ("203.0.113.10", "203.0.113.11")
    ECHO_PORT = 7
    LAN_HOST = "10.77.0.2"
    LAN_VIP = "10.77.0.1"
    ks = KS

    def __init__(self, prefix: str, topology: str):
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology is one of {', '.join(TOPOLOGIES)}, not {topology!r}")
        self.prefix, self.topology = prefix, topology
        self.hosts = ("lan", *ROUTERS, *(f"isp{k}" for k in KS), "net")

    def ns(self, host: str) -> str:
        if host not in self.hosts:
            raise ValueError(f"no host {host!r} in this lab (hosts: {', '.join(self.hosts)})")
        return f"{self.prefix}-{host}"

    @staticmethod
    def n(router: str) -> int:
        if router not in ROUTERS:
            raise ValueError(f"no router {router!r} (routers: r1, r2)")
        return ROUTERS.index(router) + 1

    def lan_address(self, router: str) -> str:
        return f"10.77.0.{251 + self.n(router)}"

    def sync_address(self, router: str) -> str:
        return f"10.78.0.{self.n(router)}"

    def iface(self, k: int) -> str:
        """A router's interface of uplink k: wan{k} (shared) or ppp{k-1} (own sessions)."""
        return f"wan{k}" if self.topology == "shared" else f"ppp{k - 1}"

    def gateway(self, k: int) -> str:
        return f"198.51.100.{16 * k + 1}" if self.topology == "shared" else f"100.64.{k}.1"

    def vip(self, k: int) -> str:
        """Uplink k's virtual address (shared) that the ISP sees and the routers SNAT to."""
        return f"198.51.100.{16 * k + 2}"

    def address(self, router: str, k: int) -> str:
        """A router's own address on uplink k."""
        if self.topology == "shared":
            return f"198.51.100.{16 * k + 2 + self.n(router)}"
        return f"100.64.{k}.{1 + self.n(router)}"

    def customer_range(self, k: int) -> ipaddress.IPv4Network:
        if self.topology == "shared":
            return ipaddress.IPv4Network(f"198.51.100.{16 * k}/28")
        return ipaddress.IPv4Network(f"100.64.{k}.0/24")

    def isp_link(self, k: int) -> tuple[str, str]:
        return f"192.0.2.{4 * k + 1}", f"192.0.2.{4 * k + 2}"

    def uplink_of(self, ip: str | None) -> int | None:
        """The uplink whose public address the server saw (None for anything else)."""
        if not ip:
            return None
        with contextlib.suppress(ValueError):
            a = ipaddress.IPv4Address(ip)
            return next((k for k in KS if a in self.customer_range(k)), None)
        return None

    def router_of(self, ip: str | None) -> str | None:
        """Topology "own": the router whose session address the server saw."""
        return next((r for r in ROUTERS for k in KS if ip == self.address(r, k)), None)

    def connpin_config(self, router: str, workdir: Path) -> str:
        """Router's config: the same uplinks on both routers, isp1 and isp2 (shared: Ethernet
        with a static gateway, NAT by the lab's SNAT to the VIP; own: masquerade), and its half
        of [ha] (sync link addresses swapped, per-instance conntrackd paths in `workdir`)."""
        lines: list[str] = []
        for k in KS:
            lines += ["[[uplink]]", f'name = "isp{k}"', f'interface = "{self.iface(k)}"']
            if self.topology == "shared":
                lines.append(f'gateway = "{self.gateway(k)}"')
            else:
                lines.append("masquerade = true")
            lines.append("")
        other = ROUTERS[2 - self.n(router)]
        ignore = [self.LAN_VIP, *(a for r in ROUTERS for a in self.own_addresses(r))]
        if self.topology == "shared":
            ignore += [self.vip(k) for k in KS]
        lines += ["[ha]", f'topology = "{self.topology}"', 'sync_interface = "sync0"',
                  f'local = "{self.sync_address(router)}"', f'peer = "{self.sync_address(other)}"',
                  *(f'conntrackd_{key} = "{workdir}/{router}-conntrackd.{ext}"'
                    for key, ext in (("config", "conf"), ("socket", "sock"),
                                     ("lockfile", "lock"))),
                  f"ignore = [{', '.join(f'{chr(34)}{a}{chr(34)}' for a in ignore)}]", ""]
        return "\n".join(lines)

    def own_addresses(self, router: str) -> list[str]:
        """A router's own addresses (not the virtual ones): LAN, sync link, uplinks."""
        return [self.lan_address(router), self.sync_address(router),
                *(self.address(router, k) for k in KS)]
