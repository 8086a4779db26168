"""Health-check target specs: parse and validate `"icmp:9.9.9.9"`, `"tcp:[2001:db8::1]:443"`,
`"dns:9.9.9.9"` into frozen values (pure: no I/O).

A spec is `KIND:ADDRESS[:PORT]` with KIND one of icmp, tcp, dns. Addresses are literal IPv4 or
IPv6 addresses (no host names: a probe must not depend on a resolver that may itself sit behind
the dead uplink; no zone ids: a target is beyond the uplink's gateway, never link-local). An IPv6
address with a port is written in brackets, `tcp:[2001:db8::1]:443`; without a port the brackets
are optional. tcp needs a port; dns defaults to port 53; icmp takes none.

Errors are ValueError with a one-line message; the caller adds the config file and field.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

KINDS = ("icmp", "tcp", "dns")
DNS_PORT = 53

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class Target:
    """One thing to probe through an uplink."""

    kind: str  # "icmp" | "tcp" | "dns"
    address: str  # canonical text form of the address
    port: int = 0  # 0 for icmp

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.address).version

    @property
    def cost(self) -> int:
        """Packets one probe sends: icmp and dns 1; tcp 3 (SYN, then ACK and RST on an answer)."""
        return 3 if self.kind == "tcp" else 1

    def __str__(self) -> str:
        if self.kind == "icmp":
            return f"icmp:{self.address}"
        host = f"[{self.address}]" if self.family == 6 else self.address
        if self.kind == "dns" and self.port == DNS_PORT:
            return f"dns:{self.address}"
        return f"{self.kind}:{host}:{self.port}"


def _address(text: str, spec: str) -> IPAddress:
    if "%" in text:
        raise ValueError(f"{spec!r}: zone ids are not allowed (a target is beyond the gateway)")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{spec!r}: {text!r} is not an IPv4 or IPv6 address "
                         "(host names are not allowed)") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_link_local or addr.is_loopback:
        raise ValueError(f"{spec!r}: {addr} cannot be a health-check target "
                         "(unspecified, multicast, link-local or loopback)")
    if isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address(0xFFFFFFFF):
        raise ValueError(f"{spec!r}: {addr} cannot be a health-check target (broadcast)")
    return addr


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{spec!r}: port {text!r} is not a number in 1..65535")
    return int(text)


def parse(spec: object) -> Target:
    """One spec string -> Target, or ValueError naming what is wrong."""
    if not isinstance(spec, str):
        raise ValueError(f"{spec!r}: a check target is a string like \"icmp:9.9.9.9\"")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"{spec!r}: expected KIND:ADDRESS with KIND one of {', '.join(KINDS)}")
    if not rest or rest != rest.strip():
        raise ValueError(f"{spec!r}: missing or padded address")
    port_text: str | None = None
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        if not close:
            raise ValueError(f"{spec!r}: unclosed '['")
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"{spec!r}: expected ':PORT' after ']'")
            port_text = tail[1:]
        addr = _address(host, spec)
        if addr.version != 6:
            raise ValueError(f"{spec!r}: brackets are for IPv6 addresses only")
    elif rest.count(":") >= 2:  # a bare IPv6 address, no port possible
        addr = _address(rest, spec)
    else:
        host, colon, port_part = rest.partition(":")
        addr = _address(host, spec)
        if colon:
            port_text = port_part
    if kind == "icmp":
        if port_text is not None:
            raise ValueError(f"{spec!r}: icmp takes no port")
        return Target("icmp", str(addr))
    if kind == "tcp":
        if port_text is None:
            example = f"[{addr}]:443" if addr.version == 6 else f"{addr}:443"
            raise ValueError(f"{spec!r}: tcp needs a port, e.g. \"tcp:{example}\"")
        return Target("tcp", str(addr), _port(port_text, spec))
    return Target("dns", str(addr), DNS_PORT if port_text is None else _port(port_text, spec))


def parse_all(specs: object) -> tuple[Target, ...]:
    """A list of specs -> Targets (order kept); duplicates and an empty list are refused."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError("expected a non-empty list of targets like [\"icmp:9.9.9.9\"]")
    out: list[Target] = []
    for i, spec in enumerate(specs):
        try:
            t = parse(spec)
        except ValueError as e:
            raise ValueError(f"[{i}] {e}") from None
        if t in out:
            raise ValueError(f"[{i}] {spec!r}: duplicate of {str(t)!r}")
        out.append(t)
    return tuple(out)
