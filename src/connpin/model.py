"""Config as typed, frozen values, loaded from TOML with errors that name file, field and problem.

Pure: nothing here touches the machine. Validation that needs the whole config (collisions,
ranges) lives here too, so a bad config is refused before anything is observed or changed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from connpin import alloc
from connpin.classes import Class, parse_class
from connpin.fields import ConfigError, _bool, _choice, _entry, _int, _unknown
from connpin.ha import settings as ha_settings
from connpin.health import settings as health_settings
from connpin.health import targets as health_targets
from connpin.health.passive import PassiveParams
from connpin.health.tracker import Params as HealthParams
from connpin.metrics import settings as metrics_settings

DEFAULT_CONFIG = "/etc/connpin/connpin.toml"

#: Rule priorities connpin owns: [rule_priority, rule_priority + RULE_BAND). The mark tree
#: (desired.tree_rules) takes 2n-1 of them for n uplink interfaces, 4 are fixed.
RULE_BAND = 1024
#: Most uplink interfaces the rule band has room for.
MAX_INTERFACES = (RULE_BAND - 4) // 2
#: Routing tables the kernel reserves: unspec, default, main, local.
RESERVED_TABLES = frozenset({0, 253, 254, 255})
#: The default pinning.mark_mask: the top byte, which no well-known mark user on routers touches
#: (Tailscale holds 0x00ff0000, mwan3 0x3f00, kube-proxy 0xc000; docs/coexistence.md).
DEFAULT_MARK_MASK = 0xFF000000
#: ip rule priorities that are the kernel's defaults (local, main, default).
RESERVED_PRIORITIES = frozenset({0, 32766, 32767})

_UPLINK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# The kernel (dev_valid_name) takes 1..15 bytes except "/", ":" and whitespace; connpin takes the
# conservative subset that real interfaces use, so a name can never break nft quoting or a shell:
# no "+" (iptables reads a trailing + as a wildcard) and no leading "-" (an option to iptables).
_IFNAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$")
#: Largest config file read (a real one is a few KB; /dev/zero would never end).
MAX_CONFIG_BYTES = 1 << 20


def valid_ifname(name: str) -> bool:
    """True when the kernel would accept `name` as an interface name."""
    return (
        isinstance(name, str)
        and name not in (".", "..")
        and bool(_IFNAME.match(name))
        and len(name.encode()) <= 15
        and name.isprintable()
    )


@dataclass(frozen=True)
class Uplink:
    """One configured uplink. `interface` is an exact name or a prefix pattern like "ppp*"."""

    name: str
    interface: str
    gateway: str | None = None  # None = point-to-point (`default dev`), "auto" = learn from main
    masquerade: bool = False
    mark: int | None = None  # explicit mark value inside the mask (optional)
    priority: int = 0  # lower is preferred; 0 = not given (parse sets the position in the file)
    failback: str | None = None  # None: pinning.failback
    on_down: str = "keep"  # keep | flush | reset: its pinned connections when it goes down/dead
    # IPv6: None = like `gateway` (dev for point-to-point, learned from main's IPv6 default route
    # for Ethernet-like uplinks); "auto" = learned; else a static (usually link-local) gateway.
    gateway6: str | None = None
    # NPTv6 (stateful prefix translation): ((inside prefix, outside prefix), ...)
    nptv6: tuple[tuple[str, str], ...] = ()
    # IPv6 masquerade (NAT66) is its own switch: delegated prefixes usually need no NAT at all.
    masquerade6: bool = False
    # share of new connections inside its tier (`priority`) when connpin chooses uplinks
    # (docs/design.md#choosing-uplinks); 0 = not given (1 once any uplink or [[class]] asks)
    weight: int = 0
    # health checks (docs/health.md): probed through this uplink by `connpin watch`
    check: tuple[health_targets.Target, ...] = ()

    @property
    def ethernet6(self) -> bool:
        """Its IPv6 default route goes via a gateway (not `dev`)."""
        return self.gateway6 is not None or self.gateway is not None

    @property
    def is_pattern(self) -> bool:
        return self.interface.endswith("*")

    @property
    def prefix(self) -> str:
        return self.interface[:-1] if self.is_pattern else self.interface

    def matches(self, ifname: str) -> bool:
        if self.is_pattern:
            return (ifname.startswith(self.prefix) and len(ifname) > len(self.prefix)
                    and valid_ifname(ifname))
        return ifname == self.interface


@dataclass(frozen=True)
class Pinning:
    """The slice of the machine connpin owns, and how it behaves."""

    mark_mask: int = DEFAULT_MARK_MASK
    table_base: int = 1000
    rule_priority: int = 10000
    sysctl: bool = True  # set rp_filter loose and src_valid_mark on uplinks
    nft_table: str = "connpin"
    failback: str = "keep"  # keep | flush | flush-idle (default for every uplink)
    failback_idle: int = 30  # seconds, for flush-idle
    backend: str = "nftables"  # nftables | iptables | auto (iptables when nft is missing)
    allow_shared_bits: int = 0  # mark bits others may write/match too (docs/coexistence.md)
    allow_empty: bool = False  # `watch`: a reload without [[uplink]] may remove all pinning

    @property
    def rule_range(self) -> range:
        """The ip rule priorities connpin owns."""
        return range(self.rule_priority, self.rule_priority + RULE_BAND)

    @property
    def table_range(self) -> range:
        """The routing table ids connpin owns (one per mark value)."""
        return alloc.table_range(self.mark_mask, self.table_base)


@dataclass(frozen=True)
class Config:
    pinning: Pinning = field(default_factory=Pinning)
    uplinks: tuple[Uplink, ...] = ()
    path: str = "<config>"
    classes: tuple[Class, ...] = ()  # [[class]], in file order (the first match wins)

    @property
    def selecting(self) -> bool:
        """connpin chooses new connections' uplinks: a weight, a [[class]], or a `check` (only
        connpin's choice can move new connections off a dead uplink)."""
        return bool(self.classes) or any(u.weight or u.check for u in self.uplinks)
    health: HealthParams = field(default_factory=HealthParams)  # [health]
    passive: PassiveParams = field(default_factory=PassiveParams)  # [health] passive*
    ha: ha_settings.HA | None = None  # [ha]: one router of an HA pair (docs/ha.md)
    metrics: metrics_settings.Metrics | None = None  # [metrics]: counters and where to publish

    def uplink(self, name: str) -> Uplink | None:
        return next((u for u in self.uplinks if u.name == name), None)

    @cached_property
    def _exact(self) -> dict[str, Uplink]:
        """Uplinks by exact interface name: observing asks `match` for every link and route,
        and scanning every uplink per question made observing quadratic in the uplinks."""
        out: dict[str, Uplink] = {}
        for u in self.uplinks:
            if not u.is_pattern:
                out.setdefault(u.interface, u)
        return out

    @cached_property
    def _patterns(self) -> tuple[Uplink, ...]:
        return tuple(u for u in self.uplinks if u.is_pattern)

    def match(self, ifname: str) -> Uplink | None:
        """The uplink an interface belongs to (exact names win over patterns)."""
        exact = self._exact.get(ifname)
        return exact or next((u for u in self._patterns if u.matches(ifname)), None)

    def failback(self, uplink: Uplink) -> str:
        """What happens to connections of less preferred uplinks when `uplink` comes up."""
        return uplink.failback or self.pinning.failback


