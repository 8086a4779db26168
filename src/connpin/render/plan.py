"""A reconcile result -> the text (or JSON) that `plan` prints. Pure."""

from __future__ import annotations

from typing import Any

from connpin import steer
from connpin.model import Config
from connpin.render.columns import columns


def _uplinks(result: Any) -> list[dict]:
    return [
        {
            "uplink": s.uplink,
            "interface": s.interface,
            "mark": f"{s.slot.mark:#010x}",
            "table": s.slot.table,
            "up": s.up,
            "state": s.reason,
            "route": str(s.route) if s.route else None,
            "masquerade": s.masquerade,
            "ipv6": {
                "up": s.up6,
                "state": s.reason6,
                "route": str(s.route6) if s.route6 else None,
                "masquerade": s.masquerade6,
                "nptv6": {i: o for i, o in s.nptv6},
            },
        }
        for s in result.desired.uplinks
    ]


def as_dict(config: Config, result: Any, live: bool) -> dict:
    d = result.desired
    out = {
        "config": config.path,
        "mark_mask": f"{config.pinning.mark_mask:#010x}",
        "rule_priorities": [d.rule_range.start, d.rule_range.stop - 1],
        "tables": [d.table_range.start, d.table_range.stop - 1],
        "uplinks": _uplinks(result),
        "nft": d.ruleset if d.backend == "nftables" else None,
        "rules": [str(r) for r in d.rules if r.family == 4],
        "routes": [str(r) for r in d.routes if r.family == 4],
        "rules6": [str(r) for r in d.rules if r.family == 6],
        "routes6": [str(r) for r in d.routes if r.family == 6],
        "sysctls": {k: v for k, v in d.sysctls},
        "patterns": [u.interface for u in config.uplinks if u.is_pattern],
        "on_transitions": steer.describe(config),
    }
    if d.backend != "nftables":
        out["backend"] = d.backend
        out["iptables"] = d.ruleset
    if live:
        out["changes"] = [str(s) for s in result.steps]
    return out


def text(config: Config, result: Any, live: bool) -> str:
    d = result.desired
    lines = [f"# connpin plan for {config.path}"]
    lines.append(f"# owns: marks {config.pinning.mark_mask:#010x}, rule priorities "
                 f"{d.rule_range.start}..{d.rule_range.stop - 1}, tables "
                 f"{d.table_range.start}..{d.table_range.stop - 1}, "
                 + (f"nft table inet {d.nft_table}" if d.backend == "nftables"
                    else "iptables chains CONNPIN-* (mangle, nat)"))
    lines.append("#")
    rows = [("uplink", "interface", "mark", "table", "state", "masquerade", "ipv6")]
    for u in _uplinks(result):
        v6 = u["ipv6"]
        nat6 = "masquerade" if v6["masquerade"] else "nptv6" if v6["nptv6"] else "no nat"
        rows.append((u["uplink"], u["interface"], u["mark"], str(u["table"]), u["state"],
                     "yes" if u["masquerade"] else "no",
                     f"{v6['state']}, {nat6}" if v6["up"] else v6["state"]))
    lines += columns(rows, indent="#   ")
    for u in config.uplinks:
        if u.is_pattern:
            lines.append(f"#   {u.name}: each interface matching {u.interface!r} gets its own "
                         "mark and table when it appears")
    lines.append("#")
    if live:
        lines.append("# changes `connpin apply` would make on this machine now:")
        lines += [f"{s}" for s in result.steps] or ["# none: the kernel matches the plan"]
        lines.append("")
        return "\n".join(lines)
    if d.backend == "iptables":
        lines.append("# 1. iptables: chains CONNPIN-* in mangle (and nat), one jump from each "
                     "built-in chain,")
        lines.append("#    loaded with iptables-restore --noflush / ip6tables-restore --noflush "
                     "(each table one transaction):")
    else:
        lines.append(f"# 1. nftables, loaded as one transaction (`nft -f`), replacing table inet "
                     f"{d.nft_table}:")
    lines.append(d.ruleset.rstrip("\n"))
    lines.append("")
    lines.append("# 2. routing, through netlink (shown as iproute2 commands); an uplink's rule")
    lines.append("#    and route exist only while it is up (IPv6: while main has an IPv6 default")
    lines.append("#    route on it; the same priorities and tables in the IPv6 family):")
    lines += [f"{r.ip} rule add {r}" for r in d.rules]
    lines += [f"{r.ip} route add {r}" for r in d.routes]
    lines.append("")
    if config.pinning.sysctl:
        lines.append("# 3. sysctls, on each uplink while it is up: rp_filter=2 (loose) where the "
                     "effective value is 1 (strict),")
        lines.append("#    and src_valid_mark=1; put back by `connpin remove` "
                     "(pinning.sysctl = false leaves them alone);")
        lines.append("#    IPv6 has no rp_filter: no IPv6 sysctl is changed")
    else:
        lines.append("# 3. sysctls: left alone (pinning.sysctl = false)")
    policies = steer.describe(config)
    if policies:
        lines.append("")
        lines.append("# 4. pinned connections when uplinks change (failback, on_down):")
        lines += [f"#    {p}" for p in policies]
    return "\n".join(lines) + "\n"
