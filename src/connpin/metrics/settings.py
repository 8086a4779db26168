"""The [metrics] table of the config -> `Metrics` (pure): where `connpin watch` serves its
Prometheus metrics (`listen`), where it writes them for node_exporter (`textfile`), and how often.

The table's presence is what turns on connpin's per-uplink nft counters (render/nft.py): without
[metrics] the ruleset is exactly what it was before metrics existed. An empty `[metrics]` keeps
the counters (for `connpin status` and `top`) without serving anything.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from connpin.fields import ConfigError, _int, _unknown

KEYS = ("listen", "textfile", "interval")
DEFAULT_PORT = 9647


@dataclass(frozen=True)
class Metrics:
    """Where the daemon publishes metrics (None: not there)."""

    listen: tuple[str, int] | None = None  # (address, port) of the HTTP endpoint
    textfile: str | None = None  # node_exporter textfile, rewritten atomically
    interval: int = 15  # seconds between textfile writes (and after a state change)


def _listen(path: str, raw: Any) -> tuple[str, int]:
    fld = "metrics.listen"
    hint = 'an address and port like "127.0.0.1:9647" or "[::1]:9647"'
    if not isinstance(raw, str) or not raw.isascii() or not raw.isprintable():
        raise ConfigError(path, fld, f"{raw!r} is not {hint}")
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(path, fld, f"{raw!r} is not {hint}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(path, fld, f"{raw!r} is not {hint} (a literal address)") from None
    number = int(port)
    if not 1 <= number <= 65535:
        raise ConfigError(path, fld, f"port {number} is out of range 1..65535")
    return str(addr), number


def _textfile(path: str, raw: Any) -> str:
    fld = "metrics.textfile"
    if not isinstance(raw, str) or not raw.isprintable() or not os.path.isabs(raw):
        raise ConfigError(path, fld, f"{raw!r} is not an absolute path")
    if not raw.endswith(".prom"):
        raise ConfigError(path, fld, f"{raw!r}: node_exporter reads only files ending in .prom")
    return raw


def parse(path: str, raw: Any) -> Metrics | None:
    """[metrics] -> Metrics; None when the table is absent. Raises ConfigError."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(path, "metrics", "must be a table ([metrics])")
    _unknown(path, "metrics.", raw, set(KEYS))
    listen = _listen(path, raw["listen"]) if "listen" in raw else None
    textfile = _textfile(path, raw["textfile"]) if "textfile" in raw else None
    interval = _int(path, "metrics.interval", raw.get("interval", Metrics.interval), 1, 3600)
    return Metrics(listen, textfile, interval)
