"""What the running daemon tells `connpin status`: a small JSON file in the run directory
(`watch.json` beside connpin's state), written when a persistent failure starts, repeats or ends.
"""

from __future__ import annotations

import contextlib
import json
import os

NAME = "watch.json"


def _path() -> str:
    from connpin.kernel import state

    return os.path.join(state.directory(), NAME)


def save(record: dict) -> None:
    path = _path()
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, sort_keys=True)
        os.replace(tmp, path)


def clear() -> None:
    with contextlib.suppress(OSError):
        os.unlink(_path())


def load() -> dict | None:
    """The running daemon's record, or None (no daemon, or the one that wrote it is gone)."""
    try:
        with open(_path()) as f:
            record = json.load(f)
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def dead_now() -> frozenset[str]:
    """The uplinks the running daemon found dead (none without a daemon): a hook's converge,
    `status` and `plan --live` take them as dead too, so they agree with the daemon instead of
    putting a dead uplink back into the selection until the daemon converges again."""
    dead = (load() or {}).get("dead") or []
    return frozenset(n for n in dead if isinstance(n, str)) if isinstance(dead, list) else (
        frozenset())


def text(record: dict | None) -> str:
    """One line for `connpin status` when the daemon is failing, else ""."""
    failing = (record or {}).get("failing")
    if not failing:
        return ""
    return (f"watch (pid {record['pid']}): converge failing since {failing['since']} "  # type: ignore[index]
            f"({failing['attempts']} attempts): {failing['cause']}\n")
