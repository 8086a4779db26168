"""(config, what the kernel shows) -> the state connpin wants: a plain, printable, comparable value.

Pure. The observation is passed in (`Observed`), so `plan` can feed an imagined machine and
`apply`, `up`, `down` and `status` feed the real one, all through this one function.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from connpin import alloc, choice, model
from connpin.alloc import Slot
from connpin.const import MAIN_TABLE
from connpin.model import MAX_INTERFACES, RULE_BAND, Config, ConfigError, Uplink
from connpin.render import iptables, nft
from connpin.values import Link, Observed, Route, Rule, UplinkState  # noqa: F401 (re-exported)

AUTO = "auto"


@dataclass(frozen=True)
class Desired:
    """Everything connpin wants installed. Compare two of these to know what changes."""

    nft_table: str
    ruleset: str | None  # None: connpin's table must not exist (remove)
    uplinks: tuple[UplinkState, ...]
    rules: tuple[Rule, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, int], ...]
    rule_range: range
    table_range: range
    backend: str = "nftables"  # nftables | iptables: what `ruleset` is written for


def owned(config: Config) -> tuple[range, range]:
    """connpin's rule priorities and table ids."""
    return config.pinning.rule_range, config.pinning.table_range


def base_rules(config: Config, family: int = 4) -> tuple[Rule, ...]:
    """The rules that exist whenever connpin is applied, whichever uplinks are up.

    P+0: unmarked packets skip the band at the cost of one rule;
    P+1: marked packets still use main for anything more specific than a default route;
    P+2..: the mark tree (`tree_rules`): a marked packet reaches its uplink's lookup in
           O(log uplinks) rules;
    END-1: a marked packet whose uplink has no route is refused, never sent out another uplink;
    END: landing spot of the skip.
    """
    p, mask = config.pinning.rule_priority, config.pinning.mark_mask
    end = p + RULE_BAND - 1
    return (
        Rule(p, "goto", fwmark=0, fwmask=mask, goto=end, family=family),
        Rule(p + 1, "lookup", table=MAIN_TABLE, suppress_prefixlength=0, family=family),
        Rule(end - 1, "unreachable", family=family),
        Rule(end, "nop", family=family),
    )


def tree_rules(config: Config, known: list[Slot], up: set[int], family: int = 4) -> list[Rule]:
    """A binary tree of `goto` rules over the mark bits of the known slots, laid out in priority
    order (goto only jumps forward), with each slot's `fwmark M/MASK lookup T` as a leaf.

    The kernel walks ip rules one by one but a goto jumps straight to its target, so a marked
    packet costs one rule per tree level instead of one per uplink. An inner node tests the
    highest index bit on which its slots differ: set -> goto the right half, clear -> fall
    through into the left half, which follows at once. Leaves match the whole mark, so the tree
    only ever saves work: a packet that misses its leaf (uplink down, or mid-change) falls
    through to the `unreachable` rule, never into another uplink's table. The tree is built over
    every known slot (not only the up ones), so an uplink going up or down adds or removes just
    its leaf; the priorities of a leaf's absent rule simply stay empty (a goto to an empty
    priority falls through). n slots take 2n-1 priorities from P+2. While no leaf is up (an
    IPv4-only router's IPv6 family) there is no tree at all.
    """
    mask = config.pinning.mark_mask
    out: list[Rule] = []

    def build(part: list[Slot], prio: int) -> None:
        if len(part) == 1:
            if part[0].index in up:
                out.append(Rule(prio, "lookup", table=part[0].table, fwmark=part[0].mark,
                                fwmask=mask, family=family))
            return
        bit = 1 << ((part[0].index ^ part[-1].index).bit_length() - 1)
        left = [s for s in part if not s.index & bit]
        right = part[len(left):]
        mark = alloc.deposit(bit, mask)
        right_at = prio + 2 * len(left)
        out.append(Rule(prio, "goto", fwmark=mark, fwmask=mark, goto=right_at, family=family))
        build(left, prio + 1)
        build(right, right_at)

    ordered = sorted(set(known))
    if any(s.index in up for s in ordered):  # no leaf up (e.g. no IPv6 uplink): no tree either
        build(ordered, config.pinning.rule_priority + 2)
    return out


