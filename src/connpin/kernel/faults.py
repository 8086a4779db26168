"""Fault injection for the crash-safety tests: `CONNPIN_FAULT=N` makes the Nth fault point this
process reaches SIGKILL it (no cleanup, no finally: like a power cut or the OOM killer). The
points sit before every step an apply executes, after a sysctl original is journaled and before
the state file is renamed into place. Unset (always, outside tests), a point costs one lookup.
"""

from __future__ import annotations

import os
import signal

_reached = 0


def point() -> None:
    """One place where a crash may happen; dies here when it is the one CONNPIN_FAULT names."""
    global _reached
    want = os.environ.get("CONNPIN_FAULT")
    if not want:
        return
    _reached += 1
    if want.isdigit() and _reached == int(want):
        os.kill(os.getpid(), signal.SIGKILL)


def reached() -> int:
    """How many points this process has passed (CONNPIN_FAULT set): the tests size sweeps by it."""
    return _reached
