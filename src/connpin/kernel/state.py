"""What connpin remembers between runs, per network namespace, in its directory
`$CONNPIN_RUN_DIR/net-<namespace cookie>` (default /run/connpin): the lock that serializes
concurrent runs (hooks, apply, the daemon), with a timeout that names the holder's pid, and
`state.json`, read and written whole and atomically (temp file, fsync, rename; the kernel adapter
decides its content): the sysctl values connpin changed (journaled to disk before the change, so
`remove` can put them back even after a crash), the slice it last applied (rule and table ranges,
nft table, backend: so a changed slice is removed under the old values), the uplink interfaces
that were up (so failback and on_down see transitions) and since when each was up or down
(`since`, for `connpin status`) and the ruleset it last verified (hashes,
and the nft generation and listing that spare an `nft list`). A state file that is not valid JSON
or not of the expected shape is kept aside as state.json.corrupt-TIMESTAMP; what could be read is
kept and what was lost is said on stderr. Other files in that directory belong to their users
(pins: `failback.json`; `connpin sweep`: `sweep.lock`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connpin.kernel import faults, netns, tools

RUN_DIR = os.environ.get("CONNPIN_RUN_DIR", "/run/connpin")
#: Seconds to wait for another connpin in this namespace (a converge takes well under one).
LOCK_TIMEOUT = 30.0
#: Keys of sysctls connpin may have changed: they name files under /proc/sys/net/ipv4.
SYSCTL_KEY = re.compile(r"^conf/[A-Za-z0-9_.+-]{1,15}/(rp_filter|src_valid_mark)$")
_NFT_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,31}$")


class LockTimeout(Exception):
    """Another process held the namespace's lock for longer than the timeout."""


def directory() -> str:
    return os.path.join(RUN_DIR, f"net-{netns.cookie()}")


def _lock_timeout() -> float:
    return tools.seconds("CONNPIN_LOCK_TIMEOUT", LOCK_TIMEOUT)


@contextmanager
def locked(timeout: float | None = None) -> Iterator[None]:
    """One connpin at a time per namespace: two hooks firing together queue up here. Waits at
    most `timeout` seconds ($CONNPIN_LOCK_TIMEOUT, default 30), then raises LockTimeout naming
    the pid that holds it (each holder writes its pid into the lock file)."""
    d = directory()
    os.makedirs(d, mode=0o755, exist_ok=True)
    path = os.path.join(d, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        limit = _lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(_holder_message(fd, path, limit)) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.025)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder_message(fd: int, path: str, limit: float) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    who = f"process {pid}" if pid.isdigit() else "another process"
    alive = pid.isdigit() and os.path.exists(f"/proc/{pid}")
    hint = f" (stuck? see /proc/{pid}/cmdline)" if alive else ""
    return (f"{who} has held connpin's lock {path} for more than {limit:g} s{hint}; "
            "CONNPIN_LOCK_TIMEOUT sets the limit")


def _path() -> str:
    return os.path.join(directory(), "state.json")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_int(x) and x >= 0 for x in v)


def _since_entry(v: Any) -> bool:
    """{"4": [up, epoch], "6": [up, epoch]} (either family may be missing)."""
    return isinstance(v, dict) and set(v) <= {"4", "6"} and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], bool)
        and isinstance(e[1], int | float) and not isinstance(e[1], bool) for e in v.values())


def note_since(saved: dict, uplinks: Any, now: float | None = None) -> None:
    """Record in `saved["since"]` when each uplink interface entered its current state, per
    family (`connpin status` shows it): an entry changes only when the state does, so the time
    is that of the first converge that saw the change (hooks or the daemon make that the
    moment it happened). Interfaces no longer known are forgotten."""
    now = time.time() if now is None else now
    old = saved.get("since") if isinstance(saved.get("since"), dict) else {}
    out = {}
    for st in uplinks:
        prev = old.get(st.interface) or {}
        out[st.interface] = {fam: prev[fam] if prev.get(fam, [None])[0] is up else
                             [up, round(now, 3)] for fam, up in (("4", st.up), ("6", st.up6))}
    saved["since"] = out