def slots(config: Config, observed: Observed) -> list[tuple[Uplink, str, Slot]]:
    """Every uplink interface connpin knows of: exact ones always, pattern ones when present."""
    exact = model.exact_marks(config)
    out = [(u, u.interface, exact[u.name]) for u in config.uplinks if not u.is_pattern]
    taken = {s.index for s in exact.values()}
    for u in config.uplinks:
        if u.is_pattern:
            present = [n for n in observed.links if config.match(n) is u]
            for ifname, s in model.pattern_marks(config, u, present, taken).items():
                out.append((u, ifname, s))
    if len(out) > MAX_INTERFACES:
        raise ConfigError(config.path, "uplink", f"{len(out)} uplink interfaces; connpin's rule "
                          f"band has room for {MAX_INTERFACES}")
    return sorted(out, key=lambda t: (t[2].index, t[1]))


def _uplink_state(u: Uplink, ifname: str, s: Slot, observed: Observed,
                  going_down: frozenset[str]) -> UplinkState:
    v4 = _state4(u, ifname, s, observed, going_down)
    up6, reason6, route6 = _state6(u, ifname, s, observed, going_down)
    return replace(v4, up6=up6, reason6=reason6, route6=route6, nptv6=u.nptv6,
                   masquerade6=u.masquerade6)


def _state6(u: Uplink, ifname: str, s: Slot, observed: Observed,
            going_down: frozenset[str]) -> tuple[bool, str, Route | None]:
    """IPv6 of one uplink interface: up when main has an IPv6 default route out of it (or a
    static gateway6 is configured); the table routes `dev` for point-to-point links and via the
    (link-local) gateway for Ethernet-like ones."""
    if observed.imagined:
        gw = (u.gateway6 if u.gateway6 not in (None, AUTO)
              else "<auto>" if u.ethernet6 else None)
        return True, "assumed up (plan)", Route(s.table, ifname, gw, family=6)
    if not observed.ipv6:
        return False, "IPv6 is disabled in the kernel", None
    link = observed.links.get(ifname)
    if ifname in going_down:
        return False, "going down (hook)", None
    if link is None:
        return False, "no such interface", None
    if not link.up:
        return False, "interface is down", None
    if u.gateway6 not in (None, AUTO):
        return True, "up", Route(s.table, ifname, u.gateway6, family=6)
    if ifname not in observed.gateways6:
        return False, "no IPv6 default route in main (IPv4-only)", None
    gw = observed.gateways6[ifname] if u.ethernet6 else None
    return True, "up", Route(s.table, ifname, gw, family=6)


def _state4(u: Uplink, ifname: str, s: Slot, observed: Observed,
            going_down: frozenset[str]) -> UplinkState:
    def down(reason: str) -> UplinkState:
        return UplinkState(u.name, ifname, s, False, reason, None, u.masquerade)

    if observed.imagined:
        gw = u.gateway if u.gateway != AUTO else "<auto>"
        route = Route(s.table, ifname, gw)
        return UplinkState(u.name, ifname, s, True, "assumed up (plan)", route, u.masquerade)
    if ifname in going_down:
        return down("going down (hook)")
    link = observed.links.get(ifname)
    if link is None:
        return down("no such interface")
    if not link.up:
        return down("interface is down")
    if not link.addresses:
        return down("no IPv4 address")
    gw = u.gateway
    if gw == AUTO:
        gw = observed.gateways.get(ifname)
        if gw is None:
            return down("waiting for a default route in main (gateway = \"auto\")")
    route = Route(s.table, ifname, gw)
    return UplinkState(u.name, ifname, s, True, "up", route, u.masquerade)


