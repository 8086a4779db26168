"""Carry out a role change (`connpin ha promote|demote|fault`): run conntrackd's client commands
of `roles.plan` through `kernel.tools` (timeouts, one-line errors), converge through
`engine.converge` (the one reconcile path), and on promotion flush the stranded pinned
connections when `on_promote = "flush-stranded"`.

`connpin ha promote` through `python -m connpin` has run the commit already, under the lock,
before connpin's start-up (`fast`): it is reported here in its place and not run again.
Role changes are serialized by their own lock (keepalived does not wait for one notify command
before it starts the next); each step is reported as one line with its duration, and a failed
step does not stop the rest: a router that becomes master must still converge.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from connpin.ha import fast, roles
from connpin.model import Config
from connpin.values import Observed

#: Seconds a role change waits for the previous one to finish.
LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def _serialized(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """The role-change lock: the one `fast.start` already holds in this process, else taken."""
    fd = fast.held if fast.held is not None else fast.lock(timeout)
    fast.held = None
    try:
        yield
    finally:
        os.close(fd)


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def _conntrackd(command: roles.Command, say: Callable[[str], None]) -> bool:
    early = fast.done
    if early is not None and early.argv == command.argv:  # done before connpin's start-up
        fast.done = None
        say(f"{early.line}, before connpin's start-up")
        return early.ok
    ok, line = fast.conntrackd(command.argv)
    say(line)
    return ok


def flush_stranded(config: Config, observed: Observed) -> tuple[int, int]:
    """Delete the pinned entries NATed to an address this router does not have. Returns
    (how many were stranded, how many the kernel deleted)."""
    from connpin.kernel import conntrack as ct

    addresses = [a for link in observed.links.values() for a in link.addresses]
    own = roles.own_addresses(addresses, observed.inside)
    with ct.Conntrack() as c:
        chosen = roles.stranded(c.entries(0, 0), config.pinning.mark_mask, own)
        return len(chosen), c.delete(chosen)


def _foreign_table(config: Config) -> bool:
    """Never converge over an nft table of the same name connpin did not make. Other conflicts
    (`up`/`down` refuse them) do not stop a role change: a new master must converge."""
    if config.pinning.backend == "iptables":
        return False
    from connpin.kernel import inventory

    return bool(inventory.foreign_table(config))


def _converge(config: Config, say: Callable[[str], None]) -> tuple[Observed, bool] | None:
    """engine.converge, reported. None when it did not run through; else what it observed
    and whether the kernel matches the plan."""
    from connpin import engine

    started = time.monotonic()
    if _foreign_table(config):
        say(f"converge: refused: nft table inet {config.pinning.nft_table} was not created by "
            "connpin; nothing changed (choose another pinning.nft_table)")
        return None
    try:
        out = engine.converge(config)
    except Exception as e:  # noqa: BLE001 - reported; the caller goes on (the flush)
        say(f"converge: failed: {type(e).__name__}: {' '.join(str(e).split())}")
        return None
    for note in out.notes:
        say(f"converge: {note}")
    n = len(out.result.steps)
    if out.left:
        say(f"converge: {n} change(s), but the kernel still differs from the plan "
            f"({len(out.left)} step(s); see `connpin status`)")
        return out.result.observed, False
    say(f"converge: {n} change(s), verified ({_ms(started)})")
    return out.result.observed, True


def carry_out(config: Config, role: str, say: Callable[[str], None]) -> bool:
    """Run `role`'s plan; `say` gets one line per step. Returns False when a step failed."""
    from connpin import engine

    assert config.ha is not None
    plan = roles.plan(config.ha, role)
    ok = True
    with _serialized():
        for command in plan.commands:
            ok = _conntrackd(command, say) and ok
        observed: Observed | None = None
        converged = _converge(config, say)
        if converged is None:
            ok = False
        else:
            observed, good = converged
            ok = good and ok
        if plan.flush_stranded:
            started = time.monotonic()
            if observed is None:
                observed = engine.observe(config).observed
            found, deleted = flush_stranded(config, observed)
            say(f"flush stranded: {deleted} of {found} pinned connection(s) NATed to an address "
                f"this router does not have deleted ({_ms(started)})")
    return ok
