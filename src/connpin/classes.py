"""[[class]] tables: traffic classes whose new connections connpin shares over chosen uplinks
(docs/design.md#choosing-uplinks). The value and its validation. Pure.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from connpin.fields import ConfigError, _choice, _entry

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
#: protocols a [[class]] may name; ports only with the ones that have them
PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite", "icmp", "icmpv6")
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite")
STICKY = ("source",)


@dataclass(frozen=True)
class Class:
    """A traffic class: new connections it matches are shared over its uplinks only.
    Ports are (first, last); networks are normalised text; None/() = not a condition."""

    name: str
    uplinks: tuple[str, ...]
    protocol: str | None = None
    dport: tuple[int, int] | None = None
    sport: tuple[int, int] | None = None
    source: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    sticky: str | None = None  # "source": one LAN host's connections on one uplink


_CLASS_KEYS = {f.name for f in fields(Class)}


def _ports(path: str, fld: str, raw: Any) -> tuple[int, int] | None:
    """`443` or `"5060-5080"` -> (first, last)."""
    if raw is None:
        return None
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,5}-[0-9]{1,5}", raw):
        lo, hi = (int(x) for x in raw.split("-"))
        if 1 <= lo <= hi <= 65535:
            return lo, hi
        raise ConfigError(path, fld, f"{raw!r} is not a port range within 1..65535, low-high")
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 65535:
        return raw, raw
    raise ConfigError(path, fld, f"{raw!r} is not a port (1..65535) or a range like \"5060-5080\"")


def _networks(path: str, fld: str, raw: Any) -> tuple[str, ...]:
    """A network or a list of networks (IPv4 and/or IPv6, host bits zero)."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for text in items:
        try:
            if not isinstance(text, str) or "%" in text or not text.isascii():
                raise ValueError(text)
            out.append(str(ipaddress.ip_network(text, strict=True)))
        except (ValueError, TypeError):
            raise ConfigError(path, fld, f"{text!r} is not a network like \"192.0.2.0/24\" or "
                              "\"2001:db8::/32\" (host bits zero)") from None
    if not out:
        raise ConfigError(path, fld, "is an empty list (leave the key out to match any)")
    return tuple(out)


def parse_class(path: str, i: int, raw: Any, uplinks: set[str]) -> Class:
    where = f"class[{i}]"
    raw = _entry(path, where, raw, _CLASS_KEYS, ("name", "uplinks"))
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name) or name == "default":
        raise ConfigError(path, f"{where}.name", f"{name!r} is not a valid class name "
                          "(lowercase letters, digits, '-', '_'; at most 32; not \"default\")")
    where = f"class[{i}] ({name})"
    names = raw["uplinks"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(path, f"{where}.uplinks", "must be a non-empty list of uplink names")
    for n in names:
        if n not in uplinks:
            raise ConfigError(path, f"{where}.uplinks", f"{n!r} is not a configured uplink")
    if len(set(names)) != len(names):
        raise ConfigError(path, f"{where}.uplinks", "names an uplink twice")
    proto = raw.get("protocol")
    if proto is not None:
        proto = _choice(path, f"{where}.protocol", proto, PROTOCOLS)
    dport = _ports(path, f"{where}.dport", raw.get("dport"))
    sport = _ports(path, f"{where}.sport", raw.get("sport"))
    if (dport or sport) and proto not in PORT_PROTOCOLS:
        raise ConfigError(path, f"{where}.{'dport' if dport else 'sport'}",
                          "needs protocol = one of " + ", ".join(f'"{p}"' for p in PORT_PROTOCOLS))
    source = _networks(path, f"{where}.source", raw.get("source"))
    destination = _networks(path, f"{where}.destination", raw.get("destination"))
    sticky = raw.get("sticky")
    if sticky is not None:
        sticky = _choice(path, f"{where}.sticky", sticky, STICKY)
    return Class(name, tuple(names), proto, dport, sport, source, destination, sticky)
