"""The passive signal's nft pieces (pure; docs/health.md "The passive signal"), rendered into
connpin's table by render/nft.py only when some uplink has `check` and `[health] passive` is
on (the default): golden plans without health checks stay byte-identical.

Per checked uplink interface two named counters, `sent_I_U` and `answered_I_U` (slot index I,
uplink U, like `new_I_U`: the daemon reads the uplink back from the name):

- `sent`: in `pin_I`, where a new connection's conntrack mark is first set, when it goes out
  (not arriving on the uplink's own interface) and is not one of connpin's own marked packets
  (health probes carry SO_MARK): a LAN (or the router's) connection pinned to the uplink. It
  also sets conntrack label bit `passive_label - 1`, "counted".
- `answered`: in `restore_I`, the first packet in the reply direction of a counted connection
  (label `passive_label` not set yet: set it). nft has no "first reply" match (conntrack sets
  seen-reply before any hook), so the label makes each connection answer once.

Cost: one rule per new connection in `pin_I`, one cheap test (`ct direction reply ...`) per
packet of a pinned connection in `restore_I`; no new chain, map or hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connpin.health.passive import rendered
from connpin.values import counter_name, split_counter

if TYPE_CHECKING:
    from connpin.values import UplinkState

KINDS = ("sent", "answered")


def _hex(v: int) -> str:
    return f"{v:#010x}"


def checked(config: Any, u: UplinkState) -> bool:
    """This uplink interface gets the counters (its uplink has `check`)."""
    if not rendered(config):
        return False
    up = config.uplink(u.uplink)
    return bool(up is not None and up.check)


def counter_names(u: UplinkState) -> tuple[str, str]:
    return counter_name("sent", u), counter_name("answered", u)


def split(name: str) -> tuple[str, int, str] | None:
    """`sent_3_fibre` -> ("sent", 3, "fibre"); None for any other name."""
    return split_counter(name, KINDS)


def per_uplink(raw: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Named counters (name -> (packets, bytes)) -> uplink -> (sent, answered), the
    interfaces of a pattern uplink summed."""
    out: dict[str, tuple[int, int]] = {}
    for name, (packets, _) in raw.items():
        parts = split(name)
        if parts is None:
            continue
        kind, _, uplink = parts
        sent, answered = out.get(uplink, (0, 0))
        out[uplink] = (sent + packets, answered) if kind == "sent" else (sent, answered + packets)
    return out


def objects(config: Any, uplinks: list[UplinkState]) -> list[str]:
    mine = [u for u in uplinks if checked(config, u)]
    if not mine:
        return []
    out = ["\t# passive health signal ([health] passive): outbound connections pinned to a\n"
           "\t# checked uplink, and those of them that were answered"]
    for u in mine:
        out += [f"\tcounter {name} {{\n\t}}\n" for name in counter_names(u)]
    return out


def sent_rule(config: Any, u: UplinkState) -> str:
    """pin_I's rule (before the mark is set): an outbound connection becomes pinned here."""
    if not checked(config, u):
        return ""
    mask = _hex(config.pinning.mark_mask)
    return (f"\t\tct mark and {mask} != {_hex(u.slot.mark)} meta mark and {mask} == 0 "
            f'iifname != "{u.interface}" ct label set {config.passive.label - 1} '
            f'counter name "{counter_names(u)[0]}"\n')


def answered_rule(config: Any, u: UplinkState) -> str:
    """restore_I's rule: the first reply of a counted connection."""
    if not checked(config, u):
        return ""
    label = config.passive.label
    return (f"\t\tct direction reply ct label {label - 1} ct label ! {label} "
            f'ct label set {label} counter name "{counter_names(u)[1]}"\n')
