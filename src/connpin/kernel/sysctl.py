"""IPv4 sysctls under /proc/sys/net/ipv4 (of the calling thread's network namespace)."""

from __future__ import annotations

BASE = "/proc/sys/net/ipv4/"


def read(key: str) -> int | None:
    """`key` like "conf/ppp0/rp_filter"; None when it does not exist (interface gone)."""
    try:
        with open(BASE + key) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def write(key: str, value: int) -> None:
    with open(BASE + key, "w") as f:
        f.write(f"{value}\n")
