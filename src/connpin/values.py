"""The values the core passes around: what the kernel shows (Link, Observed, Recorded),
connpin's ip rules and routes (Rule, Route) and one uplink interface's wanted state
(UplinkState). Pure.

A leaf of the core: `desired` computes these and the renderers (render/nft, render/iptables)
read them, so neither imports the other's module to name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connpin.alloc import Slot
from connpin.const import MAIN_TABLE


@dataclass(frozen=True)
class Link:
    """An interface as the kernel shows it (only what the decisions need)."""

    name: str
    index: int
    up: bool
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observed:
    """What the kernel shows that the desired state depends on."""

    links: dict[str, Link] = field(default_factory=dict)
    gateways: dict[str, str] = field(default_factory=dict)  # iface -> main default gateway
    sysctls: dict[str, int] = field(default_factory=dict)  # "conf/<iface>/<key>" -> value
    imagined: bool = False  # True for `plan`: every exact uplink is assumed up
    # iface -> gateway of its best IPv6 default route in main (None: a `dev` route)
    gateways6: dict[str, str | None] = field(default_factory=dict)
    ipv6: bool = True  # the kernel has IPv6 (rules of family inet6 can exist)
    nft: bool = True  # the nft tool can be run (pinning.backend = "auto" needs to know)
    # prefixes where connections start on this side (local addresses, main's non-uplink routes):
    # tells outbound pinned connections from those that arrived on an uplink
    inside: tuple[str, ...] = ()
    # the slice connpin recorded at its last committed apply (None: nothing recorded)
    recorded: Recorded | None = None


@dataclass(frozen=True)
class Recorded:
    """The slice connpin installed into at its last committed apply, as it recorded it: a
    change of pinning.* since leaves objects there that are still connpin's own."""

    rules: range | None = None  # rule priorities
    tables: range | None = None  # routing table ids
    nft_table: str | None = None
    backend: str = "nftables"  # where the ruleset was loaded: nftables | iptables


@dataclass(frozen=True)
class Rule:
    """One ip rule in connpin's band; str() is the iproute2 spelling."""

    priority: int
    action: str  # lookup | goto | unreachable | nop
    table: int = 0
    fwmark: int | None = None
    fwmask: int | None = None
    goto: int | None = None
    suppress_prefixlength: int | None = None
    family: int = 4  # 4 or 6: `ip rule` or `ip -6 rule`

    @property
    def ip(self) -> str:
        """The iproute2 command prefix of this family."""
        return "ip -6" if self.family == 6 else "ip"

    def key(self) -> tuple:
        """Sort key (IPv4 first, then kernel order); unset fields sort first, never compared
        with None."""
        u = -1  # unset
        return (self.family, self.priority, self.action, self.table,
                u if self.fwmark is None else self.fwmark,
                u if self.fwmask is None else self.fwmask,
                u if self.goto is None else self.goto,
                u if self.suppress_prefixlength is None else self.suppress_prefixlength)

    def __str__(self) -> str:
        s = f"priority {self.priority}"
        if self.fwmark is not None:
            s += f" fwmark {self.fwmark:#x}/{self.fwmask:#x}"
        if self.action == "lookup":
            s += f" lookup {'main' if self.table == MAIN_TABLE else self.table}"
            if self.suppress_prefixlength is not None:
                s += f" suppress_prefixlength {self.suppress_prefixlength}"
        elif self.action == "goto":
            s += f" goto {self.goto}"
        else:
            s += f" {self.action}"
        return s


@dataclass(frozen=True)
class Route:
    """A route in one of connpin's tables (default, or drift); str() is the iproute2 spelling."""

    table: int
    oif: str
    gateway: str | None = None  # None: point-to-point (`default dev`)
    dst: str = "default"  # only drift found in connpin's tables is ever anything else
    family: int = 4  # 4 or 6

    @property
    def ip(self) -> str:
        return "ip -6" if self.family == 6 else "ip"

    def key(self) -> tuple:
        return (self.family, self.table, self.dst, self.oif, self.gateway or "")

    def __str__(self) -> str:
        via = f"via {self.gateway} " if self.gateway else ""
        return f"{self.dst} {via}dev {self.oif} table {self.table}"


@dataclass(frozen=True)
class UplinkState:
    """One uplink interface and what connpin wants for it."""

    uplink: str
    interface: str
    slot: Slot
    up: bool
    reason: str  # why it is up or down, for status and plan
    route: Route | None
    masquerade: bool
    up6: bool = False  # IPv6: independent of IPv4 (an uplink without IPv6 is IPv4-only)
    reason6: str = ""
    route6: Route | None = None
    nptv6: tuple[tuple[str, str], ...] = ()
    masquerade6: bool = False


@dataclass(frozen=True)
class Counters:
    """nft counters of one uplink, keyed by its mark in connpin's table (read per scrape, never
    from a conntrack dump, so reading them costs the same at 1M connections as at 10)."""

    new: int = 0  # new connections pinned to the uplink (chosen by connpin or by the routes)
    packets_out: int = 0  # packets of its pinned connections leaving by it
    bytes_out: int = 0
    packets_in: int = 0  # packets of its pinned connections arriving from it
    bytes_in: int = 0
    resets: int = 0  # on_down = "reset": packets of its pinned connections answered with a reset


def counter_name(kind: str, u: UplinkState) -> str:
    """The name of one of an uplink interface's named nft counters, `KIND_INDEX_UPLINK`
    (`out_236_fibre`; uplink names never hold spaces): `split_counter` reads it back."""
    return f"{kind}_{u.slot.index}_{u.uplink}"


def split_counter(name: str, kinds: tuple[str, ...]) -> tuple[str, int, str] | None:
    """A per-uplink counter's name `KIND_INDEX_UPLINK` (`out_236_fibre`) -> (kind, index,
    uplink), for the kinds given; None for any other name (not connpin's, or another kind)."""
    kind, _, rest = name.partition("_")
    index, _, uplink = rest.partition("_")
    if kind not in kinds or not index.isdigit() or not uplink:
        return None
    return kind, int(index), uplink
