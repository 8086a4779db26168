"""The lab's address plan (pure, no root needed): namespace names, interface names, and which
addresses and prefixes each host and uplink gets. Part of the contract with the tests.

    lan 10.77.0.2/24 --- 10.77.0.1 lan0 [router]
    uplink k, PPP-like:      router ppp{k-1} 100.64.k.2/32 peer 100.64.k.1 (ISP k's cust0)
    uplink k, Ethernet-like: router wan{k} 198.51.100.(16k+2)/28, gateway .(16k+1) (cust0)
    ISP k up0 192.0.2.(4k+1)/30 --- 192.0.2.(4k+2) isp{k} [net], 203.0.113.10 on net's lo
    spare uplink-like interfaces: 100.100.(i // 250).(i % 250 + 1)/32

IPv6: ISP k delegates 2001:db8:k::/48 (the router is 2001:db8:k::2 on the uplink link, ISP k
2001:db8:k::1, an Ethernet-like ISP's gateway also fe80::1), ISP k's link to net is
2001:db8:f0:k::/64, the LAN fd00:77::/64, the internet host 2001:db8:ff::10; NPTv6 maps the LAN
to 2001:db8:k:77::/64.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping

KINDS = ("ppp", "eth")
MAX_UPLINKS = 15  # eth customer subnets are 198.51.100.(16k)/28
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")


class Addressing:
    """Names and addresses of a lab with these uplink kinds ("ppp" or "eth", ISP k = 1..N)."""

    SERVER = "203.0.113.10"
    ECHO_PORT = 7
    FORWARD_PORT = 8080
    LAN_HOST = "10.77.0.2"
    LAN_GATEWAY = "10.77.0.1"
    SERVER6 = "2001:db8:ff::10"
    LAN_HOST6 = "fd00:77::2"
    LAN_GATEWAY6 = "fd00:77::1"
    LAN_PREFIX6 = "fd00:77::/64"

    def __init__(self, uplinks: Iterable[str], prefix: str):
        self.uplinks = tuple(uplinks)
        if not 1 <= len(self.uplinks) <= MAX_UPLINKS:
            raise ValueError(f"a lab has 1..{MAX_UPLINKS} uplinks, not {len(self.uplinks)}")
        for kind in self.uplinks:
            if kind not in KINDS:
                raise ValueError(f"unknown uplink kind {kind!r} (use {' or '.join(KINDS)})")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"bad lab prefix {prefix!r}")
        self.prefix = prefix
        self.hosts = ("lan", "router", "net", *(f"isp{k}" for k in self.ks))

    @property
    def ks(self) -> range:
        """The ISP numbers, 1-based."""
        return range(1, len(self.uplinks) + 1)

    def ns(self, host: str) -> str:
        """The namespace name of a host: "lan", "router", "net", "isp1".."ispN"."""
        if host not in self.hosts:
            raise ValueError(f"no host {host!r} in this lab (hosts: {', '.join(self.hosts)})")
        return f"{self.prefix}-{host}"

    def kind(self, k: int) -> str:
        return self.uplinks[self._check_k(k) - 1]

    def _check_k(self, k: int) -> int:
        if k not in self.ks:
            raise ValueError(f"no uplink {k} (this lab has {len(self.uplinks)})")
        return k

    def iface(self, k: int) -> str:
        """The router's interface of uplink k: ppp{k-1} (PPP-like) or wan{k} (Ethernet-like)."""
        return f"ppp{k - 1}" if self.kind(k) == "ppp" else f"wan{k}"

    def default_address(self, k: int) -> str:
        """The router's address on uplink k unless the uplink comes up with another one."""
        return f"100.64.{k}.2" if self.kind(k) == "ppp" else f"198.51.100.{16 * k + 2}"

    def gateway(self, k: int) -> str:
        """The ISP's end: the PPP peer or the Ethernet gateway."""
        return f"100.64.{k}.1" if self.kind(k) == "ppp" else f"198.51.100.{16 * k + 1}"

    def customer_range(self, k: int) -> ipaddress.IPv4Network:
        if self.kind(k) == "ppp":
            return ipaddress.IPv4Network(f"100.64.{k}.0/24")
        return ipaddress.IPv4Network(f"198.51.100.{16 * k}/28")

    def isp_link(self, k: int) -> tuple[str, str]:
        """The /30 between ISP k (its up0) and the internet host: (ISP's end, net's end)."""
        self._check_k(k)
        return f"192.0.2.{4 * k + 1}", f"192.0.2.{4 * k + 2}"

    # IPv6 (ipv6=True): fixed addresses per uplink
    def delegated(self, k: int) -> ipaddress.IPv6Network:
        """The prefix ISP k delegates to the router (its IPv6 customer range)."""
        return ipaddress.IPv6Network(f"2001:db8:{self._check_k(k)}::/48")

    def address6(self, k: int) -> str:
        """The router's IPv6 address on uplink k."""
        return f"2001:db8:{self._check_k(k)}::2"

    def isp_address6(self, k: int) -> str:
        """ISP k's global IPv6 address on the uplink link."""
        return f"2001:db8:{self._check_k(k)}::1"

    def gateway6(self, k: int) -> str:
        """ISP k's IPv6 end: the link-local gateway of an Ethernet-like uplink, else its address."""
        return "fe80::1" if self.kind(k) == "eth" else self.isp_address6(k)

    def isp_link6(self, k: int) -> tuple[str, str]:
        """The /64 between ISP k and the internet host: (ISP's end, net's end)."""
        self._check_k(k)
        return f"2001:db8:f0:{k}::1", f"2001:db8:f0:{k}::2"

    def npt_prefix(self, k: int) -> str:
        """Where NPTv6 maps the LAN's fd00:77::/64 on uplink k."""
        return f"2001:db8:{self._check_k(k)}:77::/64"

    def owner(self, ip: str | None, known: Mapping[int, Collection[str]]) -> int | None:
        """Which ISP a public source address belongs to (None for anything else): inside its
        customer range or delegated prefix, or one of the `known` addresses it gave the router."""
        if not ip:
            return None
        try:
            a6 = ipaddress.IPv6Address(ip)
        except ValueError:
            pass
        else:
            return next((k for k in self.ks if a6 in self.delegated(k)), None)
        try:
            a = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        for k in self.ks:
            if a in self.customer_range(k) or ip in known.get(k, ()):
                return k
        return None


def spare_address(i: int) -> str:
    """The /32 of the router's i-th spare uplink-like interface (i = 0..)."""
    return f"100.100.{i // 250}.{i % 250 + 1}"


def ppp_mac(k: int, tail: bytes) -> str:
    """The MAC both ends of PPP-like uplink k share: 02:cb:k and three bytes of `tail`."""
    return ":".join(f"{b:02x}" for b in (0x02, 0xCB, k, *tail[:3]))
