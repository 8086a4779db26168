"""The first step of `connpin ha promote`, run before the rest of connpin is imported: commit
conntrackd's external cache (the peer's connections, marks included) into the kernel.

A promotion is measured from the moment the master died: every millisecond before `conntrackd
-c` is a millisecond the pinned connections find no entry on the new master (docs/ha.md, the
failover gap). `python -m connpin` (what `connpin ha keepalived-notify` writes) calls `start`
before importing `connpin.cli`, and the `connpin` command first thing in `cli.main`. It reads
the config with tomllib and `settings.parse`, takes the role-change lock without waiting, runs
the plan's first step (`roles.plan(..., "promote")`: the same command `act.carry_out` would
run) and keeps the lock. `act.carry_out` then goes on from there, under the same lock, without
committing twice, and reports the step in its place. When anything is unusual (other options,
--netns, not root, an unreadable config, the lock held by another role change) nothing happens
here and the ordinary path runs every step, as before.

Role-change lock and the conntrackd call with its one-line outcome live here so both paths
share them.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import sys
import time
from dataclasses import dataclass

#: The path of the config when neither -c nor $CONNPIN_CONFIG says (model.DEFAULT_CONFIG, which
#: this module does not import: importing the model is what the fast path avoids).
DEFAULT_CONFIG = "/etc/connpin/connpin.toml"
#: conntrackd's message prefix: "[Wed Dec  2 16:02:20 2026] (pid=10820) "
_STAMP = re.compile(r"^\[[^]]*\] \(pid=\d+\) ")


@dataclass(frozen=True)
class Early:
    """The step the fast path ran: conntrackd's argv (without the binary's path), whether it
    succeeded, and the line `act` reports for it."""

    argv: tuple[str, ...]
    ok: bool
    line: str


#: What `start` did in this process (None: nothing), and the lock fd it holds for `act`.
done: Early | None = None
held: int | None = None


def request(argv: list[str]) -> str | None:
    """The config's path when `argv` is exactly `ha promote`, with at most -c/--config around
    it and --json after it; None for anything else (left to the ordinary path's parser)."""
    config, words = os.environ.get("CONNPIN_CONFIG") or DEFAULT_CONFIG, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            config, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.partition("=")[2]
        elif a == "--json" and words == ["ha", "promote"]:
            pass
        elif a.startswith("-"):
            return None
        else:
            words.append(a)
        i += 1
    return config if words == ["ha", "promote"] and config else None


def lock(timeout: float) -> int:
    """Take the role-change lock of this namespace (waiting at most `timeout` s; 0: not at
    all) and return its fd. Raises TimeoutError when another role change holds it."""
    from connpin.kernel import state

    os.makedirs(state.directory(), mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(state.directory(), "ha.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise TimeoutError(f"another role change held {state.directory()}/ha.lock "
                                   f"for {timeout:g} s") from None
            time.sleep(0.01)


def conntrackd(argv: tuple[str, ...]) -> tuple[bool, str]:
    """Run one conntrackd client command; (ok, the line that reports it)."""
    from connpin.kernel import tools

    text = " ".join(argv)
    started = time.monotonic()
    try:
        ran = tools.run(list(argv))
    except tools.ToolFailure as e:
        return False, f"{text}: failed: {e}"
    ms = f"{(time.monotonic() - started) * 1000:.0f} ms"
    if ran.returncode != 0:
        why = _STAMP.sub("", " ".join((ran.stderr or ran.stdout).split()))[:200] or "no message"
        return False, f"{text}: failed (exit {ran.returncode}, {ms}): {why}"
    return True, f"{text}: ok ({ms})"


def _first_step(path: str) -> tuple[str, ...] | None:
    """The promote plan's first command for the config at `path`, if it is the commit."""
    import tomllib

    from connpin.ha import roles, settings

    with open(path, "rb") as f:
        raw = tomllib.load(f)
    ha = settings.parse(path, raw.get("ha") if isinstance(raw, dict) else None)
    if ha is None:
        return None
    first = roles.plan(ha, "promote").commands[0].argv
    return first if first[-1] == "-c" else None


def start(argv: list[str]) -> Early | None:
    """The fast path: commit the external cache when `argv` is a plain `ha promote` (module
    docstring). Never raises; None when it did nothing."""
    global done, held
    path = request(argv)
    if path is None or os.geteuid() != 0 or done is not None or held is not None:
        return None
    try:
        first = _first_step(path)
        if first is None:
            return None
        fd = lock(0)
    except Exception:  # noqa: BLE001 - anything unusual: the ordinary path says what is wrong
        return None
    held = fd
    ok, line = conntrackd(first)
    done = Early(first, ok, line)
    atexit.register(_leftover)
    return done


def _leftover() -> None:
    """At exit: say the step `start` ran when no role change reported it (the ordinary path
    stopped before, e.g. at a config error), so a commit never goes unsaid."""
    if done is not None:
        print(f"connpin ha promote: {done.line}, before connpin's start-up (the promotion "
              "stopped before it reported its steps)", file=sys.stderr)
