"""Marks, tables and rule priorities inside connpin's slice: deterministic and stable.

An uplink's mark is derived from its name alone (a hash into the mark space), so reordering the
config, adding other uplinks or restarting never moves it; two names that land on the same mark
are refused with a hint to set `mark` explicitly. Interfaces of a pattern uplink ("ppp*") get
marks derived from "uplink/interface", probing past marks already taken.
Its table is table_base + (mark index - 1): one allocation, two ids.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from connpin.model import Config, ConfigError, Uplink


def capacity(mask: int) -> int:
    """How many non-zero mark values fit in the mask."""
    return (1 << bin(mask).count("1")) - 1


def deposit(index: int, mask: int) -> int:
    """Spread the bits of `index` over the set bits of `mask`, low to high (like PDEP)."""
    out, bit = 0, 0
    for pos in range(32):
        if mask >> pos & 1:
            if index >> bit & 1:
                out |= 1 << pos
            bit += 1
    return out


def extract(mark: int, mask: int) -> int:
    """Inverse of deposit: the index a masked mark stands for."""
    out, bit = 0, 0
    for pos in range(32):
        if mask >> pos & 1:
            if mark >> pos & 1:
                out |= 1 << bit
            bit += 1
    return out


def home(key: str, mask: int) -> int:
    """The mark index a name hashes to (1..capacity)."""
    return zlib.crc32(key.encode()) % capacity(mask) + 1


@dataclass(frozen=True, order=True)
class Slot:
    """Where one uplink interface lives in connpin's slice."""

    index: int  # 1..capacity
    mark: int  # the index deposited into the mask
    table: int

    def __str__(self) -> str:
        return f"mark {self.mark:#010x} table {self.table}"


def slot(config: Config, index: int) -> Slot:
    pin = config.pinning
    return Slot(index, deposit(index, pin.mark_mask), pin.table_base + index - 1)


def exact_marks(config: Config) -> dict[str, Slot]:
    """Slots of the uplinks with an exact interface name, keyed by uplink name."""
    mask = config.pinning.mark_mask
    taken: dict[int, Uplink] = {}
    out: dict[str, Slot] = {}
    for i, u in enumerate(config.uplinks):
        if u.is_pattern:
            continue
        idx = extract(u.mark, mask) if u.mark is not None else home(u.name, mask)
        other = taken.get(idx)
        if other is not None:
            free = next(k for k in range(1, capacity(mask) + 1) if k not in taken)
            raise ConfigError(
                config.path, f"uplink[{i}] ({u.name}).mark",
                f"uplinks {other.name!r} and {u.name!r} both get mark "
                f"{deposit(idx, mask):#010x}; set mark = {deposit(free, mask):#010x} "
                f"on one of them",
            )
        taken[idx] = u
        out[u.name] = slot(config, idx)
    return out


def pattern_marks(config: Config, uplink: Uplink, ifaces: Iterable[str],
                  taken: set[int]) -> dict[str, Slot]:
    """Slots for the present interfaces of a pattern uplink, avoiding `taken` indexes.

    Probing order is by interface name, so the result depends only on which interfaces exist.
    """
    mask = config.pinning.mark_mask
    cap = capacity(mask)
    out: dict[str, Slot] = {}
    for ifname in sorted(ifaces):
        idx = home(f"{uplink.name}/{ifname}", mask)
        for _ in range(cap):
            if idx not in taken:
                break
            idx = idx % cap + 1
        else:
            raise ConfigError(
                config.path, "pinning.mark_mask",
                f"no free mark left for interface {ifname} of uplink {uplink.name!r}",
            )
        taken.add(idx)
        out[ifname] = slot(config, idx)
    return out