# The config file's keys and defaults are the dataclasses' fields: written once, above.
_PINNING_KEYS = {f.name for f in fields(Pinning)}
_PINNING = Pinning()
BACKENDS = ("nftables", "iptables", "auto")
_UPLINK_KEYS = {f.name for f in fields(Uplink)}
_UPLINK = {f.name: f.default for f in fields(Uplink) if f.default is not MISSING}
MAX_WEIGHT = 1000
FAILBACK = ("keep", "flush", "flush-idle")
ON_DOWN = ("keep", "flush", "reset")


def load(path: str | Path) -> Config:
    """Read and validate a config file. Raises ConfigError."""
    p = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(p, "", "no such file (use -c PATH or CONNPIN_CONFIG)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(p, "", f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(p, "", "not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(p, "", f"{st.st_size} bytes; a config is at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(p, "", f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(p, "", f"more than {MAX_CONFIG_BYTES} bytes")
    return loads(data.decode("utf-8", errors="replace"), p)


def loads(text: str, path: str = "<config>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(path, "", "invalid TOML: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - any parser failure is the file's problem
        raise ConfigError(path, "", f"invalid TOML: {type(e).__name__}: {e}") from None
    try:
        return parse(doc, path)
    except RecursionError:
        raise ConfigError(path, "", "nested too deeply") from None


def parse(doc: dict, path: str = "<config>") -> Config:
    """Validate a decoded TOML document into a Config."""
    _unknown(path, "", doc, {"pinning", "uplink", "class", "health", "ha", "metrics"})
    raw = doc.get("pinning", {})
    if not isinstance(raw, dict):
        raise ConfigError(path, "pinning", "must be a table ([pinning])")
    _unknown(path, "pinning.", raw, _PINNING_KEYS)

    def get(key: str) -> Any:  # a key of [pinning], or its default
        return raw.get(key, getattr(_PINNING, key))

    mask = _int(path, "pinning.mark_mask", get("mark_mask"), 1, 0xFFFFFFFF)
    table_base = _int(path, "pinning.table_base", get("table_base"), 1, 0xFFFFFFFE)
    prio = _int(path, "pinning.rule_priority", get("rule_priority"), 1, 32765)
    sysctl = _bool(path, "pinning.sysctl", get("sysctl"))
    nft_table = get("nft_table")
    if not isinstance(nft_table, str) or not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]{0,31}$", nft_table):
        raise ConfigError(path, "pinning.nft_table", f"{nft_table!r} is not a valid nft table name")
    failback = _choice(path, "pinning.failback", get("failback"), FAILBACK)
    idle = _int(path, "pinning.failback_idle", get("failback_idle"), 1, 86400 * 7)
    backend = _choice(path, "pinning.backend", get("backend"), BACKENDS)
    shared = _int(path, "pinning.allow_shared_bits", get("allow_shared_bits"), 0, 0xFFFFFFFF)
    allow_empty = _bool(path, "pinning.allow_empty", get("allow_empty"))
    pinning = Pinning(mask, table_base, prio, sysctl, nft_table, failback, idle, backend, shared,
                      allow_empty)

    raws = doc.get("uplink", [])
    if not isinstance(raws, list):
        raise ConfigError(path, "uplink", "must be an array of tables ([[uplink]])")
    uplinks = tuple(_uplink(path, i, u, pinning) for i, u in enumerate(raws))
    raws = doc.get("class", [])
    if not isinstance(raws, list):
        raise ConfigError(path, "class", "must be an array of tables ([[class]])")
    names = {u.name for u in uplinks}
    classes = tuple(parse_class(path, i, c, names) for i, c in enumerate(raws))
    config = Config(pinning, uplinks, path, classes,
                    health=(hp := _health(path, doc.get("health", {})))[0], passive=hp[1],
                    ha=ha_settings.parse(path, doc.get("ha")),
                    metrics=metrics_settings.parse(path, doc.get("metrics")))
    _check_whole(config)
    _check_selection(config)
    return config


def _uplink(path: str, i: int, raw: Any, pinning: Pinning) -> Uplink:
    where = f"uplink[{i}]"
    raw = _entry(path, where, raw, _UPLINK_KEYS, ("name", "interface"))
    name = raw["name"]
    if not isinstance(name, str) or not _UPLINK_NAME.match(name):
        raise ConfigError(
            path, f"{where}.name",
            f"{name!r} is not a valid uplink name (lowercase letters, digits, '-', '_'; "
            "at most 32, starting with a letter or digit)",
        )
    where = f"uplink[{i}] ({name})"
    iface = raw["interface"]
    body = iface[:-1] if isinstance(iface, str) and iface.endswith("*") else iface
    if isinstance(iface, str) and "+" in iface:
        raise ConfigError(path, f"{where}.interface", f"{iface!r}: '+' is not allowed (iptables "
                          "reads a trailing + as a wildcard; a pattern ends with '*', like "
                          "\"ppp*\")")
    if not isinstance(iface, str) or not valid_ifname(body):
        raise ConfigError(
            path, f"{where}.interface",
            f"{iface!r} is not a valid interface name or pattern (1-15 letters, digits or "
            "'_.-', not starting with '-'; a pattern ends with a single '*', like \"ppp*\")",
        )
    gateway = _gateway(path, f"{where}.gateway", raw.get("gateway"), 4)
    masq = _bool(path, f"{where}.masquerade", raw.get("masquerade", _UPLINK["masquerade"]))
    mark = raw.get("mark")
    if mark is not None:
        mark = _int(path, f"{where}.mark", mark, 1, 0xFFFFFFFF)
        if mark & ~pinning.mark_mask:
            raise ConfigError(
                path, f"{where}.mark",
                f"{mark:#010x} has bits outside pinning.mark_mask {pinning.mark_mask:#010x}",
            )
        if iface.endswith("*"):
            raise ConfigError(
                path, f"{where}.mark", "cannot be set on a pattern uplink (each interface "
                "that matches gets its own mark)",
            )
    priority = _int(path, f"{where}.priority", raw.get("priority", i + 1), 1, 1_000_000)
    failback = raw.get("failback")
    if failback is not None:
        failback = _choice(path, f"{where}.failback", failback, FAILBACK)
    on_down = _choice(path, f"{where}.on_down", raw.get("on_down", _UPLINK["on_down"]), ON_DOWN)
    gateway6 = _gateway(path, f"{where}.gateway6", raw.get("gateway6"), 6)
    nptv6 = _nptv6(path, f"{where}.nptv6", raw.get("nptv6", {}))
    masq6 = _bool(path, f"{where}.masquerade6", raw.get("masquerade6", _UPLINK["masquerade6"]))
    weight = raw.get("weight", _UPLINK["weight"])
    if "weight" in raw:
        weight = _int(path, f"{where}.weight", weight, 1, MAX_WEIGHT)
    try:
        check = health_targets.parse_all(raw["check"]) if "check" in raw else ()
    except ValueError as e:
        raise ConfigError(path, f"{where}.check", str(e)) from None
    return Uplink(name, iface, gateway, masq, mark, priority, failback, on_down, gateway6,
                  nptv6, masq6, weight, check)


def _health(path: str, raw: Any) -> tuple[HealthParams, PassiveParams]:
    if not isinstance(raw, dict):
        raise ConfigError(path, "health", "must be a table ([health])")
    _unknown(path, "health.", raw, set(health_settings.KEYS))
    try:
        return health_settings.params(raw), health_settings.passive(raw)
    except health_settings.Invalid as e:
        raise ConfigError(path, f"health.{e.key}" if e.key else "health", e.message) from None


def _address(text: Any, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Address text of one family, strictly: a string, no IPv6 zone id ("%eth0": meaningless in
    config, and free text that would reach the ruleset). Raises ValueError."""
    if not isinstance(text, str) or "%" in text or not text.isascii():
        raise ValueError(text)
    return ipaddress.IPv4Address(text) if family == 4 else ipaddress.IPv6Address(text)


def _gateway(path: str, fld: str, raw: Any, family: int) -> str | None:
    """None, "auto", or a unicast address that can be a next hop."""
    if raw is None or raw == "auto":
        return raw
    kind = "IPv4" if family == 4 else "IPv6"
    try:
        addr = _address(raw, family)
    except ValueError:
        zone = " (zone ids like %eth0 are not allowed: the uplink's interface is the scope)" \
            if isinstance(raw, str) and "%" in raw else ""
        raise ConfigError(path, fld, f"{raw!r} is not an {kind} address or \"auto\"{zone}"
                          ) from None
    bad = ("unspecified" if addr.is_unspecified else "multicast" if addr.is_multicast
           else "loopback" if addr.is_loopback
           else "broadcast" if family == 4 and addr == ipaddress.IPv4Address("255.255.255.255")
           else "in 0.0.0.0/8" if family == 4 and addr in ipaddress.IPv4Network("0.0.0.0/8")
           else None)
    if bad:
        raise ConfigError(path, fld, f"{raw!r} cannot be a gateway ({bad} address)")
    return str(addr)


def _nptv6(path: str, fld: str, raw: Any) -> tuple[tuple[str, str], ...]:
    """`{ "fd00:77::/64" = "2001:db8:1:77::/64" }`: inside prefix -> outside prefix, same length."""
    if not isinstance(raw, dict):
        raise ConfigError(path, fld,
                          'must be a table like { "fd00:77::/64" = "2001:db8:1:77::/64" }')
    out = []
    for inside, outside in raw.items():
        nets = []
        for text in (inside, outside):
            try:
                if not isinstance(text, str) or "%" in text or not text.isascii():
                    raise ValueError(text)
                nets.append(ipaddress.IPv6Network(text, strict=True))
            except (ValueError, TypeError):
                raise ConfigError(path, fld, f"{text!r} is not an IPv6 prefix like "
                                  "\"2001:db8:1:77::/64\" (host bits zero)") from None
        if nets[0].prefixlen != nets[1].prefixlen:
            raise ConfigError(path, fld, f"{inside} and {outside} must have the same length")
        out.append((str(nets[0]), str(nets[1])))
    return tuple(sorted(out))


def exact_marks(config: Config) -> dict[str, alloc.Slot]:
    """Slots of the uplinks with an exact interface name, keyed by uplink name; a collision
    is a ConfigError naming the later uplink's mark."""
    pin = config.pinning
    try:
        return alloc.exact_marks(((u.name, u.mark) for u in config.uplinks if not u.is_pattern),
                                 pin.mark_mask, pin.table_base)
    except alloc.Collision as e:
        i = next(i for i, u in enumerate(config.uplinks) if u.name == e.second)
        raise ConfigError(config.path, f"uplink[{i}] ({e.second}).mark", str(e)) from None


def pattern_marks(config: Config, uplink: Uplink, ifaces: Iterable[str],
                  taken: set[int]) -> dict[str, alloc.Slot]:
    """Slots for the present interfaces of a pattern uplink (see alloc.pattern_marks)."""
    pin = config.pinning
    try:
        return alloc.pattern_marks(uplink.name, ifaces, taken, pin.mark_mask, pin.table_base)
    except alloc.Exhausted as e:
        raise ConfigError(config.path, "pinning.mark_mask", str(e)) from None


def _clear_of(path: str, fld: str, values: range, reserved: frozenset[int], limit: int,
              message: str) -> None:
    """Refuse a range that holds a value the kernel reserves or runs past `limit`."""
    bad = sorted(v for v in reserved if v in values)
    if bad or values.stop - 1 > limit:
        raise ConfigError(path, fld, message.format(f"{values.start}..{values.stop - 1}",
                                                    bad[0] if bad else f"limit {limit}"))


def _check_whole(config: Config) -> None:
    path, pin = config.path, config.pinning
    seen: dict[str, str] = {}
    for i, u in enumerate(config.uplinks):
        if u.name in seen:
            raise ConfigError(path, f"uplink[{i}].name", f"{u.name!r} is used twice")
        seen[u.name] = u.interface
    # Linear in the uplinks (a pairwise scan is quadratic): the first earlier uplink with
    # the same interface, or the first earlier pattern that overlaps, whichever comes first.
    first: dict[str, int] = {}
    patterns: list[int] = []
    for i, u in enumerate(config.uplinks):
        clash = [first[u.interface]] if u.interface in first else []
        if u.is_pattern:
            clash += [j for j in patterns if (v := config.uplinks[j]).prefix.startswith(u.prefix)
                      or u.prefix.startswith(v.prefix)][:1]
        if clash:
            j = min(clash)
            v = config.uplinks[j]
            if u.interface == v.interface:
                raise ConfigError(
                    path, f"uplink[{i}] ({u.name}).interface",
                    f"{u.interface!r} is already used by uplink {v.name!r} (uplink[{j}])",
                )
            raise ConfigError(
                path, f"uplink[{i}] ({u.name}).interface",
                f"pattern {u.interface!r} overlaps {v.interface!r} of uplink {v.name!r}",
            )
        first.setdefault(u.interface, i)
        if u.is_pattern:
            patterns.append(i)
    capacity = alloc.capacity(pin.mark_mask)
    if len(config.uplinks) > capacity:
        raise ConfigError(
            path, "pinning.mark_mask",
            f"{pin.mark_mask:#010x} gives {capacity} marks, too few for "
            f"{len(config.uplinks)} uplinks (use a mask with more bits)",
        )
    if len(config.uplinks) > MAX_INTERFACES:
        raise ConfigError(path, "uplink", f"{len(config.uplinks)} uplinks; connpin's rule band "
                          f"has room for {MAX_INTERFACES}")
    if patterns and capacity < len(config.uplinks) + 1:
        raise ConfigError(
            path, "pinning.mark_mask",
            f"{pin.mark_mask:#010x} leaves no marks for the interfaces of pattern uplinks",
        )
    _clear_of(path, "pinning.table_base", pin.table_range, RESERVED_TABLES, 0xFFFFFFFF,
              "table range {} overlaps the kernel's reserved table {} "
              "(choose e.g. table_base = 1000)")
    _clear_of(path, "pinning.rule_priority", pin.rule_range, RESERVED_PRIORITIES, 32765,
              "rule priorities {} overlap the kernel's default rules at {} "
              "(choose e.g. rule_priority = 10000)")
    exact_marks(config)  # raises ConfigError on collisions


def _check_selection(config: Config) -> None:
    """[[class]] names are unique; choosing uplinks needs the nftables backend."""
    seen: set[str] = set()
    for i, c in enumerate(config.classes):
        if c.name in seen:
            raise ConfigError(config.path, f"class[{i}].name", f"{c.name!r} is used twice")
        seen.add(c.name)
    if config.selecting and config.pinning.backend == "iptables":
        raise ConfigError(config.path, "pinning.backend", "\"iptables\" cannot choose uplinks "
                          "(check, weight, [[class]]): use \"nftables\" or leave those keys out")
    for i, u in enumerate(config.uplinks):
        if u.on_down == "reset" and config.pinning.backend == "iptables":
            raise ConfigError(config.path, f"uplink[{i}] ({u.name}).on_down", "\"reset\" needs "
                              "the nftables backend (pinning.backend = \"iptables\")")
