"""Other software's rules, loaded into a lab's router namespace in the shapes those tools write
them (written here from their documentation and sources; see docs/coexistence.md): Tailscale,
kube-proxy, wg-quick and OpenWrt's mwan3. Used by the coexistence tests to prove connpin and
the other tool each keep working, and that `check`/`apply` see a deliberate overlap.

Each loader returns a `Foreign`: its name and the mark whose traffic must still reach the tool's
own routing decision (`probe_dst`, `probe_mark`, `expect_dev`), checked with `route_get`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connpin.lab.core import Lab

HOST = "router"


@dataclass(frozen=True)
class Foreign:
    name: str
    probe_dst: str | None = None  # route_get(probe_dst, probe_mark) must leave by expect_dev
    probe_mark: int = 0
    expect_dev: str | None = None  # None: by main's default route (an uplink)
    unmarked_dev: str | None = None  # ... and without the mark by this one (None: main)


def _ipt_restore(lab: Lab, text: str, family: int = 4) -> None:
    flavour = os.environ.get("CONNPIN_IPTABLES") or "iptables"
    tool = flavour if family == 4 else flavour.replace("iptables", "ip6tables", 1)
    lab.exec(HOST, [f"{tool}-restore", "--noflush"], input=text)


def _veth(lab: Lab, name: str, address: str) -> None:
    """A stand-in for the tool's tunnel device (no tun/wireguard modules in the lab)."""
    peer = f"{name[:10]}-p"
    lab.exec(HOST, ["ip", "link", "add", name, "type", "veth", "peer", "name", peer])
    lab.exec(HOST, ["ip", "addr", "add", address, "dev", name])
    for dev in (name, peer):
        lab.exec(HOST, ["ip", "link", "set", dev, "up"])


def _rule(lab: Lab, *args: str) -> None:
    lab.exec(HOST, ["ip", "rule", "add", *args])


def route_get(lab: Lab, dst: str, mark: int = 0) -> str:
    """The device the router's routing sends `dst` to for a packet with this mark."""
    argv = ["ip", "-j", "route", "get", dst] + (["mark", hex(mark)] if mark else [])
    out = json.loads(lab.exec(HOST, argv).stdout)
    return out[0].get("dev", out[0].get("type", "?"))


# Tailscale (tailscaled's linuxfw with iptables, and its router's policy rules): subnet-route
# traffic from tailscale0 marked 0x40000, tailscaled's own traffic 0x80000, both in 0xff0000.
TAILSCALE_IPT = """*filter
:ts-input - [0:0]
:ts-forward - [0:0]
-A INPUT -j ts-input
-A FORWARD -j ts-forward
-A ts-input -i lo -s 100.100.1.1/32 -j ACCEPT
-A ts-input ! -i tailscale0 -s 100.115.92.0/23 -j RETURN
-A ts-input ! -i tailscale0 -s 100.100.0.0/16 -j DROP
-A ts-forward -i tailscale0 -j MARK --set-xmark 0x40000/0xff0000
-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT
-A ts-forward -o tailscale0 -s 100.100.0.0/16 -j DROP
-A ts-forward -o tailscale0 -j ACCEPT
COMMIT
*nat
:ts-postrouting - [0:0]
-A POSTROUTING -j ts-postrouting
-A ts-postrouting -m mark --mark 0x40000/0xff0000 -j MASQUERADE
COMMIT
"""
TAILSCALE_PEER = "100.100.7.7"


