"""observe -> diff against desired -> apply -> verify: the ONE path behind plan, apply, up, down,
status and remove. `plan` is this path with effects off on an imagined machine.

The machine (kernel/machine.Kernel, or Imagined for `plan`) reports facts and carries out steps;
every decision is taken here or in `desired`: which backend holds the ruleset, which of connpin's
former slices to read so the diff removes what is left there (`scope`), and the steps, typed
values that each know their undo.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from connpin import desired as D
from connpin.model import Config
from connpin.render import nft


def sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Scope:
    """What of the machine is connpin's to read: its slice now, and what it installed under a
    former slice (after a change of pinning.* or of the backend) so the diff removes it."""

    rule_ranges: tuple[range, ...]
    table_ranges: tuple[range, ...]
    families: tuple[int, ...]  # (4, 6), or (4,) where the kernel has no IPv6
    backend: str  # nftables | iptables: where the ruleset lives now
    nft_table: str  # connpin's nft table (pinning.nft_table)
    stale_table: str | None = None  # a former nft table of connpin's, to read and delete
    stale_chains: bool = False  # connpin's iptables chains are stale: read and delete them


def scope(config: Config, observed: D.Observed) -> Scope:
    """The slice to read on this machine: pinning.* now, plus what `observed.recorded` says
    connpin installed before, where it differs."""
    rule_range, table_range = D.owned(config)
    rule_ranges, table_ranges = [rule_range], [table_range]
    old = observed.recorded
    back = D.backend(config, observed)
    table = config.pinning.nft_table
    stale_table, stale_chains = None, False
    if old is not None:
        if old.rules and old.rules != rule_range:
            rule_ranges.append(old.rules)
        if old.tables and old.tables != table_range:
            table_ranges.append(old.tables)
        if back == "iptables":  # switched from nftables: connpin's nft table goes
            if old.backend == "nftables" and old.nft_table and observed.nft:
                stale_table = old.nft_table
        else:
            if old.nft_table not in (None, table):
                stale_table = old.nft_table
            stale_chains = old.backend == "iptables"  # switched from iptables: its chains go
    return Scope(tuple(rule_ranges), tuple(table_ranges), (4, 6) if observed.ipv6 else (4,),
                 back, table, stale_table, stale_chains)


@dataclass(frozen=True)
class Installed:
    """What of connpin's slice the kernel holds now."""

    rules: tuple[D.Rule, ...] = ()
    routes: tuple[D.Route, ...] = ()
    ruleset: str | None = None  # the listing of connpin's ruleset (nft table or iptables chains)
    ruleset_in_place: str | None = None  # sha of the ruleset it was last verified to hold
    saved_sysctls: dict[str, int] = field(default_factory=dict)
    stale_tables: tuple[tuple[str, str], ...] = ()  # (name, listing) of connpin's former tables
    # connpin's iptables chains when the ruleset now lives elsewhere (the backend changed)
    stale_chains: str | None = None
    up: tuple[str, ...] | None = None  # interfaces last committed as up; None: never applied
    # the ruleset text (as desired rendered it) that is verified in place: what an update of
    # elements starts from (None: unknown, the table is replaced as a whole)
    rendered: str | None = None


# The steps: one change to the machine each; `undo` gives the step that puts back what was.

@dataclass(frozen=True)
class SysctlSet:
    """Set a sysctl (net.ipv4.<key>); `restore` when it puts back the value connpin found."""

    key: str
    value: int
    prev: int | None  # the value before (None: unknown, nothing to undo)
    restore: bool = False

    def __str__(self) -> str:
        verb = "restore" if self.restore else "set"
        return f"sysctl {verb} net.ipv4.{self.key.replace('/', '.')}={self.value}"


@dataclass(frozen=True)
class Ruleset:
    """Replace connpin's ruleset as a whole (text None: delete it) in one backend: the nft table
    `table` in one transaction, or the iptables chains CONNPIN-* (each table at once)."""

    backend: str  # nftables | iptables
    table: str  # the nft table's name
    text: str | None
    prev: str | None  # the listing it replaces

    def __str__(self) -> str:
        if self.backend == "iptables":
            if self.text is None:
                return "iptables: delete chains CONNPIN-* and their jumps"
            return "iptables-restore --noflush: replace chains CONNPIN-* (each table at once)"
        what = "delete table" if self.text is None else "replace table"
        return f"nft {what} inet {self.table} (one transaction)"


