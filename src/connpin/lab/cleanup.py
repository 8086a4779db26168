"""Process-wide cleanup of labs: the registry of this process's live labs, removed at exit and
on SIGTERM/SIGHUP; signals held while a lab is torn down; the state files of running and kept
labs (/run/connpin-lab/PREFIX.json); and `down_all`/`list_labs` for what other (or killed)
processes left behind."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import netns as pnetns

from connpin.kernel import netns

PREFIX = "cpl-"
STATE_DIR = Path("/run/connpin-lab")


class Destroyable(Protocol):
    def destroy(self) -> None: ...


_live: set[Destroyable] = set()
_live_lock = threading.Lock()
_handlers_installed = False
_prev_handlers: dict[int, Any] = {}
_owner_pid = os.getpid()
#: Server processes of labs kept by this process, to reap them when they are stopped here.
_kept_children: dict[int, subprocess.Popen[bytes]] = {}


def register(lab: Destroyable) -> None:
    """Destroy `lab` at exit or on SIGTERM/SIGHUP unless it is unregistered before."""
    with _live_lock:
        _live.add(lab)
    _install_handlers()


def unregister(lab: Destroyable) -> None:
    with _live_lock:
        _live.discard(lab)


def is_registered(lab: Destroyable) -> bool:
    with _live_lock:
        return lab in _live


def keep_child(proc: subprocess.Popen[bytes]) -> None:
    """A kept lab's server process started here: reaped when `down_all` stops it."""
    _kept_children[proc.pid] = proc


def _destroy_live() -> None:
    if os.getpid() != _owner_pid:
        return  # a forked child (pyroute2 forks for IPRoute(netns=...)) owns no lab
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.destroy()


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind like Ctrl-C does, so `with Lab()` blocks clean up.

    A forked child inherits this handler and the parent's whole stack: unwinding there would
    run the parent's `with Lab()` exits and delete the parent's namespaces. pyroute2 forks a
    child for every IPRoute(netns=...) and SIGTERMs it, so the child must just die.
    """
    if os.getpid() != _owner_pid:
        os._exit(128 + signum)
    prev = _prev_handlers.get(signum)
    if callable(prev):
        _destroy_live()
        prev(signum, frame)
        return
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _handlers_installed, _owner_pid
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _owner_pid = os.getpid()
    atexit.register(_destroy_live)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        prev = signal.getsignal(sig)
        if prev is signal.SIG_IGN:
            continue
        _prev_handlers[sig] = prev
        signal.signal(sig, _on_signal)
    _handlers_installed = True


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM while tearing down, so a second signal cannot leave half a lab."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        if saved[s] is not signal.SIG_IGN:
            signal.signal(s, lambda n, f: pending.append(n))
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if pending:
            signal.raise_signal(pending[0])


# -- processes and namespaces ---------------------------------------------------------------------

def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(netns.path(name)).st_ino
    except OSError:
        return None


def kill_inside(names: Iterable[str], grace: float = 1.0) -> None:
    """Terminate processes living in these namespaces (a daemon a hook started, a kept server)."""
    inodes = {i for i in map(_ns_inode, names) if i is not None}
    if not inodes:
        return
    me = os.getpid()

    def pids() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    found.append(int(entry))
            except OSError:
                pass
        return found

    victims = pids()
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        time.sleep(0.02)
        victims = [p for p in victims if os.path.exists(f"/proc/{p}")
                   and _state_of(p) not in ("Z", "X")]
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def remove_namespaces(prefix: str, known: Iterable[str] = ()) -> list[str]:
    """Stop the processes inside, then remove `known` and every namespace named `prefix-*`."""
    mine = set(known)
    with contextlib.suppress(OSError):
        mine |= {n for n in pnetns.listnetns() if n.startswith(prefix + "-")}
    kill_inside(mine)
    removed = []
    for name in sorted(mine):
        with contextlib.suppress(OSError):
            pnetns.remove(name)
            removed.append(name)
    return removed


def _state_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _kill_server_process(state: Mapping[str, Any]) -> None:
    """Stop the background echo server of a kept lab, if it is still ours."""
    pid = state.get("server_pid")
    if not isinstance(pid, int):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return
    if b"connpin.lab.serve" not in cmdline or state.get("prefix", "").encode() not in cmdline:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    child = _kept_children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=2)
        return
    deadline = time.monotonic() + 2
    while _state_of(pid) not in ("Z", "X") and time.monotonic() < deadline:
        time.sleep(0.02)


# -- state files ----------------------------------------------------------------------------------

def state_file(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def read_state(prefix: str) -> dict[str, Any] | None:
    """The state file of a lab (kept or running), or None."""
    try:
        return json.loads(state_file(prefix).read_text())
    except (OSError, ValueError):
        return None


def write_state(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """Replace a lab's state file atomically (keeping the server_pid a kept lab recorded)."""
    old = read_state(prefix) or {}
    if "server_pid" in old and "server_pid" not in state:
        state = {**state, "server_pid": old["server_pid"]}
    STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = state_file(prefix)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)
    return state


def list_labs(prefix: str = PREFIX) -> list[str]:
    """Prefixes of the labs present: from state files and from namespace names."""
    found = set()
    with contextlib.suppress(OSError):
        for f in STATE_DIR.glob(f"{prefix}*.json"):
            found.add(f.stem)
    for name in pnetns.listnetns():
        if name.startswith(prefix) and "-" in name[len(PREFIX):]:
            found.add(name.rsplit("-", 1)[0])
    return sorted(found)


def down_all(prefix: str = PREFIX) -> list[str]:
    """Remove leftover lab namespaces whose name starts with `prefix`; returns their names.

    Also stops a kept lab's background servers and removes its work directory (config, hook
    scripts, logs: kept until now) and state file.
    """
    states = []
    with contextlib.suppress(OSError):
        for f in STATE_DIR.glob("*.json"):
            if f.stem.startswith(prefix):
                st = read_state(f.stem)
                if st is not None:
                    states.append((f, st))
    for _, st in states:
        _kill_server_process(st)
    names = sorted(n for n in pnetns.listnetns() if n.startswith(prefix))
    kill_inside(names)
    removed = []
    for name in names:
        try:
            pnetns.remove(name)
            removed.append(name)
        except OSError:
            pass
    for f, st in states:
        remove_workdir(st.get("workdir"), st.get("prefix", ""))
        with contextlib.suppress(OSError):
            f.unlink()
    # work directories whose state file is gone (a lab killed while writing it)
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}*-work"):
        remove_workdir(d, d.name[: -len("-work")])
    return removed


def remove_workdir(path: str | Path | None, prefix: str) -> None:
    """Remove a lab's work directory, but only one that is clearly a lab's."""
    if not path or not prefix:
        return
    p = Path(path)
    if p.name.startswith(prefix) and p.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(p, ignore_errors=True)
