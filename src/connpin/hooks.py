"""Hook scripts for pppd, NetworkManager, networkd-dispatcher, ifupdown and dhclient: tiny shell
files that hand the interface name to `connpin up/down` as one argument, in a cleared environment.
The name is never interpreted by a shell; connpin validates it. The settings that choose the tools
and the state directory (CONNPIN_IPTABLES, CONNPIN_NFT, CONNPIN_RUN_DIR, ...) are written into the
script at install time, so a hook runs connpin exactly as `apply` did. Or, instead of hooks, a
systemd unit running `connpin watch`, which follows the kernel's events itself (its command line
quoted for systemd, not for a shell). Files connpin did not write are never overwritten or
removed."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MARK = "# installed by connpin"
#: The environment that changes what connpin does, carried into hooks (`env -i` clears the rest).
CARRIED = ("CONNPIN_IPTABLES", "CONNPIN_NFT", "CONNPIN_RUN_DIR", "CONNPIN_LOCK_TIMEOUT",
           "CONNPIN_TOOL_TIMEOUT")


class NotOurs(Exception):
    """A file to be written exists and connpin did not write it."""


@dataclass(frozen=True)
class Hook:
    path: str  # relative to the root
    body: str  # the shell code after the header (uses $CONNPIN)
    sourced: bool = False  # read with `.` by its runner's shell: must never exit


PPP = (
    Hook("etc/ppp/ip-up.d/connpin", '$CONNPIN up -- "$PPP_IFACE"\n'),
    Hook("etc/ppp/ip-down.d/connpin", '$CONNPIN down -- "$PPP_IFACE"\n'),
    # pppd runs ipv6-up/ipv6-down on their own (IPV6CP can come and go without IPCP): connpin
    # reconciles both families on every call, so the same commands fit. `down` on ipv6-down
    # would take the IPv4 side away too; `up` re-reads the kernel instead (the IPv6 default
    # route is gone by then, so only the IPv6 side is removed).
    Hook("etc/ppp/ipv6-up.d/connpin", '$CONNPIN up -- "$PPP_IFACE"\n'),
    Hook("etc/ppp/ipv6-down.d/connpin", '$CONNPIN up -- "$PPP_IFACE"\n'),
)
# NetworkManager runs pre-down only from pre-down.d (the same script, installed there too), and
# passes no interface for actions about the whole machine (connectivity-change, hostname).
_NM = ('[ -n "$1" ] || exit 0\n'
       'case "$2" in\n'
       '  up|dhcp4-change|dhcp6-change|reapply) $CONNPIN up -- "$1" ;;\n'
       '  down|pre-down) $CONNPIN down -- "$1" ;;\n'
       "esac\nexit 0\n")
NETWORKMANAGER = (
    Hook("etc/NetworkManager/dispatcher.d/50-connpin", _NM),
    Hook("etc/NetworkManager/dispatcher.d/pre-down.d/50-connpin", _NM),
)
NETWORKD = (
    Hook("etc/networkd-dispatcher/routable.d/50-connpin", '$CONNPIN up -- "$IFACE"\n'),
    Hook("etc/networkd-dispatcher/off.d/50-connpin", '$CONNPIN down -- "$IFACE"\n'),
    Hook("etc/networkd-dispatcher/no-carrier.d/50-connpin", '$CONNPIN down -- "$IFACE"\n'),
)
# ifupdown (Debian's default network stack) runs if-up.d / if-post-down.d for every interface in
# $IFACE, and once with IFACE=--all after `ifup -a`; lo and --all are not uplinks.
_IFUPDOWN = 'case "$IFACE" in lo|--all|"") exit 0 ;; esac\n'
IFUPDOWN = (
    Hook("etc/network/if-up.d/connpin", _IFUPDOWN + '$CONNPIN up -- "$IFACE"\n'),
    Hook("etc/network/if-post-down.d/connpin", _IFUPDOWN + '$CONNPIN down -- "$IFACE"\n'),
)
# dhclient-script (isc-dhcp-client) *sources* dhclient-exit-hooks.d/* in its own sh: an `exit`
# or `exec` there would end dhclient-script, an assignment would change its variables. So the
# snippet is one subshell running connpin with dhclient's $interface and $reason as arguments;
# connpin validates both and decides (DHCLIENT_REASONS).
DHCLIENT = (Hook("etc/dhcp/dhclient-exit-hooks.d/connpin",
                 '( $CONNPIN dhclient -- "$interface" "$reason" ) || :\n', sourced=True),)
#: dhclient-script's $reason -> connpin's command. `up` re-reads the kernel, so it fits any change
#: of a lease (IPv6 ones too: the IPv4 side is left alone); `down` takes the uplink away at once.
#: Other reasons (PREINIT, MEDIUM, ARPCHECK, ARPSEND, DEPREF6, ...) need nothing.
DHCLIENT_REASONS = {
    **dict.fromkeys(("BOUND", "RENEW", "REBIND", "REBOOT", "TIMEOUT"), "up"),
    **dict.fromkeys(("BOUND6", "RENEW6", "REBIND6", "EXPIRE6", "RELEASE6", "STOP6"), "up"),
    **dict.fromkeys(("EXPIRE", "FAIL", "RELEASE", "STOP"), "down"),
}
SYSTEMD = (Hook("etc/systemd/system/connpin.service", ""),)
KINDS = {"ppp": PPP, "networkmanager": NETWORKMANAGER, "networkd": NETWORKD, "ifupdown": IFUPDOWN,
         "dhclient": DHCLIENT, "systemd": SYSTEMD}
#: What to run after `hooks install --systemd` (printed, never run by connpin).
SYSTEMD_START = "systemctl daemon-reload && systemctl enable --now connpin"


def dhclient_action(reason: str) -> str | None:
    """What a dhclient $reason asks of connpin: "up", "down" or None (nothing)."""
    return DHCLIENT_REASONS.get(reason)


def dhclient_command(iface: str, reason: str) -> str | None:
    """`connpin dhclient IFACE REASON` -> the command to run ("up"/"down"), None for a reason
    that needs nothing (PREINIT, ARPCHECK, ...: nothing said either). Usage on hostile input."""
    import re

    from connpin.errors import Usage
    from connpin.model import valid_ifname

    if not valid_ifname(iface):
        raise Usage(f"{iface!r} is not a valid interface name")
    action = dhclient_action(reason)
    if action is None and not re.fullmatch(r"[A-Z][A-Z0-9]{0,15}", reason):
        raise Usage(f"{reason!r} is not a dhclient reason")
    return action


def command(config: str | None) -> str:
    """How a hook calls connpin: this Python, isolated (-I ignores PYTHON* variables)."""
    argv = [sys.executable, "-I", "-m", "connpin"]
    if config:
        argv += ["-c", os.path.abspath(config)]
    return " ".join(shlex.quote(a) for a in argv)


def carried(environ: Mapping[str, str] | None = None) -> list[str]:
    """NAME=value words (shell-quoted) of the settings in CARRIED that are set."""
    environ = os.environ if environ is None else environ
    return [shlex.quote(f"{k}={environ[k]}") for k in CARRIED if environ.get(k)]


def script(hook: Hook, config: str | None, environ: Mapping[str, str] | None = None) -> str:
    env = " ".join(["env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    *carried(environ)])
    return (
        f"#!/bin/sh\n{MARK}; `connpin hooks remove` deletes it.\n"
        "# The interface name is passed as one quoted argument and validated by connpin;\n"
        "# the environment is cleared and Python runs isolated.\n"
        + ("# Sourced by dhclient-script: connpin runs in a subshell; nothing here exits.\n"
           if hook.sourced else "")
        + hook.body.replace("$CONNPIN", f"exec {env} {command(config)}")
    )


CONTRIB_HEADER = ("# connpin watch as a systemd service. Set ExecStart to where connpin is\n"
                  "# installed, or let `connpin hooks install --systemd` write it for you.")


def systemd_word(word: str) -> str:
    """One word of a systemd command line: "%" and "$" escaped (specifiers, variables), quoted
    when it holds blanks, quotes or backslashes. A word with a newline or another control
    character cannot be written into a unit: ValueError."""
    if not word.isprintable():
        raise ValueError(f"{word!r} holds a control character; it cannot go into a systemd unit")
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(c.isspace() or c in "\\\"';" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: The sandbox of the unit, as tight as what `watch` does allows: netlink and nft/iptables need
#: CAP_NET_ADMIN (iptables-legacy also a raw socket: CAP_NET_RAW); it writes only /proc/sys/net
#: (ProtectSystem=strict leaves /proc writable; ProtectKernelTunables would not), its state in
#: /run/connpin (kept across restarts: hooks and `apply` share it) and, for iptables-legacy, the
#: host-wide /run/xtables.lock (created unsandboxed first, so the bind mount finds it).
HARDENING = (
    "RuntimeDirectory=connpin\n"
    "RuntimeDirectoryPreserve=yes\n"
    "ExecStartPre=+/bin/touch /run/xtables.lock\n"
    "ReadWritePaths=-/run/xtables.lock\n"
    "ProtectSystem=strict\n"
    "ProtectHome={home}\n"
    "PrivateTmp=yes\n"
    "PrivateDevices=yes\n"
    "PrivateMounts=yes\n"
    "UMask=0077\n"
    "NoNewPrivileges=yes\n"
    "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW\n"
    "RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6\n"
    "RestrictNamespaces=yes\n"
    "RestrictRealtime=yes\n"
    "RestrictSUIDSGID=yes\n"
    "LockPersonality=yes\n"
    "ProtectKernelLogs=yes\n"
    "ProtectKernelModules=yes\n"
    "ProtectControlGroups=yes\n"
    "ProtectClock=yes\n"
    "ProtectHostname=yes\n"
    "SystemCallArchitectures=native\n"
    "SystemCallFilter=@system-service\n"
)


def unit(config: str | None, exe: str | None = None, header: str | None = None) -> str:
    """The systemd unit of `connpin watch` (Type=notify: ready once the first converge ran).

    Ordered after nftables.service, whose boot-time `flush ruleset` must come first (a later
    flush is an nf_tables event the daemon repairs at once). Nothing else: uplinks already up
    when it starts are pinned by its first converge."""
    argv = [exe] if exe else [sys.executable, "-I", "-m", "connpin"]
    if config:
        argv += ["-c", os.path.abspath(config)]
    cmd = " ".join(systemd_word(a) for a in argv)
    # a connpin (or config) living in a home directory must stay readable by the service
    home = "read-only" if any(a.startswith(("/root/", "/home/", "/run/user/")) for a in argv) \
        else "yes"
    return (
        (header or f"{MARK}; `connpin hooks remove --systemd` deletes it.") + "\n"
        "[Unit]\n"
        "Description=connpin: connection pinning that follows the uplinks (rtnetlink events)\n"
        "Documentation=man:ip-rule(8) man:nft(8)\n"
        "After=nftables.service\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        f"ExecStart={cmd} watch\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "WatchdogSec=30\n"
        + HARDENING.format(home=home) +
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _unit(config: str | None) -> str:
    try:
        return unit(config)
    except ValueError as e:
        from connpin.model import ConfigError

        raise ConfigError(config or sys.executable, "", f"cannot go into a systemd unit: {e}"
                          ) from None


def _ours(path: str) -> bool | None:
    """True: connpin wrote it (its marker line); False: someone else's; None: no such file."""
    try:
        with open(path, "rb") as f:
            return MARK.encode() in f.read(4096)
    except FileNotFoundError:
        return None
    except OSError:
        return False


def install(kinds: list[str], root: str = "/", config: str | None = None) -> list[str]:
    """Write the hooks of `kinds`. Raises NotOurs, before writing anything, when one of the
    files exists and connpin did not write it; ConfigError when `config` cannot go into a
    systemd unit."""
    texts = {}
    for kind in kinds:
        for hook in KINDS[kind]:
            path = os.path.join(root, hook.path)
            if _ours(path) is False:
                raise NotOurs(f"{path} exists and was not written by connpin; not overwritten "
                              "(move it away, or merge by hand)")
            texts[path] = (kind, _unit(config) if kind == "systemd" else script(hook, config))
    written = []
    for path, (kind, text) in texts.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".connpin-new"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644 if kind == "systemd" else 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def remove(kinds: list[str], root: str = "/") -> list[str]:
    """Delete only files that connpin wrote (they carry its marker line)."""
    removed = []
    for kind in kinds:
        for hook in KINDS[kind]:
            path = os.path.join(root, hook.path)
            if not _ours(path):
                continue
            os.unlink(path)
            removed.append(path)
    return removed