@dataclass(frozen=True)
class Elements:
    """Replace the elements of some named maps and sets of connpin's nft table in place, in
    one transaction (an uplink died or came back): the table, its chains and counters stay."""

    table: str
    changes: tuple[nft.Change, ...]

    def __str__(self) -> str:
        what = ", ".join(f"{c.kind} {c.name}" for c in self.changes)
        return f"nft update elements of {what} in inet {self.table} (one transaction)"


class _IpStep:
    """A rule or route change through netlink; str() is the iproute2 command."""

    what: str  # rule | route
    verb: str  # add | del | replace

    def __str__(self) -> str:
        obj = getattr(self, self.what)
        return f"{obj.ip} {self.what} {self.verb} {obj}"


@dataclass(frozen=True)
class _RuleStep(_IpStep):
    rule: D.Rule
    what = "rule"


@dataclass(frozen=True)
class _RouteStep(_IpStep):
    route: D.Route
    what = "route"


class RuleAdd(_RuleStep):
    verb = "add"


class RuleDel(_RuleStep):
    verb = "del"


class RouteAdd(_RouteStep):
    verb = "add"


class RouteDel(_RouteStep):
    verb = "del"


@dataclass(frozen=True)
class RouteReplace(_RouteStep):
    prev: D.Route  # the route of the same table and family it replaces
    verb = "replace"


Step = SysctlSet | Ruleset | Elements | RuleAdd | RuleDel | RouteAdd | RouteDel | RouteReplace


def undo(step: Step) -> Step | None:
    """The step that puts back what `step` changed (None: nothing known to put back)."""
    match step:
        case RuleAdd(rule):
            return RuleDel(rule)
        case RuleDel(rule):
            return RuleAdd(rule)
        case RouteAdd(route):
            return RouteDel(route)
        case RouteDel(route):
            return RouteAdd(route)
        case RouteReplace(route, prev):
            return RouteReplace(prev, route)
        case SysctlSet(key, value, prev):
            return None if prev is None else SysctlSet(key, prev, value)
        case Ruleset(backend, table, text, prev):
            return Ruleset(backend, table, prev, text)
        case Elements(table, changes):
            return Elements(table, tuple(c._replace(elements=c.prev, prev=c.elements)
                                         for c in changes))
    raise TypeError(f"not a step: {step!r}")


class Machine(Protocol):
    """Where reconcile reads facts and carries out steps (the kernel, or an imagined one)."""

    def observe(self, config: Config) -> D.Observed: ...
    def installed(self, scope: Scope) -> Installed: ...
    def execute(self, step: Step) -> None: ...
    def committed(self, want: D.Desired) -> None: ...


class ApplyError(Exception):
    """A step failed; the steps already taken were undone."""

    def __init__(self, step: Step, message: str, undo_failed: list[str] | None = None):
        self.step, self.message, self.undo_failed = step, message, undo_failed or []
        extra = f" (and undo failed: {'; '.join(self.undo_failed)})" if self.undo_failed else ""
        super().__init__(f"{step}: {message}; previous state kept{extra}")


