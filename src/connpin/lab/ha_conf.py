"""Text the HA lab writes (pure, no root needed): keepalived's config per router, the notify
script keepalived runs on a role change, the minimal conntrackd config the lab uses when
connpin's own renderer (`connpin ha conntrackd-conf`) is not available, and the routers' own
nft table (SNAT to the uplinks' virtual addresses, INVALID dropped or reset).

Addresses and names come from `ha.HaPlan`; nothing here touches the kernel.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
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
    """keepalived.conf for one router: VRRPv3 instances in one sync group (several) or one
    instance, each calling `notify` (argv: GROUP|INSTANCE NAME STATE PRIORITY)."""
    adv = f"{advert_int:g}"
    out = [
        "global_defs {",
        f"    router_id {router_id}",
        "    vrrp_version 3",
        "    script_user root",
        # a lab router that just became master says so twice, then stops (keepalived's default
        # refreshes nothing; one more burst 1 s later covers a lost first one)
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_master_delay 1",
        "}",
        "",
    ]
    if len(instances) > 1:
        out += ["vrrp_sync_group ha {", "    group {"]
        out += [f"        {v.name}" for v in instances]
        out += ["    }", f"    notify {shlex.quote(notify)}", "}", ""]
    for v in instances:
        out += [
            f"vrrp_instance {v.name} {{",
            f"    state {'MASTER' if master else 'BACKUP'}",
            f"    interface {v.interface}",
            f"    virtual_router_id {v.vrid}",
            f"    priority {priority}",
            f"    advert_int {adv}",
            "    virtual_ipaddress {",
            f"        {v.vip}/{v.prefixlen} dev {v.interface}",
            "    }",
        ]
        if len(instances) == 1:
            out.append(f"    notify {shlex.quote(notify)}")
        out += ["}", ""]
    return "\n".join(out)


def notify_script(*, log: str, promote: Iterable[Sequence[str]],
                  demote: Iterable[Sequence[str]], fault: Iterable[Sequence[str]]) -> str:
    """keepalived's notify script: logs `<unix time> <STATE>` to `log` (and `<time> <STATE>-done`
    once the role's commands ran), then runs the commands of the new role."""
    def lines(cmds: Iterable[Sequence[str]]) -> str:
        return "".join(f"    {' '.join(shlex.quote(a) for a in c)} >>{shlex.quote(log)}.out "
                       "2>&1\n" for c in cmds)

    q = shlex.quote(log)
    return (
        "#!/bin/sh\n"
        "# keepalived notify (written by connpin's HA lab): $1 GROUP|INSTANCE, $2 name,\n"
        "# $3 MASTER|BACKUP|FAULT|STOP, $4 priority\n"
        f'echo "$(date +%s.%N) $3" >>{q}\n'
        'case "$3" in\n'
        f"  MASTER)\n{lines(promote)}    ;;\n"
        f"  BACKUP)\n{lines(demote)}    ;;\n"
        f"  FAULT)\n{lines(fault)}    ;;\n"
        "esac\n"
        f'echo "$(date +%s.%N) $3-done" >>{q}\n'
    )


def conntrackd_conf(*, local: str, peer: str, interface: str, lock: str, socket: str,
                    log: str, ignore: Iterable[str]) -> str:
    """A minimal conntrackd.conf: FTFW over the sync link, external cache, per-instance lock
    and UNIX socket; the routers' own addresses are not synced."""
    ignored = "".join(f"\t\t\tIPv4_address {a}\n" for a in ignore)
    return (
        "Sync {\n"
        "\tMode FTFW {\n"
        "\t\tDisableExternalCache Off\n"
        "\t\tCommitTimeout 1800\n"
        "\t\tPurgeTimeout 5\n"
        "\t}\n"
        "\tUDP {\n"
        f"\t\tIPv4_address {local}\n"
        f"\t\tIPv4_Destination_Address {peer}\n"
        "\t\tPort 3780\n"
        f"\t\tInterface {interface}\n"
        "\t\tSndSocketBuffer 1249280\n"
        "\t\tRcvSocketBuffer 1249280\n"
        "\t\tChecksum on\n"
        "\t}\n"
        "}\n"
        "General {\n"
        "\tHashSize 8192\n"
        "\tHashLimit 65536\n"
        f"\tLogFile {log}\n"
        "\tSyslog off\n"
        f"\tLockFile {lock}\n"
        "\tUNIX {\n"
        f"\t\tPath {socket}\n"
        "\t}\n"
        "\tNetlinkBufferSize 2097152\n"
        "\tNetlinkBufferSizeMaxGrowth 8388608\n"
        "\tFilter From Userspace {\n"
        "\t\tProtocol Accept {\n\t\t\tTCP\n\t\t\tUDP\n\t\t\tICMP\n\t\t}\n"
        "\t\tAddress Ignore {\n"
        "\t\t\tIPv4_address 127.0.0.1\n"
        f"{ignored}"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )


def router_ruleset(snat: dict[str, str], *, lan: str, invalid: str) -> str:
    """An HA router's own nft table `inet lab`: SNAT of the LAN's connections (`lan`, a network)
    to each uplink's virtual address (interface -> address; topology a; never the router's own
    packets: two routers' VRRP adverts NATed to one address would clash), and what happens to
    a forwarded packet conntrack finds INVALID (a mid-stream TCP packet with no entry,
    nf_conntrack_tcp_loose=0): "drop" (topology a: the sender retransmits once the synced
    entry is committed) or "reset" (topology b: the connection cannot survive, fail fast)."""
    verdict = {"drop": "drop", "reset": "reject with tcp reset"}[invalid]
    nat = "".join(f'    ip saddr {lan} oifname "{i}" snat ip to {a}\n'
                  for i, a in sorted(snat.items()))
    return (
        "table inet lab {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    ct state invalid meta l4proto tcp {verdict}\n"
        "    ct state invalid drop\n"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        "    ct state invalid drop\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{nat}"
        "  }\n"
        "}\n"
    )
