"""One converge: lock, reconcile, verify, and act on the uplinks that changed state.

Shared by the CLI (`apply`, `up`, `down`, `remove`, `plan --live`) and the daemon (`watch`), so
there is exactly one way to compute and install the state.
"""

from __future__ import annotations

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
             remove: bool = False, effects: bool = True, machine: Any = None) -> Outcome:
    """Bring the kernel to the desired state under the namespace's lock.

    `machine` defaults to a fresh `Kernel` (closed afterwards); the daemon passes its own.
    """
    from connpin.kernel import state

    started = time.monotonic()
    with state.locked():
        own = machine is None
        if own:
            from connpin.kernel.machine import Kernel

            machine = Kernel()
        try:
            result = reconcile.run(config, machine, going_down=going_down, remove=remove,
                                   effects=effects)
            left = reconcile.verify(config, machine, going_down, remove=remove) if effects else []
        finally:
            if own:
                machine.close()
    return Outcome(result, left, (time.monotonic() - started) * 1000)
