"""Which uplink new connections get, when connpin chooses (weights, tiers, [[class]]). Pure.

With no `weight` and no `[[class]]` in the config nothing here is used: the routing table
chooses and connpin pins. Otherwise every class (the [[class]] tables in file order, then the
default class of all uplinks) gets one choice per family: the uplink interfaces of its best
tier (lowest `priority`) that are up in that family and not dead, each owning a slice of
[0, SPACE) proportional to its weight. The renderer turns a choice into an nft map from
`numgen random mod SPACE` (or `jhash <saddr> mod SPACE` for sticky = "source") to the
interface's pin chain: one lookup per new connection, whatever the number of uplinks.

SPACE is fixed, so an uplink dying or coming back changes only the elements of the maps,
never a rule: a later health change can be one nft transaction of element updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connpin.const import CHOICE_SPACE
from connpin.model import Class, Config
from connpin.values import UplinkState

#: The range the random number (or hash) is taken modulo: shares are exact to 1/65536.
SPACE = CHOICE_SPACE
DEFAULT = "default"


@dataclass(frozen=True)
class Slice:
    """Numbers first..last (inclusive) go to the uplink interface of slot `index`."""

    first: int
    last: int
    index: int
    uplink: str
    interface: str


@dataclass(frozen=True)
class Choice:
    """One class in one family: what it matches and how its new connections are shared."""

    family: int  # 4 or 6
    name: str  # the class name, or "default"
    cls: Class | None  # None: the default class (matches everything)
    slices: tuple[Slice, ...]  # empty: no live uplink, the routing table decides

    @property
    def sticky(self) -> bool:
        return self.cls is not None and self.cls.sticky == "source"

    def shares(self) -> dict[str, float]:
        """uplink interface -> share of new connections (for plan, status and tests)."""
        return {s.interface: (s.last - s.first + 1) / SPACE for s in self.slices}


def split(weights: Sequence[tuple[UplinkState, int]], space: int = SPACE) -> tuple[Slice, ...]:
    """Cut [0, space) into consecutive slices proportional to the weights (largest remainder,
    ties to the earlier one; a slice that rounds to nothing is left out)."""
    total = sum(w for _, w in weights)
    if not total:
        return ()
    exact = [space * w / total for _, w in weights]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: space - sum(sizes)]:
        sizes[i] += 1
    out, at = [], 0
    for (st, _), size in zip(weights, sizes, strict=True):
        if size:
            out.append(Slice(at, at + size - 1, st.slot.index, st.uplink, st.interface))
        at += size
    return tuple(out)


def dead_key(uplink: str, family: int) -> str:
    """The entry of a `dead` set for an uplink dead in one family only ("isp1/ipv6"); an
    uplink's bare name means dead in both (names cannot hold "/")."""
    return f"{uplink}/ipv{family}"


def is_dead(dead: frozenset[str], uplink: str, family: int) -> bool:
    """Whether `uplink` is dead for new connections of `family` (4 or 6)."""
    return uplink in dead or dead_key(uplink, family) in dead


def dead_of(figures: Mapping[str, Any]) -> frozenset[str]:
    """The dead set from the daemon's health figures (uplink -> {"state", "families"?}): the
    names of dead uplinks, and `dead_key`s of the family sides dead in an uplink still alive."""
    out: set[str] = set()
    for name, h in figures.items():
        if not isinstance(h, Mapping):
            continue
        if h.get("state") == "dead":
            out.add(name)
            continue
        families = h.get("families")
        for fam, side in (families.items() if isinstance(families, Mapping) else ()):
            if fam in ("ipv4", "ipv6") and isinstance(side, Mapping) and \
                    side.get("state") == "dead":
                out.add(f"{name}/{fam}")
    return frozenset(out)


def _alive(st: UplinkState, family: int, dead: frozenset[str]) -> bool:
    return (st.up if family == 4 else st.up6) and not is_dead(dead, st.uplink, family)


def _applies(cls: Class | None, family: int) -> bool:
    """A class whose networks or protocol are all of the other family never matches here."""
    if cls is None:
        return True
    if cls.protocol == ("icmp" if family == 6 else "icmpv6"):
        return False
    for nets in (cls.source, cls.destination):
        if nets and not any((":" in n) == (family == 6) for n in nets):
            return False
    return True


def choose(config: Config, states: Iterable[UplinkState], family: int,
           members: Iterable[str] | None, dead: frozenset[str] = frozenset()
           ) -> tuple[Slice, ...]:
    """The slices of one class: its uplinks (`members` names; None = all) in the best tier
    that has a live one, by weight."""
    prio = {u.name: u.priority for u in config.uplinks}
    weight = {u.name: u.weight or 1 for u in config.uplinks}
    allowed = None if members is None else set(members)
    live = [st for st in states if (allowed is None or st.uplink in allowed)
            and _alive(st, family, dead)]
    if not live:
        return ()
    best = min(prio[st.uplink] for st in live)
    tier = sorted((st for st in live if prio[st.uplink] == best), key=lambda s: s.slot.index)
    return split([(st, weight[st.uplink]) for st in tier])


def choices(config: Config, states: Sequence[UplinkState], family: int,
            dead: frozenset[str] = frozenset()) -> tuple[Choice, ...]:
    """Every class that can match in `family`, in order, then the default class. Empty when
    connpin does not choose (no check, weight or [[class]])."""
    if not config.selecting:
        return ()
    out = [Choice(family, c.name, c, choose(config, states, family, c.uplinks, dead))
           for c in config.classes if _applies(c, family)]
    out.append(Choice(family, DEFAULT, None, choose(config, states, family, None, dead)))
    return tuple(out)
