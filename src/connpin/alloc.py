"""Marks, tables and rule priorities inside connpin's slice: deterministic and stable.

Works on plain values (a mark mask, a table base, names), so it depends on nothing else in
connpin; `model` turns its two refusals (Collision, Exhausted) into located config errors.

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


class Collision(ValueError):
    """Two exact uplinks land on the same mark; `second` is the later one in the config."""

    def __init__(self, first: str, second: str, mark: int, free: int):
        self.first, self.second, self.mark, self.free = first, second, mark, free
        super().__init__(f"uplinks {first!r} and {second!r} both get mark {mark:#010x}; "
                         f"set mark = {free:#010x} on one of them")


class Exhausted(ValueError):
    """No mark is left in the mask for one more interface."""


def capacity(mask: int) -> int:
    """How many non-zero mark values fit in the mask."""
    return (1 << bin(mask).count("1")) - 1


def table_range(mask: int, table_base: int) -> range:
    """The routing table ids connpin owns: one per mark value."""
    return range(table_base, table_base + capacity(mask))


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of `mask`, low to high."""
    return [pos for pos in range(32) if mask >> pos & 1]


def deposit(index: int, mask: int) -> int:
    """Spread the bits of `index` over the set bits of `mask`, low to high (like PDEP)."""
    return sum(1 << pos for bit, pos in enumerate(_bits(mask)) if index >> bit & 1)


def extract(mark: int, mask: int) -> int:
    """Inverse of deposit: the index a masked mark stands for."""
    return sum(1 << bit for bit, pos in enumerate(_bits(mask)) if mark >> pos & 1)


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


def slot(index: int, mask: int, table_base: int) -> Slot:
    """The slot of mark index `index`."""
    return Slot(index, deposit(index, mask), table_base + index - 1)


def exact_marks(uplinks: Iterable[tuple[str, int | None]], mask: int,
                table_base: int) -> dict[str, Slot]:
    """Slots of uplinks with an exact interface name, given as (name, explicit mark or None),
    keyed by name. Raises Collision when two land on the same mark."""
    taken: dict[int, str] = {}
    out: dict[str, Slot] = {}
    for name, mark in uplinks:
        idx = extract(mark, mask) if mark is not None else home(name, mask)
        other = taken.get(idx)
        if other is not None:
            free = next(k for k in range(1, capacity(mask) + 1) if k not in taken)
            raise Collision(other, name, deposit(idx, mask), deposit(free, mask))
        taken[idx] = name
        out[name] = slot(idx, mask, table_base)
    return out


def pattern_marks(uplink: str, ifaces: Iterable[str], taken: set[int], mask: int,
                  table_base: int) -> dict[str, Slot]:
    """Slots for the present interfaces of pattern uplink `uplink`, avoiding `taken` indexes
    (and adding theirs to it). Raises Exhausted when the mask is full.

    Probing order is by interface name, so the result depends only on which interfaces exist.
    """
    cap = capacity(mask)
    out: dict[str, Slot] = {}
    for ifname in sorted(ifaces):
        idx = home(f"{uplink}/{ifname}", mask)
        for _ in range(cap):
            if idx not in taken:
                break
            idx = idx % cap + 1
        else:
            raise Exhausted(f"no free mark left for interface {ifname} of uplink {uplink!r}")
        taken.add(idx)
        out[ifname] = slot(idx, mask, table_base)
    return out
