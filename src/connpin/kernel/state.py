"""What connpin remembers between runs, per network namespace, in its directory
`$CONNPIN_RUN_DIR/net-<namespace cookie>` (default /run/connpin): the lock that serializes
concurrent runs (hooks, apply, the daemon), and `state.json`, read and written whole and
atomically (the kernel adapter decides its content): the sysctl values connpin changed (so
`remove` can put them back), the slice it last applied (rule and table ranges, nft table,
backend: so a changed slice is removed under the old values), the uplink interfaces that were
up (so failback and on_down see transitions) and the ruleset it last verified (hashes, and the
nft generation and listing that spare an `nft list`). Other files in that directory belong to
their users (pins: `failback.json`; `connpin sweep`: `sweep.lock`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from connpin.kernel import netns

RUN_DIR = os.environ.get("CONNPIN_RUN_DIR", "/run/connpin")


def directory() -> str:
    return os.path.join(RUN_DIR, f"net-{netns.cookie()}")


@contextmanager
def locked() -> Iterator[None]:
    """One connpin at a time per namespace: two hooks firing together queue up here."""
    d = directory()
    os.makedirs(d, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load() -> dict:
    try:
        with open(os.path.join(directory(), "state.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def save(state: dict) -> None:
    """Write the state atomically; an empty state leaves no file behind."""
    d = directory()
    if not state:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, "state.json"))
        return
    os.makedirs(d, mode=0o755, exist_ok=True)
    tmp = os.path.join(d, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(d, "state.json"))
