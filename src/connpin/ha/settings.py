"""The [ha] table of the config -> `HA` (pure): the dedicated sync link conntrackd replicates
over, the topology of the pair, what a promotion does to pinned connections, and where this
router's conntrackd keeps its config, control socket and lock file (docs/ha.md).

`parse` raises `fields.ConfigError` naming `ha.<key>`; `model` calls it for the [ha] table.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from connpin.fields import ConfigError, _choice, _int, _unknown

#: "shared": both routers on the same Ethernet uplinks, VRRP moves the WAN address (pins survive);
#: "own": each router its own uplinks / PPPoE sessions (NATed pinned connections cannot survive).
TOPOLOGIES = ("shared", "own")
#: On promotion: "keep" every replicated connection; "flush-stranded" deletes the pinned ones whose
#: source NAT address this router does not have (they cannot survive: deleted, their next packet
#: is NATed anew and the server resets it, so applications reconnect at once instead of hanging).
ON_PROMOTE = ("keep", "flush-stranded")
DEFAULT_ON_PROMOTE = {"shared": "keep", "own": "flush-stranded"}
DEFAULT_PORT = 3780
# conntrackd's lexer reads a path as one word; sun_path holds 108 bytes with the NUL
_PATH = re.compile(r"^/[A-Za-z0-9_./-]{1,99}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$")


@dataclass(frozen=True)
class HA:
    """This router's half of an HA pair."""

    topology: str  # shared | own
    sync_interface: str  # the dedicated link between the routers
    local: str  # this router's address on it
    peer: str  # the other router's address on it
    port: int = DEFAULT_PORT  # conntrackd's UDP port on the sync link
    on_promote: str = ""  # keep | flush-stranded ("" before parse: by topology)
    conntrackd_config: str = "/etc/conntrackd/conntrackd.conf"
    conntrackd_socket: str = "/var/run/conntrackd.ctl"  # its UNIX control socket
    conntrackd_lockfile: str = "/var/lock/conntrack.lock"
    ignore: tuple[str, ...] = ()  # networks whose connections are not replicated

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.local).version


KEYS = {f.name for f in fields(HA)}
_DEFAULT = {f.name: f.default for f in fields(HA) if isinstance(f.default, str | int | tuple)}


def _unicast(path: str, fld: str, raw: Any) -> str:
    try:
        if not isinstance(raw, str) or "%" in raw or not raw.isascii():
            raise ValueError(raw)
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise ConfigError(path, fld, f"{raw!r} is not an IPv4 or IPv6 address") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or (
            addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
        raise ConfigError(path, fld, f"{raw!r} cannot be an address on the sync link")
    return str(addr)


def _path(path: str, fld: str, raw: Any) -> str:
    if not isinstance(raw, str) or not _PATH.match(raw) or "/../" in raw + "/":
        raise ConfigError(path, fld, f"{raw!r} is not an absolute path of at most 100 "
                          "characters out of letters, digits and '_./-'")
    return raw


def _networks(path: str, fld: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(path, fld, "must be a list of addresses or networks")
    out = []
    for text in raw:
        try:
            if not isinstance(text, str) or "%" in text or not text.isascii():
                raise ValueError(text)
            out.append(str(ipaddress.ip_network(text, strict=True)))
        except ValueError:
            raise ConfigError(path, fld, f"{text!r} is not an address or a network like "
                              "\"192.0.2.0/24\" (host bits zero)") from None
    return tuple(out)


def parse(path: str, raw: Any) -> HA | None:
    """The [ha] table (None when the config has none). Raises ConfigError."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(path, "ha", "must be a table ([ha])")
    _unknown(path, "ha.", raw, KEYS)
    for key in ("topology", "sync_interface", "local", "peer"):
        if key not in raw:
            raise ConfigError(path, f"ha.{key}", "is required in [ha]")
    topology = _choice(path, "ha.topology", raw["topology"], TOPOLOGIES)
    iface = raw["sync_interface"]
    if not isinstance(iface, str) or not _IFNAME.match(iface):
        raise ConfigError(path, "ha.sync_interface", f"{iface!r} is not a valid interface name")
    local = _unicast(path, "ha.local", raw["local"])
    peer = _unicast(path, "ha.peer", raw["peer"])
    if ipaddress.ip_address(local).version != ipaddress.ip_address(peer).version:
        raise ConfigError(path, "ha.peer", f"{peer} and ha.local {local} are not of one family")
    if local == peer:
        raise ConfigError(path, "ha.peer", f"{peer} is ha.local too (the other router's address "
                          "on the sync link)")
    port = _int(path, "ha.port", raw.get("port", DEFAULT_PORT), 1, 65535)
    on_promote = _choice(path, "ha.on_promote",
                         raw.get("on_promote", DEFAULT_ON_PROMOTE[topology]), ON_PROMOTE)
    paths = {k: _path(path, f"ha.{k}", raw.get(k, _DEFAULT[k]))
             for k in ("conntrackd_config", "conntrackd_socket", "conntrackd_lockfile")}
    if len(set(paths.values())) < len(paths):
        raise ConfigError(path, "ha.conntrackd_socket", "the conntrackd config, socket and lock "
                          "file must be three different paths")
    ignore = _networks(path, "ha.ignore", raw.get("ignore", []))
    return HA(topology, iface, local, peer, port, on_promote, ignore=ignore, **paths)
