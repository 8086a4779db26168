"""Text the HA lab writes (pure, no root needed): keepalived's config per router (around the
notify lines `connpin ha keepalived-notify` prints), the program those lines run (connpin,
logging the time of each role change), and the routers' own nft table (SNAT to the uplinks'
virtual addresses, INVALID dropped). conntrackd's config is connpin's: `ha conntrackd-conf`.

Addresses and names come from `ha.HaPlan`; nothing here touches the kernel.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Vrrp:
    """One VRRP instance: its name, interface, virtual router id and virtual address/prefix."""

    name: str
    interface: str
    vrid: int
    vip: str
    prefixlen: int


def keepalived_conf(router_id: str, instances: Sequence[Vrrp], *, priority: int, master: bool,
                    advert_int: float, notify: str) -> str:
    """keepalived.conf for one router: VRRPv3 instances and `notify`, the lines
    `connpin ha keepalived-notify` printed (a vrrp_sync_group of several instances, or notify
    lines that go into the one instance)."""
    out = [
        "global_defs {",
        f"    router_id {router_id}",
        "    vrrp_version 3",
        "    script_user root",
        "    enable_script_security",
        # a router that just became master announces its addresses 3 times, and 3 more 1 s later
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_master_delay 1",
        "}",
        "",
    ]
    inside = [line for line in notify.splitlines() if line.strip().startswith("notify")]
    for v in instances:
        out += [
            f"vrrp_instance {v.name} {{",
            f"    state {'MASTER' if master else 'BACKUP'}",
            f"    interface {v.interface}",
            f"    virtual_router_id {v.vrid}",
            f"    priority {priority}",
            f"    advert_int {advert_int:g}",
            "    virtual_ipaddress {",
            f"        {v.vip}/{v.prefixlen} dev {v.interface}",
            "    }",
            *(inside if len(instances) == 1 else []),
            "}",
            "",
        ]
    if len(instances) > 1:
        out.append(notify)
    return "\n".join(out)


def program(*, python: str, log: str) -> str:
    """The connpin keepalived runs in the lab (`keepalived-notify --program`): logs each role
    change to `log` as `<unix time> <role>` and `<unix time> <role>-done <exit>`, then runs
    this checkout's connpin with keepalived's arguments (its output to `log`.out)."""
    q, py = shlex.quote(log), shlex.quote(python)
    return (
        "#!/bin/sh\n"
        "# connpin's HA lab: connpin for keepalived's notify, with the time of each role change\n"
        'for role; do :; done\n'
        f'echo "$(date +%s.%N) $role" >>{q}\n'
        f"{py} -I -m connpin \"$@\" >>{q}.out 2>&1\n"
        "rc=$?\n"
        f'echo "$(date +%s.%N) $role-done $rc" >>{q}\n'
        "exit $rc\n"
    )


def router_ruleset(snat: dict[str, str], *, lan: str, drop_invalid: bool) -> str:
    """An HA router's own nft table `inet lab`: SNAT of the LAN's connections (`lan`, a network)
    to each uplink's virtual address (interface -> address; topology a; never the router's own
    packets: two routers' VRRP adverts NATed to one address would clash); `drop_invalid` drops
    forwarded and incoming packets conntrack finds INVALID (topology a: a mid-stream TCP packet
    with no entry, nf_conntrack_tcp_loose=0, waits for the synced entry; docs/ha.md)."""
    invalid = "    ct state invalid drop\n" if drop_invalid else ""
    nat = "".join(f'    ip saddr {lan} oifname "{i}" snat ip to {a}\n'
                  for i, a in sorted(snat.items()))
    return (
        "table inet lab {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"{invalid}"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"{invalid}"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{nat}"
        "  }\n"
        "}\n"
    )
