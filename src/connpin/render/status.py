"""A reconcile result (effects off, real machine) -> the status report. Pure."""

from __future__ import annotations

from typing import Any

from connpin.model import Config
from connpin.reconcile import Ruleset
from connpin.render.columns import columns


def build(config: Config, result: Any,
          pinned: dict[str, tuple[int, int | None]] | None = None) -> dict:
    """`pinned`: interface -> (connections, bytes or None) counted in conntrack."""
    have_rules = set(result.installed.rules)
    have_routes = set(result.installed.routes)
    want_rules = {(r.family, r.fwmark, r.table): r for r in result.desired.rules
                  if r.action == "lookup" and r.fwmark is not None}

    def in_place(s: Any, family: int, up: bool, route: Any) -> tuple[bool, bool]:
        rule = want_rules.get((family, s.slot.mark, s.slot.table))
        rule_ok = (rule in have_rules) if up else not any(
            r.table == s.slot.table and r.family == family for r in have_rules)
        route_ok = (route in have_routes) if up else not any(
            r.table == s.slot.table and r.family == family for r in have_routes)
        return rule_ok, route_ok

    uplinks = []
    for s in result.desired.uplinks:
        rule_ok, route_ok = in_place(s, 4, s.up, s.route)
        rule6_ok, route6_ok = in_place(s, 6, s.up6, s.route6)
        uplinks.append({
            "uplink": s.uplink, "interface": s.interface, "up": s.up, "state": s.reason,
            "mark": f"{s.slot.mark:#010x}", "table": s.slot.table,
            "route": str(s.route) if s.route else None,
            "rule_in_place": rule_ok, "route_in_place": route_ok,
            "ipv6": {"up": s.up6, "state": s.reason6,
                     "route": str(s.route6) if s.route6 else None,
                     "rule_in_place": rule6_ok, "route_in_place": route6_ok},
        })
        if pinned is not None:
            conns, nbytes = pinned.get(s.interface, (0, None))
            uplinks[-1].update(connections=conns, bytes=nbytes)
    present = {u["uplink"] for u in uplinks}
    waiting = [{"uplink": u.name, "pattern": u.interface} for u in config.uplinks
               if u.is_pattern and u.name not in present]
    drift = [str(s) for s in result.steps]
    return {
        "patterns_without_interfaces": waiting,
        "config": config.path,
        "nft_table": f"inet {result.desired.nft_table}" if result.desired.backend == "nftables"
        else "iptables chains CONNPIN-*",
        "nft_in_place": not any(isinstance(s, Ruleset) for s in result.steps),
        "uplinks": uplinks,
        "drift": drift,
        "in_place": not drift,
    }


def add_health(report: dict, watch: dict | None) -> None:
    """Each uplink's health from the daemon's record (`connpin watch` with `check`)."""
    figures = (watch or {}).get("health") or {}
    for u in report["uplinks"]:
        if u["uplink"] in figures:
            u["health"] = figures[u["uplink"]]


def _health(name: str, h: dict) -> str:
    parts = [f"{t['target']} " + ("-" if t["rtt_ms"] is None else f"{t['rtt_ms']:g} ms")
             + ("" if t["loss"] is None else f" {t['loss']:.0%} loss") for t in h["targets"]]
    return (f"health {name}: {h['state']} since {h['since']} ({h['reason']})"
            + ("; " + ", ".join(parts) if parts else ""))


def _pinned(u: dict) -> str:
    n = u.get("connections", 0)
    if u.get("bytes") is None:
        return str(n)
    b, unit = float(u["bytes"]), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            break
        b /= 1024
    return f"{n} ({b:.0f} {unit})" if unit == "B" else f"{n} ({b:.1f} {unit})"


def _ipv6(v6: dict | None) -> str:
    if v6 is None:
        return "-"
    ok6 = v6["rule_in_place"] and v6["route_in_place"]
    if v6["up"]:
        return "up" if ok6 else "up, rule/route MISSING"
    return f"off ({v6['state']})" if ok6 else f"off ({v6['state']}), STALE rule/route"


def text(report: dict) -> str:
    counted = any("connections" in u for u in report["uplinks"])
    rows = [("uplink", "interface", "state", "mark", "table", "rule", "route", "ipv6")
            + (("pinned",) if counted else ())]
    for u in report["uplinks"]:
        ipv6 = _ipv6(u.get("ipv6"))
        row = (u["uplink"], u["interface"], "up" if u["up"] else f"down ({u['state']})",
               u["mark"], str(u["table"]), "ok" if u["rule_in_place"] else "MISSING",
               "ok" if u["route_in_place"] else "MISSING", ipv6)
        rows.append(row + ((_pinned(u),) if counted else ()))
    lines = columns(rows)
    shown = set()
    for u in report["uplinks"]:
        if "health" in u and u["uplink"] not in shown:
            shown.add(u["uplink"])
            lines.append(_health(u["uplink"], u["health"]))
    for w in report["patterns_without_interfaces"]:
        lines.append(f"{w['uplink']}: no interface matches {w['pattern']!r} yet")
    what = report["nft_table"]
    lines.append(f"{what if what.startswith('iptables') else 'nft table ' + what}: "
                 f"{'in place' if report['nft_in_place'] else 'NOT as planned'}")
    if report["drift"]:
        lines.append(f"kernel differs from the plan ({len(report['drift'])}); "
                     "`connpin apply` would:")
        lines += [f"  {d}" for d in report["drift"]]
    else:
        lines.append("kernel matches the plan")
    return "\n".join(lines) + "\n"
