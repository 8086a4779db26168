"""observe -> diff against desired -> apply -> verify: the ONE path behind plan, apply, up, down,
status and remove. `plan` is this path with effects off on an imagined machine."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from connpin import desired as D
from connpin.model import Config


def sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Installed:
    """What of connpin's slice the kernel holds now."""

    rules: tuple[D.Rule, ...] = ()
    routes: tuple[D.Route, ...] = ()
    nft_listing: str | None = None
    nft_in_place: str | None = None  # sha of the ruleset the table was last verified to hold
    saved_sysctls: dict[str, int] = field(default_factory=dict)
    stale_nft: tuple[tuple[str, str], ...] = ()  # (name, listing) of connpin's former tables
    # connpin's iptables chains when the ruleset now lives elsewhere (the backend changed)
    stale_iptables: str | None = None
    up: tuple[str, ...] | None = None  # interfaces last committed as up; None: never applied


@dataclass(frozen=True)
class Step:
    """One change to the machine; `prev` is what undoing it puts back."""

    kind: str  # sysctl | nft | iptables | route | rule
    op: str  # add | del | replace | set | restore; for nft: the table's name
    obj: Any
    prev: Any = None

    def __str__(self) -> str:
        if self.kind == "nft":
            what = "delete table" if self.obj is None else "replace table"
            return f"nft {what} inet {self.op} (one transaction)"
        if self.kind == "iptables":
            if self.obj is None:
                return "iptables: delete chains CONNPIN-* and their jumps"
            return "iptables-restore --noflush: replace chains CONNPIN-* (each table at once)"
        if self.kind == "sysctl":
            key, value = self.obj
            verb = "restore" if self.op == "restore" else "set"
            return f"sysctl {verb} net.ipv4.{key.replace('/', '.')}={value}"
        return f"{self.obj.ip} {self.kind} {self.op} {self.obj}"


class Machine(Protocol):
    def observe(self, config: Config) -> tuple[D.Observed, Installed]: ...
    def execute(self, step: Step) -> None: ...
    def committed(self, config: Config, want: D.Desired) -> None: ...


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
            steps.append(Step("sysctl", "set", (key, value), cur))
    if want.ruleset is not None and (
        have.nft_listing is None or have.nft_in_place != sha(want.ruleset)
    ):
        steps.append(Step(_ruleset_kind(want), want.nft_table, want.ruleset, have.nft_listing))

    have_routes = set(have.routes)
    current = {(r.family, r.table): r for r in have.routes if r.dst == "default"}
    replaced = set()
    for r in want.routes:
        if r in have_routes:
            continue
        if (r.family, r.table) in current:
            old = current[r.family, r.table]
            steps.append(Step("route", "replace", r, old))
            replaced.add(old)
        else:
            steps.append(Step("route", "add", r))

    want_rules, have_rules = Counter(want.rules), Counter(have.rules)
    key = D.sort_key
    steps += [Step("rule", "add", r) for r in sorted((want_rules - have_rules).elements(), key=key)]
    steps += [Step("rule", "del", r) for r in sorted((have_rules - want_rules).elements(), key=key)]
    steps += [Step("route", "del", r)
              for r in sorted(have_routes - set(want.routes) - replaced, key=key)]

    wanted_keys = {k for k, _ in want.sysctls}
    for key, original in sorted(have.saved_sysctls.items()):
        if key not in wanted_keys and key in observed.sysctls:
            steps.append(Step("sysctl", "restore", (key, original), observed.sysctls[key]))
    if want.ruleset is None and have.nft_listing is not None:
        steps.append(Step(_ruleset_kind(want), want.nft_table, None, have.nft_listing))
    steps += [Step("nft", name, None, listing) for name, listing in have.stale_nft]
    if have.stale_iptables is not None:
        steps.append(Step("iptables", want.nft_table, None, have.stale_iptables))
    return steps


def undo(step: Step) -> Step:
    if step.kind == "rule":
        return Step("rule", "del" if step.op == "add" else "add", step.obj)
    if step.kind == "route":
        if step.op == "replace":
            return Step("route", "replace", step.prev, step.obj)
        return Step("route", "del" if step.op == "add" else "add", step.obj)
    if step.kind == "sysctl":
        return Step("sysctl", "set", (step.obj[0], step.prev), step.obj[1])
    return Step(step.kind, step.op, step.prev, step.obj)


def _ruleset_kind(want: D.Desired) -> str:
    """The step kind that installs `want.ruleset`: one per backend."""
    return "iptables" if want.backend == "iptables" else "nft"


@dataclass
class Result:
    desired: D.Desired
    observed: D.Observed
    installed: Installed
    steps: list[Step]


def run(config: Config, machine: Machine, *, going_down: frozenset[str] = frozenset(),
        remove: bool = False, effects: bool = True) -> Result:
    """Compute, diff and (with effects) apply; on failure undo what was done and raise."""
    observed, have = machine.observe(config)
    want = D.nothing(config, observed) if remove else D.compute(config, observed, going_down)
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
                if d.kind == "sysctl" and d.prev is None:
                    continue
                try:
                    machine.execute(undo(d))
                except Exception as ue:  # noqa: BLE001
                    failed.append(f"{undo(d)}: {ue}")
            raise ApplyError(step, str(e), failed) from None
        done.append(step)
    machine.committed(config, want)
    return result


def verify(config: Config, machine: Machine, going_down: frozenset[str] = frozenset(),
           remove: bool = False) -> list[Step]:
    """What still differs after an apply (empty when the kernel matches the plan)."""
    return run(config, machine, going_down=going_down, remove=remove, effects=False).steps



class Imagined:
    """A machine where every exact uplink is up and nothing is installed yet: what `plan` shows.
    Executes nothing. `backend` is what pinning.backend = "auto" stands for."""

    def __init__(self, backend: str = "nftables") -> None:
        self.backend = backend

    def observe(self, config: Config) -> tuple[D.Observed, Installed]:
        return D.Observed(imagined=True, backend=self.backend), Installed()

    def execute(self, step: Step) -> None:
        raise AssertionError("plan never executes")

    def committed(self, config: Config, want: D.Desired) -> None:
        pass
