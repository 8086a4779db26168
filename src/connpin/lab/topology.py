"""The lab's network, built through netlink: namespaces and their sysctls, the veth pairs
(LAN, ISP to internet host, Ethernet-like uplinks), PPP-like uplinks connected and torn down,
spare uplink-like interfaces, and waiting for links to come up. Addresses come from
`addressing`; the lab router's own nft table from `config`.

A PPP-like uplink is a veth pair with ARP off and the SAME MAC on both ends: a NOARP device sends
every frame to its own address, and the peer accepts it as its own. That gives a working
point-to-point link (`default dev ppp0`) without ppp/tun drivers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import time
from collections.abc import Iterable, Mapping
from socket import AF_INET6

from pyroute2 import IPRoute
from pyroute2 import config as pconfig
from pyroute2 import netns as pnetns

from connpin.const import IFF_UP
from connpin.kernel import netns
from connpin.lab import config
from connpin.lab.addressing import Addressing, ppp_mac, spare_address
from connpin.lab.commands import LabError, exec_ns

# pyroute2 creates namespaces (and sockets in them) from a forked child and gives it 2 s to
# answer; a new namespace waits for the kernel to finish tearing down old ones, which on a busy
# 2-core machine running several labs can take longer. Wait instead of failing the build.
pconfig.default_communicate_timeout = 30
pconfig.default_create_socket_timeout = 30

IFF_NOARP = 0x80
RTPROT_BOOT = 3  # pppd's defaultroute (ioctl SIOCADDRT) shows up as proto boot
RTPROT_DHCP = 16  # what NetworkManager uses for DHCP routes
RTPROT_RA = 9  # IPv6 default routes learned from router advertisements
IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253


class Topology:
    """The netlink handles of a lab's hosts and the operations that build and change links."""

    def __init__(self, plan: Addressing, ipv6: bool):
        self.plan = plan
        self.ipv6 = ipv6
        #: namespaces this object created, in order (for removal)
        self.created: list[str] = []
        self._ipr: dict[str, IPRoute] = {}
        self._extra_routes: dict[int, str] = {}  # k -> /32 routed by net outside the range

    def close(self) -> None:
        """Close the netlink handles (idempotent; the namespaces stay)."""
        for ipr in self._ipr.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr.clear()

    # -- hosts ------------------------------------------------------------------------------------
    def create_hosts(self) -> None:
        for host in self.plan.hosts:
            name = self.plan.ns(host)
            self.created.append(name)
            pnetns.create(name)
            self._ipr[host] = IPRoute(netns=name, flags=0)

    def prepare_hosts(self) -> None:
        """Forwarding, rp_filter and IPv6 switched explicitly in every host; loopback up."""
        for host in self.plan.hosts:
            forward = host == "router" or host.startswith("isp")
            self.sysctls(host, {
                "net.ipv4.ip_forward": int(forward),
                # a new namespace may inherit rp_filter from the host: make it explicit
                "net.ipv4.conf.all.rp_filter": 1 if host.startswith("isp") else 0,
                "net.ipv4.conf.default.rp_filter": 1 if host.startswith("isp") else 0,
                "net.ipv6.conf.all.disable_ipv6": int(not self.ipv6),
                "net.ipv6.conf.default.disable_ipv6": int(not self.ipv6),
            })
            if self.ipv6:  # quiet IPv6: no DAD waits, no router solicitations/advertisements
                self.sysctls(host, {
                    "net.ipv6.conf.all.forwarding": int(forward),
                    **{f"net.ipv6.conf.{c}.{key}": 0 for c in ("all", "default")
                       for key in ("accept_dad", "router_solicitations", "accept_ra")},
                })
            self._ipr[host].link("set", index=self.idx(host, "lo"), state="up")

    def sysctls(self, host: str, values: Mapping[str, object]) -> None:
        with netns.inside(self.plan.ns(host)):
            for key, value in values.items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(f"{value}\n")

    def get_sysctl(self, host: str, key: str) -> str:
        with netns.inside(self.plan.ns(host)), open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()

    def netstat(self, host: str) -> dict[str, int]:
        """A host's /proc/net/netstat and snmp counters, e.g. "TcpExt.IPReversePathFilter"."""
        out: dict[str, int] = {}
        with netns.inside(self.plan.ns(host)):
            for name in ("netstat", "snmp"):
                with open(f"/proc/thread-self/net/{name}") as f:
                    lines = f.read().splitlines()
                for head, vals in zip(lines[::2], lines[1::2], strict=False):
                    sect, _, keys = head.partition(":")
                    for key, val in zip(keys.split(), vals.partition(":")[2].split(),
                                        strict=False):
                        with contextlib.suppress(ValueError):
                            out[f"{sect}.{key}"] = int(val)
        return out

    # -- the fixed part ---------------------------------------------------------------------------
    def build_lan(self) -> None:
        p, r, lan = self.plan, self._ipr["router"], self._ipr["lan"]
        r.link("add", ifname="lan0", kind="veth", peer={"ifname": "eth0",
                                                         "net_ns_fd": p.ns("lan")})
        self.up_addr("router", "lan0", p.LAN_GATEWAY, 24)
        self.up_addr("lan", "eth0", p.LAN_HOST, 24)
        lan.route("add", dst="0.0.0.0/0", gateway=p.LAN_GATEWAY)
        if self.ipv6:
            self.addr6("router", "lan0", p.LAN_GATEWAY6, 64)
            self.addr6("lan", "eth0", p.LAN_HOST6, 64)
            lan.route("add", dst="::/0", gateway=p.LAN_GATEWAY6, family=AF_INET6)

    def build_server(self) -> None:
        """The internet host's public addresses, on its loopback."""
        net, lo = self._ipr["net"], self.idx("net", "lo")
        net.addr("add", index=lo, address=self.plan.SERVER, prefixlen=32)
        if self.ipv6:
            net.addr("add", index=lo, address=self.plan.SERVER6, prefixlen=128)

    def build_isp(self, k: int) -> None:
        """ISP k's link to the internet host, and its customer link if Ethernet-like."""
        p, isp, net = self.plan, f"isp{k}", self._ipr["net"]
        up_ip, net_ip = p.isp_link(k)
        self._ipr[isp].link("add", ifname="up0", kind="veth",
                            peer={"ifname": isp, "net_ns_fd": p.ns("net")})
        self.up_addr(isp, "up0", up_ip, 30)
        self.up_addr("net", isp, net_ip, 30)
        self._ipr[isp].route("add", dst="0.0.0.0/0", gateway=net_ip)
        # Replies from the internet host come from its public address, whatever the ISP.
        net.route("add", dst=str(p.customer_range(k)), gateway=up_ip, prefsrc=p.SERVER)
        if p.kind(k) == "eth":
            self._ipr["router"].link("add", ifname=p.iface(k), kind="veth",
                                     peer={"ifname": "cust0", "net_ns_fd": p.ns(isp)})
            self.up_addr(isp, "cust0", p.gateway(k), 28)
            self.sysctls(isp, {"net.ipv4.conf.cust0.rp_filter": 1})
        if self.ipv6:
            self._build_isp6(k)

    def _build_isp6(self, k: int) -> None:
        p, isp, net = self.plan, f"isp{k}", self._ipr["net"]
        up_ip, net_ip = p.isp_link6(k)
        self.addr6(isp, "up0", up_ip, 64)
        self.addr6("net", isp, net_ip, 64)
        # IPv6 adds a link's prefix route only once it has carrier (its veth peer up): before
        # that a route via the peer's address is refused (EINVAL), as seen under load
        self.wait_operstate([(isp, "up0"), ("net", isp)], timeout=10.0)
        self._ipr[isp].route("add", dst="::/0", gateway=net_ip, family=AF_INET6)
        net.route("add", dst=str(p.delegated(k)), gateway=up_ip, prefsrc=p.SERVER6,
                  family=AF_INET6)
        if p.kind(k) == "eth":
            self.addr6(isp, "cust0", p.isp_address6(k), 64)
            self.addr6(isp, "cust0", "fe80::1", 64)
            self._ipr[isp].route("add", dst=str(p.delegated(k)), gateway=p.address6(k),
                                 family=AF_INET6)
        exec_ns(p.ns(isp), ["nft", "-f", "-"], input=config.isp_ruleset6(p, k))

    def load_router_ruleset(self, masquerade: bool) -> None:
        exec_ns(self.plan.ns("router"), ["nft", "-f", "-"],
                input=config.router_ruleset(self.plan, masquerade=masquerade, ipv6=self.ipv6))

    def wait_fixed_links(self) -> None:
        ks = self.plan.ks
        self.wait_operstate([("lan", "eth0"), ("router", "lan0"),
                             *((f"isp{k}", "up0") for k in ks), *(("net", f"isp{k}") for k in ks)])

    # -- uplinks ----------------------------------------------------------------------------------
    def ppp_up(self, k: int, addr: str) -> None:
        p, r, isp = self.plan, self._ipr["router"], self._ipr[f"isp{k}"]
        ifname, peer = p.iface(k), p.gateway(k)
        mac = ppp_mac(k, secrets.token_bytes(3))  # same MAC on both ends: see the docstring
        r.link("add", ifname=ifname, kind="veth", address=mac,
               peer={"ifname": "cust0", "net_ns_fd": p.ns(f"isp{k}"), "address": mac})
        ridx, iidx = self.idx("router", ifname), self.idx(f"isp{k}", "cust0")
        self.sysctls(f"isp{k}", {"net.ipv4.conf.cust0.rp_filter": 1})
        isp.link("set", index=iidx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
        isp.addr("add", index=iidx, local=peer, address=addr, prefixlen=32)
        r.link("set", index=ridx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
        r.addr("add", index=ridx, local=addr, address=peer, prefixlen=32)
        if ipaddress.IPv4Address(addr) not in p.customer_range(k):
            self._ipr["net"].route("replace", dst=f"{addr}/32", gateway=p.isp_link(k)[0],
                                   prefsrc=p.SERVER)
            self._extra_routes[k] = addr
        self.wait_operstate([("router", ifname), (f"isp{k}", "cust0")])
        r.route("add", dst="0.0.0.0/0", oif=ridx, priority=10 * k, proto=RTPROT_BOOT,
                scope=RT_SCOPE_LINK)
        if self.ipv6:
            self.addr6(f"isp{k}", "cust0", p.isp_address6(k), 64)
            isp.route("add", dst=str(p.delegated(k)), oif=iidx, family=AF_INET6)
            self.addr6("router", ifname, p.address6(k), 64)
            r.route("add", dst="::/0", oif=ridx, priority=10 * k, proto=RTPROT_BOOT,
                    family=AF_INET6)

    def ppp_down(self, k: int) -> None:
        """pppd exits: the interface goes, and the route to an address outside the range."""
        self._ipr["router"].link("del", index=self.idx("router", self.plan.iface(k)))
        extra = self._extra_routes.pop(k, None)
        if extra:
            with contextlib.suppress(Exception):
                self._ipr["net"].route("del", dst=f"{extra}/32")

    def eth_up(self, k: int, addr: str) -> None:
        p = self.plan
        if ipaddress.IPv4Address(addr) not in p.customer_range(k):
            raise LabError(f"uplink {k} is Ethernet-like: its address must be inside "
                           f"{p.customer_range(k)}, not {addr}")
        r, ifname = self._ipr["router"], p.iface(k)
        self.up_addr("router", ifname, addr, 28)
        self.wait_operstate([("router", ifname), (f"isp{k}", "cust0")])
        r.route("add", dst="0.0.0.0/0", gateway=p.gateway(k), oif=self.idx("router", ifname),
                priority=10 * k, proto=RTPROT_DHCP)
        if self.ipv6:
            self.addr6("router", ifname, p.address6(k), 64)
            r.route("add", dst="::/0", gateway=p.gateway6(k), oif=self.idx("router", ifname),
                    priority=10 * k, proto=RTPROT_RA, family=AF_INET6)

    def eth_down(self, k: int) -> None:
        p, r = self.plan, self._ipr["router"]
        idx = self.idx("router", p.iface(k))
        with contextlib.suppress(Exception):
            r.route("del", dst="0.0.0.0/0", gateway=p.gateway(k), oif=idx, priority=10 * k)
        if self.ipv6:
            with contextlib.suppress(Exception):
                r.route("del", dst="::/0", gateway=p.gateway6(k), oif=idx, priority=10 * k,
                        family=AF_INET6)
        r.flush_addr(index=idx)
        r.link("set", index=idx, state="down")

    def add_spares(self, count: int, prefix: str) -> list[str]:
        """`count` port-less bridges `prefix0`.. on the router, up, each with a /32."""
        r, names = self._ipr["router"], []
        for i in range(count):
            name = f"{prefix}{i}"
            r.link("add", ifname=name, kind="bridge")
            self.up_addr("router", name, spare_address(i), 32)
            names.append(name)
        return names

    # -- netlink helpers --------------------------------------------------------------------------
    def idx(self, host: str, ifname: str) -> int:
        found = self._ipr[host].link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"no interface {ifname} in {host}")
        return found[0]

    def up_addr(self, host: str, ifname: str, address: str, prefixlen: int) -> None:
        ipr = self._ipr[host]
        idx = self.idx(host, ifname)
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)

    def addr6(self, host: str, ifname: str, address: str, prefixlen: int) -> None:
        ipr = self._ipr[host]
        idx = self.idx(host, ifname)
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen, family=AF_INET6,
                 flags=IFA_F_NODAD)

    def wait_operstate(self, pairs: Iterable[tuple[str, str]], timeout: float = 3.0) -> None:
        """Wait until links are operationally up: before that a veth drops what it is given."""
        todo = list(pairs)
        deadline = time.monotonic() + timeout
        while todo:
            todo = [(h, i) for h, i in todo
                    if self._ipr[h].get_links(self.idx(h, i))[0].get("operstate") != "UP"]
            if not todo:
                return
            if time.monotonic() > deadline:
                raise LabError(f"links not up after {timeout}s: {todo}")
            time.sleep(0.005)
