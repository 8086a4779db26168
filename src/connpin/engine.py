"""One converge: lock, reconcile, verify, and act on the uplinks that changed state.

Shared by the CLI (`apply`, `up`, `down`, `remove`, `plan --live`) and the daemon (`watch`), so
there is exactly one way to compute and install the state.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from connpin import reconcile
from connpin.model import Config


@dataclass
class Outcome:
    result: reconcile.Result
    left: list[reconcile.Step]  # what still differs after applying (empty: verified)
    ms: float  # wall time of the whole converge
    notes: list[str] = field(default_factory=list)  # e.g. failback flushes, for the log


def converge(config: Config, *, going_down: frozenset[str] = frozenset(),
             remove: bool = False, machine: Any = None,
             dead: frozenset[str] = frozenset()) -> Outcome:
    """Bring the kernel to the desired state under the namespace's lock (`dead`: uplinks new
    connections must avoid, when connpin chooses uplinks).

    `machine` defaults to a fresh `Kernel` (closed afterwards); the daemon passes its own.
    """
    from connpin.kernel import state

    own = machine is None
    if own:
        # imported before the clock starts: importing pyroute2 is start-up, not work
        from connpin.kernel.machine import Kernel
    started = time.monotonic()
    with state.locked():
        if own:
            machine = Kernel()
        try:
            result = reconcile.run(config, machine, going_down=going_down, remove=remove,
                                   dead=dead)
            # Nothing changed: the diff just taken against a fresh observation is the verify.
            left = []
            if result.steps:
                with getattr(machine, "verifying", contextlib.nullcontext)():
                    left = reconcile.verify(config, machine, going_down, remove=remove,
                                            dead=dead)
            notes = _policies(config, result) if not remove and not left else []
        finally:
            if own:
                machine.close()
    return Outcome(result, left, (time.monotonic() - started) * 1000, notes)


def observe(config: Config, machine: Any = None,
            dead: frozenset[str] | None = None) -> reconcile.Result:
    """Observe without effects: this machine's desired state, what it holds and the steps an
    apply would take, changing nothing (`status`, `connections`, `flush`, `plan --live`).
    Takes no lock: it only reads. `machine` defaults to a fresh `Kernel` (closed afterwards);
    `dead` defaults to the running daemon's dead uplinks (watch.record.dead_now)."""
    if dead is None:
        from connpin.watch import record

        dead = record.dead_now()
    own = machine is None
    if own:
        from connpin.kernel.machine import Kernel

        machine = Kernel()
    try:
        return reconcile.run(config, machine, effects=False, dead=dead)
    finally:
        if own:
            machine.close()


def _policies(config: Config, result: reconcile.Result) -> list[str]:
    """failback and on_down for the uplinks that changed state in this converge."""
    from connpin import steer

    before = result.installed.up
    came_up, went_down = steer.transitions(before, result.desired.uplinks)
    if not came_up and not went_down:
        return []
    from connpin import pins

    flushes = steer.actions(config, before, result.desired.uplinks)
    return pins.carry_out(config, flushes, result.observed,
                          [s.interface for s in went_down])


def pending() -> bool:
    """Whether busy connections wait to be flushed once idle (flush-idle)."""
    from connpin import pins

    return bool(pins.load_pending())
