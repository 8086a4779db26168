"""Do two routers' configs give the same pins? (pure): the slot allocation both compute — the
mark bits, table ids, rule priorities and nft table connpin owns, and each uplink's mark, table
and priority — compared one difference per line, and a short fingerprint of it to compare by eye
(`connpin check` prints it; `connpin check --peer OTHER.toml` compares).

An exact uplink's mark and table derive from its name, so the interface names may differ between
the routers (eth1 here, enp3s0 there). A pattern uplink's interfaces get marks derived from
"uplink/interface": its pattern must match, and so must the interface names that come up.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from connpin import model


def slots(config: model.Config) -> dict[str, Any]:
    """The allocation a pinned connection depends on, as plain values."""
    pin = config.pinning
    exact = model.exact_marks(config)
    uplinks = {}
    for u in config.uplinks:
        s = exact.get(u.name)
        uplinks[u.name] = {"mark": s.mark if s else None, "table": s.table if s else None,
                           "priority": u.priority,
                           "pattern": u.interface if u.is_pattern else None}
    return {"mark_mask": pin.mark_mask, "table_base": pin.table_base,
            "rule_priority": pin.rule_priority, "nft_table": pin.nft_table,
            "uplinks": dict(sorted(uplinks.items()))}


def fingerprint(config: model.Config) -> str:
    """12 hex digits of a hash of `slots`: equal on both routers when their pins agree."""
    text = json.dumps(slots(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _show(key: str, value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:#010x}" if key in ("mark_mask", "mark") else str(value)


def differences(here: model.Config, there: model.Config) -> list[str]:
    """One line per difference that would move or break a pin when the peer takes over."""
    a, b = slots(here), slots(there)
    out = []
    for key in ("mark_mask", "table_base", "rule_priority", "nft_table"):
        if a[key] != b[key]:
            out.append(f"pinning.{key}: {_show(key, a[key])} here, {_show(key, b[key])} "
                       f"on the peer")
    for name in sorted(set(a["uplinks"]) | set(b["uplinks"])):
        x, y = a["uplinks"].get(name), b["uplinks"].get(name)
        if x is None or y is None:
            out.append(f"uplink {name}: configured {'here' if y is None else 'on the peer'} "
                       "only")
            continue
        for key in ("mark", "table", "priority", "pattern"):
            if x[key] != y[key]:
                out.append(f"uplink {name}: {key} {_show(key, x[key])} here, "
                           f"{_show(key, y[key])} on the peer")
    return out
