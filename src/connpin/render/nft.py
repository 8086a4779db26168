"""Desired uplinks -> connpin's nftables table, as one `nft -f` transaction. Pure; golden-tested.

Per-packet cost does not grow with the number of uplinks: the interface -> uplink and
mark -> uplink decisions are single verdict-map lookups. Every mark write keeps the bits outside
the mask: nft 1.0.6 cannot combine two non-constant operands (`meta mark and ~M or ct mark and M`),
so each uplink has two tiny chains with constant operands, reached through the maps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from connpin.const import CHOICE_SPACE as SPACE
from connpin.const import NEVER_PINNED6
from connpin.render import passive
from connpin.values import counter_name

if TYPE_CHECKING:
    from connpin.choice import Choice
    from connpin.model import Class, Config
    from connpin.values import UplinkState

HEADER = "# connpin ruleset: generated, replaced as a whole on every apply; do not edit.\n"

#: Never pinned nor re-routed: link-local and multicast (IPv6), and neighbour discovery, router
#: solicitations/advertisements and redirects (ICMPv6 133-137).
ND_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
            "nd-neighbor-advert", "nd-redirect")
_SKIP6 = (
    "\t\t# IPv6: neighbour discovery, router advertisements, link-local and multicast are\n"
    "\t\t# never pinned nor re-routed\n"
    f"\t\ticmpv6 type {{ {', '.join(ND_TYPES)} }} accept\n"
    "\t\tip6 saddr @never_pinned6 accept\n"
    "\t\tip6 daddr @never_pinned6 accept\n"
)


def _hex(v: int) -> str:
    return f"{v:#010x}"


_L4 = {"icmpv6": "ipv6-icmp"}
#: Where new connections are not chosen an uplink: to the router itself, broadcast, multicast.
_NOT_CHOSEN = "fib daddr type != { local, broadcast, multicast }"


def _ports(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}-{p[1]}"


def _nets(key: str, nets: tuple[str, ...], family: int) -> str:
    mine = [n for n in nets if (":" in n) == (family == 6)]
    return f"{key} {mine[0]}" if len(mine) == 1 else f"{key} {{ {', '.join(mine)} }}"


def class_match(cls: Class, family: int) -> str:
    """The nft match of a [[class]] in one family ("" matches everything)."""
    ip = "ip6" if family == 6 else "ip"
    out = []
    if cls.protocol:
        out.append(f"meta l4proto {_L4.get(cls.protocol, cls.protocol)}")
    if cls.dport:
        out.append(f"th dport {_ports(cls.dport)}")
    if cls.sport:
        out.append(f"th sport {_ports(cls.sport)}")
    if cls.source:
        out.append(_nets(f"{ip} saddr", cls.source, family))
    if cls.destination:
        out.append(_nets(f"{ip} daddr", cls.destination, family))
    return " ".join(out)


def _choose_maps(choices: Sequence[Choice]) -> list[str]:
    """One named map per class and family (elements only change when uplinks die or revive)."""
    out = []
    for c in choices:
        kind = f"class {c.name}" if c.cls else "the default class (all uplinks)"
        how = "hash of the source" if c.sticky else "random number"
        out.append(f"\t# new connections of {kind}, IPv{c.family}: {how} -> uplink pin chain")
        out.append(f"\tmap choose{c.family}_{c.name} {{\n"
                   f"\t\ttypeof numgen random mod {SPACE} : verdict\n\t\tflags interval")
        if c.slices:
            elems = ",\n\t\t\t".join(f"{s.first}-{s.last} : jump pin_{s.index}"
                                       for s in c.slices)
            out.append(f"\t\telements = {{ {elems} }}")
        out.append("\t}\n")
    return out


def _choose_chains(choices: Sequence[Choice]) -> list[str]:
    """Per family, chain chooseF: the first matching class wins (goto its chain), else the
    default class. A class without a live uplink chooses nothing (the routing table decides)."""
    out = []
    for family in (4, 6):
        mine = [c for c in choices if c.family == family]
        if not mine:
            continue
        ip = "ip6" if family == 6 else "ip"
        rules = []
        for c in mine:
            key = f"jhash {ip} saddr mod {SPACE}" if c.sticky else f"numgen random mod {SPACE}"
            pick = f"{key} vmap @choose{family}_{c.name}"
            if c.cls is None:
                rules.append(pick)
                continue
            match = class_match(c.cls, family)
            rules.append(f"{match} goto choose{family}_{c.name}".strip())
            out.append(f"\tchain choose{family}_{c.name} {{\n\t\t{pick}\n\t}}\n")
        out.append(f"\t# IPv{family}: the uplink of a new connection from the inside, chosen once")
        out.append(f"\tchain choose{family} {{\n" + "".join(f"\t\t{r}\n" for r in rules)
                   + "\t}\n")
    return out


def _choose_rule(mask: int, family: int, output: bool = False) -> str:
    unmarked = f" meta mark and {_hex(mask)} == 0" if output else ""
    return (f"\t\tmeta nfproto ipv{family} ct state new ct mark and {_hex(mask)} == 0{unmarked} "
            f"{_NOT_CHOSEN} jump choose{family}\n")


def _local_pin(family: int, choices: Sequence[Choice]) -> str:
    """When choosing: the router's own new connection is pinned to the uplink it really leaves
    by (a socket bound to a device keeps its device whatever the choice said in `output`)."""
    if not choices:
        return ""
    return (f"\t\tmeta nfproto ipv{family} ct state new fib saddr type local "
            "oifname vmap @uplink_by_iface\n")


def counter_names(u: UplinkState) -> tuple[str, str, str]:
    """The named nft counters of one uplink interface (`[metrics]`): new connections pinned to
    it, packets out by it and in from it. Slot index then uplink name: kernel/counters.py reads
    the uplink back from the name (`kind_index_uplink`; uplink names never hold spaces)."""
    return counter_name("new", u), counter_name("out", u), counter_name("in", u)


def _counters_on(config: Config) -> bool:
    return getattr(config, "metrics", None) is not None


def _counter_objects(uplinks: Sequence[UplinkState]) -> list[str]:
    """The named counters, and the mark -> chain map that counts packets out (`[metrics]`)."""
    out = ["\t# per-uplink counters ([metrics]): new connections pinned to it, and the packets\n"
           "\t# of its pinned connections out by its interface and in from it"]
    for u in uplinks:
        out += [f"\tcounter {name} {{\n\t}}\n" for name in counter_names(u)]
    marks = ",\n\t\t\t".join(f"{_hex(u.slot.mark)} : jump count_{u.slot.index}" for u in uplinks)
    out.append("\t# pinned conntrack mark -> chain that counts the packet out by the uplink")
    out.append("\tmap count_by_mark {\n\t\ttype mark : verdict")
    if marks:
        out.append(f"\t\telements = {{ {marks} }}")
    out.append("\t}\n")
    return out


def reset_counter_name(u: UplinkState) -> str:
    """The named counter of the resets sent for one interface of an uplink with on_down =
    "reset" (`reset_I_U`, read like counter_names' counters)."""
    return counter_name("reset", u)


def _resetting(config: Config, uplinks: Sequence[UplinkState]) -> list[UplinkState]:
    names = {u.name for u in config.uplinks if u.on_down == "reset"}
    return [u for u in uplinks if u.uplink in names]


def _reset_set(marks: Sequence[tuple[int, int]], resetting: Sequence[UplinkState] = ()
               ) -> list[str]:
    """on_down = "reset": the (family, mark) pairs whose connections are reset (its elements
    change, in place, when an uplink dies in a family or both, goes down or comes back), and
    the counters of resets sent per interface of the uplinks with on_down = "reset" (there
    whatever [metrics] says: they are the only trace of the connections connpin ended)."""
    out = ["\t# on_down = \"reset\": family . mark of the uplinks that are dead or down now",
           "\tset dead_marks {\n\t\ttype nf_proto . mark"]
    if marks:
        pairs = ", ".join(f"ipv{f} . {_hex(m)}" for f, m in marks)
        out.append(f"\t\telements = {{ {pairs} }}")
    out.append("\t}\n")
    if resetting:
        out.append("\t# on_down = \"reset\": resets (and ICMP errors) sent, per uplink interface")
    out += [f"\tcounter {reset_counter_name(u)} {{\n\t}}\n" for u in resetting]
    return out


def _count_new(config: Config, u: UplinkState) -> str:
    """pin_N's first rule with counters: count a connection when it becomes pinned to N (a
    connection stays `new` until answered: its later packets find the mark already set). Not
    the router's own: `output` may choose N and `postrouting` re-pin it to the uplink it
    really leaves by (a device-bound socket), so count_N counts those once, at the end."""
    if not _counters_on(config):
        return ""
    mask = config.pinning.mark_mask
    return (f"\t\tct mark and {_hex(mask)} != {_hex(u.slot.mark)} fib saddr type != local "
            f'counter name "{counter_names(u)[0]}"\n')


def _count_in(config: Config, u: UplinkState) -> str:
    """restore_N's rule with counters: a packet of a connection pinned to N arriving from N's
    interface (prerouting; in output, the router's own packets, iifname is empty)."""
    if not _counters_on(config):
        return ""
    return f'\t\tiifname "{u.interface}" counter name "{counter_names(u)[2]}"\n'


def _count_out_chains(config: Config, uplinks: Sequence[UplinkState]) -> list[str]:
    if not _counters_on(config):
        return []
    # the router's own new connection, pinned for good: counted at its first packet (the only
    # one before conntrack confirms the entry; a retransmitted SYN finds it confirmed)
    return [f"\tchain count_{u.slot.index} {{\n"
            f"\t\tct status & confirmed == 0 fib saddr type local "
            f'counter name "{counter_names(u)[0]}"\n'
            f'\t\toifname "{u.interface}" counter name "{counter_names(u)[1]}"\n\t}}\n'
            for u in uplinks]


def _count_out_rule(config: Config) -> str:
    """postrouting's last rule with counters: a packet of a pinned connection, to the chain of
    its mark, which counts it when it leaves by that uplink's interface."""
    if not _counters_on(config):
        return ""
    return f"\t\tct mark and {_hex(config.pinning.mark_mask)} vmap @count_by_mark\n"


def _reset_chains(mask: int, interfaces: Sequence[str],
                  resetting: Sequence[UplinkState] = ()) -> list[str]:
    """on_down = "reset": a packet sent from the inside (or by the router) in a connection
    pinned to a mark of @dead_marks is answered with a TCP reset (ICMP admin-prohibited for
    other protocols: a hard error a connected UDP socket reports, EHOSTUNREACH / EACCES, where
    host-unreachable is a soft one it ignores), sent to its sender. Only the original direction
    of connections that did not arrive on an uplink: connections from the outside are left to
    time out. Before routing (prerouting, output before connpin's re-route), so a link that is
    down resets too. The router's packets that already carry a mark of connpin's (health
    probes, SO_MARK) pass. Each reset is counted on its uplink interface's counter."""
    m = _hex(mask)
    count = "".join(f"\t\tct mark and {m} == {_hex(u.slot.mark)} "
                    f'counter name "{reset_counter_name(u)}"\n' for u in resetting)
    dead = f"meta nfproto . ct mark and {m} @dead_marks"
    names = ", ".join(f'"{i}"' for i in interfaces)
    inside = f" iifname != {{ {names} }}" if interfaces else ""
    return [
        "\n\t# on_down = \"reset\": connections pinned to a dead or down uplink are reset, at the\n"
        "\t# next packet the inside host (or the router) sends in them\n"
        "\tchain dead_in {\n"
        "\t\ttype filter hook prerouting priority mangle + 1; policy accept;\n"
        f"\t\tct direction original {dead}{inside} jump dead_reject\n"
        "\t}\n"
        "\n\tchain dead_out {\n"
        "\t\ttype filter hook output priority mangle - 1; policy accept;\n"
        f"\t\tct direction original meta mark and {m} == 0 {dead} jump dead_reject\n"
        "\t}\n"
        "\n\tchain dead_reject {\n" + count +
        "\t\tmeta l4proto tcp reject with tcp reset\n"
        "\t\treject with icmpx type admin-prohibited\n"
        "\t}"
    ]


def body(config: Config, uplinks: Sequence[UplinkState],
         choices: Sequence[Choice] = (),
         dead_marks: Sequence[tuple[int, int]] | None = None) -> str:
    """The `table inet NAME { ... }` block. `choices` (connpin choosing uplinks): their maps
    and chains, and the rules that jump there for new, unpinned connections from the inside.
    `dead_marks` (some uplink has on_down = "reset"; None: none has): the marks whose
    connections are reset (see `_reset_set`)."""
    mask = config.pinning.mark_mask
    keep = _hex(~mask & 0xFFFFFFFF)
    name = config.pinning.nft_table
    ifmap = ",\n\t\t\t".join(f'"{u.interface}" : jump pin_{u.slot.index}' for u in uplinks)
    markmap = ",\n\t\t\t".join(f"{_hex(u.slot.mark)} : jump restore_{u.slot.index}"
                                  for u in uplinks)
    masq = sorted({u.interface for u in uplinks if u.masquerade})
    masq6 = sorted({u.interface for u in uplinks if u.masquerade6})
    npt = [u for u in uplinks if u.nptv6]
    out = [f"table inet {name} {{", "\tcomment \"connpin\"\n"]  # ownership
    out.append("\t# interface of a new connection -> its uplink's pin chain")
    out.append("\tmap uplink_by_iface {\n\t\ttype ifname : verdict")
    if ifmap:
        out.append(f"\t\telements = {{ {ifmap} }}")
    out.append("\t}\n")
    out.append("\t# pinned conntrack mark -> chain that copies it into the packet mark")
    out.append("\tmap restore_by_mark {\n\t\ttype mark : verdict")
    if markmap:
        out.append(f"\t\telements = {{ {markmap} }}")
    out.append("\t}\n")
    if masq:
        elems = ", ".join(f'"{i}"' for i in masq)
        out.append(f"\tset masq_ifaces {{\n\t\ttype ifname\n\t\telements = {{ {elems} }}\n\t}}\n")
    if masq6:
        elems = ", ".join(f'"{i}"' for i in masq6)
        out.append(f"\tset masq6_ifaces {{\n\t\ttype ifname\n\t\telements = {{ {elems} }}\n\t}}\n")
    out += _choose_maps(choices)
    if _counters_on(config):
        out += _counter_objects(uplinks)
    out += passive.objects(config, list(uplinks))
    out.append("\tset never_pinned6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n"
               f"\t\telements = {{ {', '.join(NEVER_PINNED6)} }}\n\t}}\n")
    if dead_marks is not None:
        out += _reset_set(dead_marks, _resetting(config, uplinks))
    for u in uplinks:  # one slot per interface: alloc never gives two the same mark
        out.append(f"\t# {u.uplink} ({u.interface}): {_hex(u.slot.mark)}, table {u.slot.table}")
        out.append(f"\tchain pin_{u.slot.index} {{\n" + _count_new(config, u) +
                   passive.sent_rule(config, u) +
                   f"\t\tct mark set ct mark and {keep} or {_hex(u.slot.mark)}\n\t}}\n")
        out.append(f"\tchain restore_{u.slot.index} {{\n" + _count_in(config, u) +
                   passive.answered_rule(config, u) +
                   f"\t\tmeta mark set meta mark and {keep} or {_hex(u.slot.mark)}\n\t}}\n")
    out += _count_out_chains(config, uplinks)
    out += _choose_chains(choices)
    pick4 = _choose_rule(mask, 4) if choices else ""
    pick6 = _choose_rule(mask, 6) if choices else ""
    out4 = _choose_rule(mask, 4, output=True) if choices else ""
    out6 = _choose_rule(mask, 6, output=True) if choices else ""
    out.append(
        "\t# arriving on an uplink: pin new connections to it; then every packet of a pinned\n"
        "\t# connection (forwarded or to the router) carries its uplink's mark for routing\n"
        "\tchain prerouting {\n"
        "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
        "\t\tmeta nfproto ipv4 ct state new iifname vmap @uplink_by_iface\n"
        + pick4 +
        f"\t\tmeta nfproto ipv4 ct mark and {_hex(mask)} vmap @restore_by_mark\n"
        + _SKIP6 +
        "\t\tmeta nfproto ipv6 ct state new iifname vmap @uplink_by_iface\n"
        + pick6 +
        f"\t\tmeta nfproto ipv6 ct mark and {_hex(mask)} vmap @restore_by_mark\n"
        "\t}\n"
    )
    out.append(
        "\t# the router's own packets of pinned connections: marked, then re-routed (type route)\n"
        "\tchain output {\n"
        "\t\ttype route hook output priority mangle; policy accept;\n"
        + out4 +
        f"\t\tmeta nfproto ipv4 ct mark and {_hex(mask)} vmap @restore_by_mark\n"
        + _SKIP6 + out6 +
        f"\t\tmeta nfproto ipv6 ct mark and {_hex(mask)} vmap @restore_by_mark\n"
        "\t}\n"
    )
    out.append(
        "\t# first routed out of an uplink: pin the new connection to it (if not pinned yet)\n"
        "\tchain postrouting {\n"
        "\t\ttype filter hook postrouting priority mangle; policy accept;\n"
        + _local_pin(4, choices) +
        f"\t\tmeta nfproto ipv4 ct state new ct mark and {_hex(mask)} == 0 "
        "oifname vmap @uplink_by_iface\n"
        + _SKIP6 + _local_pin(6, choices) +
        f"\t\tmeta nfproto ipv6 ct state new ct mark and {_hex(mask)} == 0 "
        "oifname vmap @uplink_by_iface\n"
        + _count_out_rule(config) +
        "\t}"
    )
    if masq or masq6 or npt:
        out.append(
            "\n\tchain nat_out {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        )
        if masq:
            out.append("\t\tmeta nfproto ipv4 oifname @masq_ifaces masquerade")
        if masq6:
            out.append("\t\tmeta nfproto ipv6 oifname @masq6_ifaces masquerade")
        for u in npt:
            pairs = ", ".join(f"{i} : {o}" for i, o in u.nptv6)
            out.append(f'\t\toifname "{u.interface}" snat ip6 prefix to ip6 saddr map '
                       f"{{ {pairs} }}")
        out.append("\t}")
    if npt:
        out.append(
            "\n\t# NPTv6: connections arriving for an outside prefix reach the inside one\n"
            "\tchain nat_in {\n"
            "\t\ttype nat hook prerouting priority dstnat; policy accept;"
        )
        for u in npt:
            pairs = ", ".join(f"{o} : {i}" for i, o in u.nptv6)
            out.append(f'\t\tiifname "{u.interface}" dnat ip6 prefix to ip6 daddr map '
                       f"{{ {pairs} }}")
        out.append("\t}")
    if dead_marks is not None:
        out += _reset_chains(mask, sorted({u.interface for u in uplinks}),
                             _resetting(config, uplinks))
    out.append("}")
    return "\n".join(out) + "\n"


def render(config: Config, uplinks: Sequence[UplinkState],
           choices: Sequence[Choice] = (),
           dead_marks: Sequence[tuple[int, int]] | None = None) -> str:
    """The whole ruleset as shown by `plan`."""
    return HEADER + body(config, uplinks, choices, dead_marks)


def transaction(table: str, ruleset: str | None) -> str:
    """An `nft -f` script that replaces (or, with None, deletes) connpin's table atomically.

    `table inet X {}` first makes the delete valid when the table does not exist yet; the
    whole file is one kernel transaction, so packets see either the old or the new table.
    """
    script = f"table inet {table}\ndelete table inet {table}\n"
    return script + (ruleset or "")


# -- in-place element updates -----------------------------------------------------------------

class Change(NamedTuple):
    """The elements of one named map or set of connpin's table, replaced in place."""

    kind: str  # map | set
    name: str
    elements: str  # "{ ... }" as `body` writes it; "" for none
    prev: str  # what it replaces


_BLOCK = re.compile(r"^\t(map|set) (\S+) \{$")
_ELEMENTS = "\t\telements = "


def split_elements(ruleset: str) -> tuple[str, dict[tuple[str, str], str]] | None:
    """A ruleset `render` wrote -> (its skeleton: the text without the elements of its named
    maps and sets, {(kind, name): their elements ("{ ... }", "" for none)}). None when the text
    is not in the shape `body` writes: then it is never updated in place."""
    lines = ruleset.split("\n")
    skeleton: list[str] = []
    elements: dict[tuple[str, str], str] = {}
    i = 0
    while i < len(lines):
        m = _BLOCK.match(lines[i])
        skeleton.append(lines[i])
        i += 1
        if m is None:
            continue
        inner: list[str] = []
        while i < len(lines) and lines[i] != "\t}":
            inner.append(lines[i])
            i += 1
        if i == len(lines) or (m[1], m[2]) in elements:
            return None
        at = next((j for j, line in enumerate(inner) if line.startswith(_ELEMENTS)), len(inner))
        tail = inner[at:]
        if tail and not (tail[0].startswith(_ELEMENTS + "{ ") and tail[-1].endswith(" }")
                         and all(line.startswith("\t\t\t") for line in tail[1:])):
            return None
        skeleton += inner[:at]
        elements[(m[1], m[2])] = "\n".join(tail)[len(_ELEMENTS):] if tail else ""
    return "\n".join(skeleton), elements


def element_changes(old: str, new: str) -> tuple[Change, ...] | None:
    """What turns ruleset `old` into `new` when they differ only in the elements of named maps
    and sets (the choose maps, dead_marks): those maps and sets with their new elements.
    None when anything else differs (or either text is not one `render` wrote): then the table
    is replaced as a whole."""
    a, b = split_elements(old), split_elements(new)
    if a is None or b is None or a[0] != b[0] or a[1].keys() != b[1].keys():
        return None
    return tuple(Change(kind, name, b[1][kind, name], a[1][kind, name])
                 for kind, name in b[1] if a[1][kind, name] != b[1][kind, name])


def element_script(table: str, changes: Sequence[Change]) -> str:
    """An `nft -f` script that replaces the elements of some named maps and sets of connpin's
    table in one transaction: the table, its chains, counters and other objects stay."""
    out = []
    for c in changes:
        out.append(f"flush {c.kind} inet {table} {c.name}")
        if c.elements:
            out.append(f"add element inet {table} {c.name} {c.elements}")
    return "\n".join(out) + "\n"
