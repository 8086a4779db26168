"""What happens to pinned connections when uplinks change state: failback and on_down. Pure.

connpin pins; it does not choose the uplink of new connections (the main table does). These
policies only decide which *existing* pinned connections to flush, so that applications
reconnect over the uplink the main table now prefers:

- an uplink going down with `on_down = "flush"`: every connection pinned to it;
- an uplink coming up with failback `flush` or `flush-idle`: the outbound connections pinned to
  every less preferred uplink (higher `priority`), all of them (`flush`) or those idle for
  `failback_idle` seconds, the busy ones as soon as they have been idle that long (`flush-idle`).
  Connections that *arrived* on the other uplink (port forwards, services on the router) are
  never moved: their peers know only that uplink's address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from connpin.model import Config
from connpin.values import UplinkState


@dataclass(frozen=True)
class Flush:
    """Flush connections pinned to one uplink interface."""

    uplink: str
    interface: str
    mark: int
    why: str
    outbound_only: bool = False
    idle: int | None = None  # only entries idle at least this long (seconds)
    follow: bool = False  # keep flushing the busy ones as they go idle (flush-idle)
    trigger: str = ""  # interface whose coming up asked for this (failback)

    def __str__(self) -> str:
        what = "outbound connections" if self.outbound_only else "connections"
        idle = f" idle >= {self.idle}s" if self.idle is not None else ""
        return f"flush {what}{idle} pinned to {self.uplink} ({self.interface}): {self.why}"


def transitions(before: Iterable[str] | None, after: Iterable[UplinkState]
                ) -> tuple[list[UplinkState], list[UplinkState]]:
    """(came up, went down) between the interfaces connpin last committed as up and now.
    `before` None means nothing was installed yet: a first apply is not a transition."""
    if before is None:
        return [], []
    was = set(before)
    states = list(after)
    up = [s for s in states if s.up and s.interface not in was]
    down = [s for s in states if not s.up and s.interface in was]
    return up, down


def actions(config: Config, before: Iterable[str] | None, after: Iterable[UplinkState]
            ) -> list[Flush]:
    """The flushes the uplinks' policies ask for, given what came up and what went down."""
    states = list(after)
    came_up, went_down = transitions(before, states)
    out: dict[tuple[str, int], Flush] = {}
    prio: Mapping[str, int] = {u.name: u.priority for u in config.uplinks}
    for s in went_down:
        u = config.uplink(s.uplink)
        if u is not None and u.on_down == "flush":
            out[(s.interface, s.slot.mark)] = Flush(s.uplink, s.interface, s.slot.mark,
                                                   "went down (on_down = \"flush\")")
    for s in sorted(came_up, key=lambda s: prio.get(s.uplink, 0)):
        u = config.uplink(s.uplink)
        policy = config.failback(u) if u is not None else "keep"
        if policy == "keep":
            continue
        for other in states:
            if prio.get(other.uplink, 0) <= prio[s.uplink] or (other.interface, other.slot.mark) \
                    in out:
                continue
            idle = config.pinning.failback_idle if policy == "flush-idle" else None
            out[(other.interface, other.slot.mark)] = Flush(
                other.uplink, other.interface, other.slot.mark,
                f"{s.uplink} ({s.interface}, priority {prio[s.uplink]}) came up "
                f"(failback = \"{policy}\")",
                outbound_only=True, idle=idle, follow=policy == "flush-idle",
                trigger=s.interface)
    return list(out.values())


def describe(config: Config) -> list[str]:
    """The policies in words, for `plan`: what each uplink's transitions will flush."""
    lines = []
    for u in sorted(config.uplinks, key=lambda u: (u.priority, u.name)):
        policy = config.failback(u)
        lower = sorted(v.name for v in config.uplinks if v.priority > u.priority)
        if policy != "keep" and lower:
            how = (f"those idle >= {config.pinning.failback_idle}s now, busy ones once idle"
                   if policy == "flush-idle" else "all of them")
            lines.append(f"{u.name} (priority {u.priority}) comes up: flush outbound connections "
                         f"pinned to {', '.join(lower)} ({how})")
        if u.on_down == "flush":
            lines.append(f"{u.name} goes down: flush the connections pinned to it")
        if u.on_down == "reset":
            lines.append(f"{u.name} goes down or dead: reset the connections pinned to it (TCP "
                         "reset, ICMP admin-prohibited, at the next packet from the inside)")
    return lines