def _check(data: Any) -> tuple[dict, list[str]]:
    """The parts of `data` that have the expected shape, and what had to be dropped."""
    if not isinstance(data, dict):
        return {}, ["everything (not a JSON object)"]
    out: dict = {}
    lost: list[str] = []
    for key, value in data.items():
        if key == "sysctls":
            good = {k: v for k, v in value.items() if isinstance(k, str) and SYSCTL_KEY.match(k)
                    and _int(v) and 0 <= v < 2**31} if isinstance(value, dict) else {}
            bad = (len(value) - len(good)) if isinstance(value, dict) else 1
            if bad:
                lost.append(f"{bad} sysctl original(s) (`remove` leaves those sysctls as they are)")
            if good:
                out[key] = good
        elif key == "nft":
            fields = {"ruleset": str, "listing": str, "text": str, "table": str, "gen": int,
                      "rendered": str}
            if isinstance(value, dict) and all(k in fields and isinstance(v, fields[k])
                                               for k, v in value.items()):
                out[key] = value
            else:
                lost.append("the ruleset cache (the next apply re-reads the ruleset)")
        elif key == "slice":
            ok = isinstance(value, dict) and set(value) <= {"rules", "tables", "nft_table",
                                                            "backend"} and all(
                _pair(value.get(k, [0, 0])) for k in ("rules", "tables")) and (
                isinstance(value.get("nft_table", "x"), str)
                and _NFT_NAME.match(value.get("nft_table", "x"))) and value.get(
                "backend", "nftables") in ("nftables", "iptables")
            if ok:
                out[key] = value
            else:
                lost.append("the slice last committed (what was installed under other "
                            "pinning.* ranges or table name is no longer removed)")
        elif key == "since":
            if isinstance(value, dict) and all(isinstance(k, str) and _since_entry(v)
                                               for k, v in value.items()):
                out[key] = value
            else:
                lost.append("when uplinks last changed state (status shows \"-\" until the next)")
        elif key == "up":
            if isinstance(value, list) and all(isinstance(x, str) for x in value):
                out[key] = value
            else:
                lost.append("which uplinks were up (no failback this time)")
        else:
            out[key] = value  # another part's entry: that part checks what it reads
    return out, lost


def load() -> dict:
    """The state of this namespace ({} when none). A corrupt file is kept aside, what could be
    read is written back, and one warning line on stderr says what was lost."""
    path = _path()
    try:
        with open(path, "rb") as f:
            raw = f.read(16 << 20)
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        data, lost = {}, [f"everything (invalid JSON: {str(e)[:80]})"]
    else:
        data, lost = _check(data)
    if not lost:
        return data
    copy = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    with contextlib.suppress(OSError):
        os.replace(path, copy)
    with contextlib.suppress(OSError):
        save(data)
    print(f"connpin: warning: {path} was damaged, kept as {copy}; lost: {'; '.join(lost)}; "
          "the rest is rebuilt from the kernel and the config", file=sys.stderr)
    return data


def save(state: dict) -> None:
    """Write the state atomically and durably (temp file, fsync, rename, fsync of the
    directory: on tmpfs, where /run usually is, the fsyncs cost nothing); an empty state leaves
    no file behind."""
    d = directory()
    if not state:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, "state.json"))
        return
    os.makedirs(d, mode=0o755, exist_ok=True)
    tmp = os.path.join(d, f"state.json.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        faults.point()
        os.replace(tmp, os.path.join(d, "state.json"))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    for name in os.listdir(d):  # left by a writer killed before its rename
        if name.startswith("state.json.tmp-"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, name))


def remember_sysctl(state: dict, key: str, original: int) -> None:
    """Journal `original` as the value to restore `key` to, on disk, BEFORE connpin changes it:
    a crash between the change and the end of the apply then cannot make connpin's own value
    look original. The first original recorded wins."""
    saved = state.setdefault("sysctls", {})
    if key in saved:
        return
    saved[key] = original
    save(state)
    faults.point()
