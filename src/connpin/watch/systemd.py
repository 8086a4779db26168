"""sd_notify(3) without libsystemd: READY/RELOADING/STOPPING, the watchdog and STATUS= lines.

`notify` sends one datagram to $NOTIFY_SOCKET (nothing when unset; never blocks);
`watchdog_interval` reads what systemd asked for ($WATCHDOG_USEC, for this pid); `status_line`
is pure.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)  # a supervisor that does not read must never stall the daemon
        s.connect(addr)
        s.send(message.encode())


def watchdog_interval() -> float | None:
    """Seconds between two WATCHDOG=1 (half of WatchdogSec), or None when systemd wants none."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


def _ago(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def status_line(uplinks: int, up: int, since_converge: float | None, converge_ms: float | None,
                failing: str | None = None) -> str:
    """What the daemon is doing, for `systemctl status` (STATUS=)."""
    text = f"{uplinks} uplink{'s' if uplinks != 1 else ''}, {up} up"
    if since_converge is None:
        text += ", not converged yet"
    else:
        text += f", last converge {_ago(since_converge)} ago"
        if converge_ms is not None:
            text += f" ({converge_ms:.1f} ms)"
    if failing:
        text += f"; failing: {failing}"
    return text