def tailscale(lab: Lab) -> Foreign:
    _veth(lab, "tailscale0", "100.100.1.1/32")
    _ipt_restore(lab, TAILSCALE_IPT)
    # its routing: bypass-marked packets use main (never the tailnet), the rest table 52
    _rule(lab, "priority", "5210", "fwmark", "0x80000/0xff0000", "lookup", "main")
    _rule(lab, "priority", "5230", "fwmark", "0x80000/0xff0000", "lookup", "default")
    _rule(lab, "priority", "5250", "fwmark", "0x80000/0xff0000", "unreachable")
    _rule(lab, "priority", "5270", "lookup", "52")
    lab.exec(HOST, ["ip", "route", "add", f"{TAILSCALE_PEER}/32", "dev", "tailscale0",
                    "table", "52"])
    lab.exec(HOST, ["ip", "route", "add", "100.100.0.0/16", "dev", "tailscale0", "table", "52"])
    lab.exec(HOST, ["ip", "route", "add", "throw", "10.77.0.0/24", "table", "52"])
    return Foreign("tailscale", TAILSCALE_PEER, 0x80000,
                   unmarked_dev="tailscale0")


# kube-proxy (iptables mode): the masquerade bit 0x4000 and the old drop bit 0x8000.
KUBE_IPT = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-DEMO - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp --dport 53 -j KUBE-SVC-DEMO
-A KUBE-SVC-DEMO ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp --dport 53 -j KUBE-MARK-MASQ
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-MARK-DROP - [0:0]
-A INPUT -j KUBE-FIREWALL
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
"""


def kube_proxy(lab: Lab) -> Foreign:
    _ipt_restore(lab, KUBE_IPT)
    return Foreign("kube-proxy")


# wg-quick with a default route (AllowedIPs = 0.0.0.0/0, Table = auto): its socket's fwmark
# 51820 (0xca6c) goes by main, everything else by table 51820 unless main has a more specific
# route.
WG_TABLE = 51820


def wg_quick(lab: Lab) -> Foreign:
    _veth(lab, "wg0", "10.200.0.2/32")
    lab.exec(HOST, ["ip", "route", "add", "default", "dev", "wg0", "table", str(WG_TABLE)])
    _rule(lab, "priority", "32765", "not", "fwmark", str(WG_TABLE), "table", str(WG_TABLE))
    _rule(lab, "priority", "32764", "table", "main", "suppress_prefixlength", "0")
    return Foreign("wg-quick", "192.0.2.99", WG_TABLE, unmarked_dev="wg0")


# OpenWrt mwan3: interface marks in mmx_mask 0x3f00, restored from the conntrack mark, one
# `fwmark 0x100/0x3f00` rule per interface at 2001.. and its table 1.. .
MWAN3_IPT = """*mangle
:mwan3_hook - [0:0]
:mwan3_iface_in_wan1 - [0:0]
:mwan3_policy_balanced - [0:0]
-A PREROUTING -j mwan3_hook
-A OUTPUT -j mwan3_hook
-A mwan3_hook -j CONNMARK --restore-mark --nfmask 0x3f00 --ctmask 0x3f00
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_iface_in_wan1
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_policy_balanced
-A mwan3_hook -j CONNMARK --save-mark --nfmask 0x3f00 --ctmask 0x3f00
-A mwan3_iface_in_wan1 -i mwan0 -m mark --mark 0x0/0x3f00 -j MARK --set-xmark 0x100/0x3f00
-A mwan3_policy_balanced -m mark --mark 0x0/0x3f00 -p tcp --dport 8443 \
-j MARK --set-xmark 0x100/0x3f00
COMMIT
"""


def mwan3(lab: Lab) -> Foreign:
    _veth(lab, "mwan0", "10.201.0.2/24")
    _ipt_restore(lab, MWAN3_IPT.replace("\\\n", ""))
    lab.exec(HOST, ["ip", "route", "add", "default", "dev", "mwan0", "table", "1"])
    _rule(lab, "priority", "2001", "fwmark", "0x100/0x3f00", "lookup", "1")
    _rule(lab, "priority", "2061", "fwmark", "0x3d00/0x3f00", "blackhole")
    _rule(lab, "priority", "2062", "fwmark", "0x3e00/0x3f00", "unreachable")
    return Foreign("mwan3", "192.0.2.99", 0x100, expect_dev="mwan0")


LOADERS = {"tailscale": tailscale, "kube-proxy": kube_proxy, "wg-quick": wg_quick,
           "mwan3": mwan3}