def _sysctls(config: Config, ups: list[UplinkState], observed: Observed) -> list[tuple[str, int]]:
    """Loose rp_filter where the effective value is strict, and src_valid_mark, on live uplinks."""
    if not config.pinning.sysctl:
        return []
    out: list[tuple[str, int]] = []
    strict_all = observed.sysctls.get("conf/all/rp_filter", 0) == 1
    for st in ups:
        if not st.up or observed.imagined:
            continue
        own = observed.sysctls.get(f"conf/{st.interface}/rp_filter", 0)
        if own in (1, 2) or strict_all:  # 2 once we set it: stable, not flip-flopping
            out.append((f"conf/{st.interface}/rp_filter", 2))
        out.append((f"conf/{st.interface}/src_valid_mark", 1))
    return out


def compute(config: Config, observed: Observed,
            going_down: frozenset[str] = frozenset(),
            dead: frozenset[str] = frozenset()) -> Desired:
    """The full desired state for this config on this machine. `dead`: names of uplinks whose
    health check failed; new connections are not given to them (when connpin chooses)."""
    states = [_uplink_state(u, i, s, observed, going_down) for u, i, s in slots(config, observed)]
    rules = list(base_rules(config))
    known = [st.slot for st in states]
    rules += tree_rules(config, known, {st.slot.index for st in states if st.up})
    if observed.ipv6 or observed.imagined:
        rules += base_rules(config, 6)
        rules += tree_rules(config, known, {st.slot.index for st in states if st.up6}, 6)
    routes = [st.route for st in states if st.route is not None]
    routes += [st.route6 for st in states if st.route6 is not None]
    rule_range, table_range = owned(config)
    back = backend(config, observed)
    if config.selecting and back != "nftables":
        raise ConfigError(config.path, "pinning.backend", "connpin chooses uplinks (check, "
                          "weight, [[class]]) only with nftables, and the nft tool is missing")
    for i, u in enumerate(config.uplinks):
        if back != "nftables" and u.on_down == "reset":
            raise ConfigError(config.path, f"uplink[{i}] ({u.name}).on_down", "\"reset\" needs "
                              "the nftables backend, and the nft tool is missing")
    choices = choice.choices(config, states, 4, dead) + choice.choices(config, states, 6, dead)
    resets = dead_marks(config, states, observed, going_down, dead)
    return Desired(
        nft_table=config.pinning.nft_table,
        ruleset=nft.render(config, states, choices, resets) if back == "nftables"
        else iptables.render(
            config, states, ipv6=observed.ipv6 or observed.imagined),
        uplinks=tuple(states),
        rules=tuple(sorted(rules, key=sort_key)),
        routes=tuple(sorted(routes, key=sort_key)),
        sysctls=tuple(_sysctls(config, states, observed)),
        rule_range=rule_range,
        table_range=table_range,
        backend=back,
    )


def dead_marks(config: Config, states: list[UplinkState], observed: Observed,
               going_down: frozenset[str], dead: frozenset[str]
               ) -> tuple[tuple[int, int], ...] | None:
    """on_down = "reset": (family, mark) of the uplink interfaces with it that are dead by
    their health check in that family (`choice.is_dead`), or whose link is down or gone (both
    families): their pinned connections of that family are reset. None when no uplink has
    on_down = "reset" (then nothing of it is rendered)."""
    reset = {u.name for u in config.uplinks if u.on_down == "reset"}
    if not reset:
        return None
    out = set()
    for st in states:
        link = observed.links.get(st.interface)
        down = not observed.imagined and (st.interface in going_down or link is None
                                          or not link.up)
        for family in (4, 6):
            if st.uplink in reset and (down or choice.is_dead(dead, st.uplink, family)):
                out.add((family, st.slot.mark))
    return tuple(sorted(out, key=lambda fm: (fm[1], fm[0])))


def backend(config: Config, observed: Observed) -> str:
    """nftables or iptables: pinning.backend; "auto" is iptables where the nft tool is missing."""
    b = config.pinning.backend
    if b != AUTO:
        return b
    return "nftables" if observed.nft else "iptables"


def sort_key(obj: Rule | Route) -> tuple:
    return obj.key()


def nothing(config: Config, observed: Observed | None = None) -> Desired:
    """The state `remove` converges to: none of connpin's objects, built from the same slice."""
    rule_range, table_range = owned(config)
    return Desired(config.pinning.nft_table, None, (), (), (), (), rule_range, table_range,
                   backend(config, observed or Observed()))