def diff(want: D.Desired, observed: D.Observed, have: Installed) -> list[Step]:
    """The steps that turn `have` into `want`, in a safe order: sysctls and the ruleset first,
    tables filled before rules point at them, rules removed before their tables are emptied."""
    steps: list[Step] = []
    for key, value in want.sysctls:
        cur = observed.sysctls.get(key)
        if cur != value:
            steps.append(SysctlSet(key, value, cur))
    if want.ruleset is not None and (
        have.ruleset is None or have.ruleset_in_place != sha(want.ruleset)
    ):
        changes = in_place(want, have)
        steps.append(Elements(want.nft_table, changes) if changes else
                     Ruleset(want.backend, want.nft_table, want.ruleset, have.ruleset))

    have_routes = set(have.routes)
    current = {(r.family, r.table): r for r in have.routes if r.dst == "default"}
    replaced = set()
    for r in want.routes:
        if r in have_routes:
            continue
        if (r.family, r.table) in current:
            old = current[r.family, r.table]
            steps.append(RouteReplace(r, old))
            replaced.add(old)
        else:
            steps.append(RouteAdd(r))

    want_rules, have_rules = Counter(want.rules), Counter(have.rules)
    key = D.sort_key
    steps += [RuleAdd(r) for r in sorted((want_rules - have_rules).elements(), key=key)]
    steps += [RuleDel(r) for r in sorted((have_rules - want_rules).elements(), key=key)]
    steps += [RouteDel(r) for r in sorted(have_routes - set(want.routes) - replaced, key=key)]

    wanted_keys = {k for k, _ in want.sysctls}
    for key, original in sorted(have.saved_sysctls.items()):
        if key not in wanted_keys and key in observed.sysctls:
            steps.append(SysctlSet(key, original, observed.sysctls[key], restore=True))
    if want.ruleset is None and have.ruleset is not None:
        steps.append(Ruleset(want.backend, want.nft_table, None, have.ruleset))
    steps += [Ruleset("nftables", name, None, listing) for name, listing in have.stale_tables]
    if have.stale_chains is not None:
        steps.append(Ruleset("iptables", want.nft_table, None, have.stale_chains))
    return steps


def in_place(want: D.Desired, have: Installed) -> tuple[nft.Change, ...] | None:
    """The element changes that turn the installed nft table into the wanted one, when that is
    all that differs; None when the table must be replaced as a whole: another backend, no
    table, a table not verified to be what connpin last rendered (changed by someone, or
    unknown), or any difference beyond the elements of named maps and sets."""
    if (want.backend != "nftables" or want.ruleset is None or have.ruleset is None
            or have.rendered is None or have.ruleset_in_place is None
            or have.ruleset_in_place != sha(have.rendered)):
        return None
    return nft.element_changes(have.rendered, want.ruleset) or None


@dataclass
class Result:
    desired: D.Desired
    observed: D.Observed
    installed: Installed
    steps: list[Step]


def run(config: Config, machine: Machine, *, going_down: frozenset[str] = frozenset(),
        remove: bool = False, effects: bool = True, dead: frozenset[str] = frozenset()
        ) -> Result:
    """Compute, diff and (with effects) apply; on failure undo what was done and raise.
    `dead`: uplinks new connections must avoid (when connpin chooses uplinks)."""
    observed = machine.observe(config)
    have = machine.installed(scope(config, observed))
    want = (D.nothing(config, observed) if remove
            else D.compute(config, observed, going_down, dead))
    steps = diff(want, observed, have)
    result = Result(want, observed, have, steps)
    if not effects:
        return result
    done: list[Step] = []
    for step in steps:
        try:
            machine.execute(step)
        except Exception as e:  # noqa: BLE001 - any failure must roll back
            failed = []
            for d in reversed(done):
                back = undo(d)
                if back is None:
                    continue
                try:
                    machine.execute(back)
                except Exception as ue:  # noqa: BLE001
                    failed.append(f"{back}: {ue}")
            raise ApplyError(step, str(e), failed) from None
        done.append(step)
    machine.committed(want)
    return result


def verify(config: Config, machine: Machine, going_down: frozenset[str] = frozenset(),
           remove: bool = False, dead: frozenset[str] = frozenset()) -> list[Step]:
    """What still differs after an apply (empty when the kernel matches the plan)."""
    return run(config, machine, going_down=going_down, remove=remove, effects=False,
               dead=dead).steps


class Imagined:
    """A machine where every exact uplink is up and nothing is installed yet: what `plan` shows.
    Executes nothing. `nft`: whether the nft tool is there (pinning.backend = "auto")."""

    def __init__(self, nft: bool = True) -> None:
        self.nft = nft

    def observe(self, config: Config) -> D.Observed:
        return D.Observed(imagined=True, nft=self.nft)

    def installed(self, scope: Scope) -> Installed:
        return Installed()

    def execute(self, step: Step) -> None:
        raise AssertionError("plan never executes")

    def committed(self, want: D.Desired) -> None:
        pass
