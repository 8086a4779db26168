"""Network namespaces: enter one for the whole process, or create a socket inside one.

setns(2) changes the calling thread only; a socket stays in the namespace it was created in,
so a thread can briefly enter a namespace, make a socket and come back.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
SO_NETNS_COOKIE = 71

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


class NetnsError(Exception):
    pass


def path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


def enter(name: str) -> None:
    """Move the calling thread (the whole CLI process, when called first) into `name`."""
    try:
        fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"no network namespace {name!r} (see `ip netns list`)") from None
    except PermissionError:
        raise NetnsError(f"cannot open network namespace {name!r}: need root") from None
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run a block with the calling thread in namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def socket_in(name: str | None, family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in namespace `name`, whatever thread uses it later."""
    with _lock, inside(name):
        return socket.socket(family, kind)


def cookie() -> str:
    """A per-boot unique id of the current network namespace (never reused, unlike inodes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
            return f"{int.from_bytes(raw, 'little'):016x}"
        except OSError:
            return f"ino{os.stat('/proc/thread-self/ns/net').st_ino}"
