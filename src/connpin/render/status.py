"""The status report: what connpin sees on this machine, as one plain value (the `status --json`
document, schema 1; docs/json.md#status). Pure: `build` takes the observed facts (a reconcile
result with effects off, pinned counts, the daemon's record, when uplinks last changed state,
nft counters, main's default routes, the time) and returns the report; render/status_text.py
turns it into text and the monitoring-plugin line. `connpin top` may build its rows with `build`.

Uplinks are in config order (a pattern uplink: one row per matching interface, by name; none
while no interface matches). Each row has a short `state` (up, down; `dead` when its link is
up but its health check says dead) with the long `reason`, `since` (ISO 8601, UTC) when known,
its health, tier and weight when connpin chooses, and its share of new connections when
counters are given. `new_connections` says where new connections go now: per class the tier
and the live uplinks with their shares, or main's default route when connpin does not choose.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from connpin import choice
from connpin.model import Config
from connpin.reconcile import Ruleset
from connpin.values import Counters

SCHEMA = 1
UP, DOWN, DEAD = "up", "down", "dead"


def iso(epoch: float | None) -> str | None:
    """An epoch as ISO 8601 in UTC, to the second ("2026-12-02T16:03:05Z"); None stays None."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def epoch(text: str | None) -> float | None:
    """The inverse of `iso` (None for anything else)."""
    if not text:
        return None
    try:
        import calendar

        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, TypeError):
        return None


def _health_since(h: Mapping[str, Any]) -> str | None:
    """The daemon records a health state's start as an epoch (`at`) and as local wall text."""
    at = h.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return iso(at)
    try:
        return iso(time.mktime(time.strptime(str(h.get("since")), "%Y-%m-%d %H:%M:%S")))
    except (ValueError, OverflowError):
        return None


def health(h: Mapping[str, Any] | None) -> dict | None:
    """One uplink's health from the daemon's record, as the report carries it."""
    if not isinstance(h, Mapping) or "state" not in h:
        return None
    return {
        "state": h["state"], "since": _health_since(h), "reason": h.get("reason", ""),
        "targets": [{k: t.get(k) for k in ("target", "rtt_ms", "srtt_ms", "loss", "probes",
                                           "lost")} for t in h.get("targets") or ()],
        **_families(h),
        "passive": _passive(h.get("passive")),
    }


def _families(h: Mapping[str, Any]) -> dict:
    """Per-family health (`check` with IPv4 and IPv6 targets): {"families": {"ipv4": {state,
    since, reason}, "ipv6": ...}}; nothing for an uplink checked in one family."""
    fams = h.get("families")
    if not isinstance(fams, Mapping):
        return {}
    return {"families": {f: {"state": s.get("state"), "since": _health_since(s),
                             "reason": s.get("reason", "")}
                         for f, s in sorted(fams.items()) if isinstance(s, Mapping)}}


def _passive(p: Any) -> dict | None:
    """The passive signal's figures (sent, answered, unanswered, hurries) or None."""
    keys = ("sent", "answered", "unanswered", "hurries")
    return {k: p.get(k) for k in keys} if isinstance(p, Mapping) else None


def _since(since: Mapping[str, Any], iface: str, family: str, up: bool) -> str | None:
    """When this interface entered its current state in `family`, as recorded at the converge
    that saw the change; None when not recorded or the record says otherwise (a change no
    converge has seen yet: no hook, no daemon)."""
    entry = (since.get(iface) or {}).get(family) if isinstance(since, Mapping) else None
    if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[0] is not up:
        return None
    return iso(entry[1]) if isinstance(entry[1], int | float) else None


def _in_place(result: Any) -> Any:
    have_rules = set(result.installed.rules)
    have_routes = set(result.installed.routes)
    want_rules = {(r.family, r.fwmark, r.table): r for r in result.desired.rules
                  if r.action == "lookup" and r.fwmark is not None}

    def check(s: Any, family: int, up: bool, route: Any) -> tuple[bool, bool]:
        rule = want_rules.get((family, s.slot.mark, s.slot.table))
        rule_ok = (rule in have_rules) if up else not any(
            r.table == s.slot.table and r.family == family for r in have_rules)
        route_ok = (route in have_routes) if up else not any(
            r.table == s.slot.table and r.family == family for r in have_routes)
        return rule_ok, route_ok

    return check


def _shares(counters: Mapping[str, Counters] | None, names: Sequence[str]
            ) -> dict[str, tuple[int | None, float | None]]:
    if counters is None:
        return {n: (None, None) for n in names}
    total = sum(c.new for c in counters.values())
    return {n: ((c := counters.get(n, Counters())).new, c.new / total if total else None)
            for n in names}


def _choices(config: Config, states: Sequence[Any], dead: frozenset[str],
             families: Sequence[int]) -> list[dict]:
    prio = {u.name: u.priority for u in config.uplinks}
    weight = {u.name: u.weight or 1 for u in config.uplinks}
    order = {u.name: i for i, u in enumerate(config.uplinks)}
    out = []
    for family in families:
        for c in choice.choices(config, states, family, dead):
            shares = c.shares()
            slices = [{"uplink": s.uplink, "interface": s.interface, "weight": weight[s.uplink],
                       "share": round(shares[s.interface], 4)}
                      for s in sorted(c.slices, key=lambda s: (order[s.uplink], s.interface))]
            out.append({"class": c.name, "family": family, "sticky": c.sticky,
                        "tier": prio[c.slices[0].uplink] if c.slices else None,
                        "uplinks": slices})
    return out


def _main_routes(config: Config, main: Mapping[int, Sequence[Mapping[str, Any]]] | None,
                 families: Sequence[int]) -> list[dict]:
    """Main's best default routes (lowest metric) per family, each named by its uplink."""
    out = []
    for family in families:
        routes = list((main or {}).get(family) or ())
        best = min((r.get("metric", 0) for r in routes), default=None)
        for r in routes:
            if r.get("metric", 0) != best:
                continue
            u = config.match(r["interface"]) if r.get("interface") else None
            out.append({"family": family, "interface": r.get("interface"),
                        "gateway": r.get("gateway"), "metric": best,
                        "weight": r.get("weight"), "uplink": u.name if u else None})
        if best is None:
            out.append({"family": family, "interface": None, "gateway": None, "metric": None,
                        "weight": None, "uplink": None})
    return out


def build(config: Config, result: Any,
          pinned: Mapping[str, tuple[int, int | None]] | None = None, *,
          watch: Mapping[str, Any] | None = None,
          since: Mapping[str, Any] | None = None,
          counters: Mapping[str, Counters] | None = None,
          main: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
          now: float | None = None) -> dict:
    """The status report (schema 1). `pinned`: interface -> (connections, bytes or None)
    counted in conntrack; `watch`: the daemon's record (health per uplink, dead uplinks);
    `since`: the state file's record of when each interface last changed state; `counters`:
    nft counters by uplink name (None: not read, the shares are unknown); `main`: family ->
    main's default routes ({"interface", "gateway", "metric", "weight"}); `now`: epoch."""
    now = time.time() if now is None else now
    check = _in_place(result)
    figures = (watch or {}).get("health") or {}
    dead = choice.dead_of(figures)
    by_name: dict[str, list[Any]] = {}
    for s in result.desired.uplinks:
        by_name.setdefault(s.uplink, []).append(s)
    shares = _shares(counters, [u.name for u in config.uplinks])
    selecting = config.selecting
    uplinks = []
    for u in config.uplinks:
        for s in sorted(by_name.get(u.name, ()), key=lambda st: st.interface):
            rule_ok, route_ok = check(s, 4, s.up, s.route)
            rule6_ok, route6_ok = check(s, 6, s.up6, s.route6)
            h = health(figures.get(u.name)) if u.check else None
            state = (DEAD if h and h["state"] == DEAD else UP) if s.up else DOWN
            new, share = shares[u.name]
            row = {
                "uplink": s.uplink, "interface": s.interface, "state": state,
                "reason": s.reason, "up": s.up,
                "since": _since(since or {}, s.interface, "4", s.up),
                "checked": bool(u.check), "health": h, "tier": u.priority,
                "weight": (u.weight or 1) if selecting else None,
                "new_connections": new, "share": None if share is None else round(share, 4),
                "mark": f"{s.slot.mark:#010x}", "table": s.slot.table,
                "route": str(s.route) if s.route else None,
                "rule_in_place": rule_ok, "route_in_place": route_ok,
                "ipv6": {"up": s.up6, "state": UP if s.up6 else "off", "reason": s.reason6,
                         "since": _since(since or {}, s.interface, "6", s.up6),
                         "route": str(s.route6) if s.route6 else None,
                         "rule_in_place": rule6_ok, "route_in_place": route6_ok},
            }
            if pinned is not None:
                row["connections"], row["bytes"] = pinned.get(s.interface, (0, None))
            uplinks.append(row)
    present = {u["uplink"] for u in uplinks}
    waiting = [{"uplink": u.name, "pattern": u.interface} for u in config.uplinks
               if u.is_pattern and u.name not in present]
    v6 = result.observed.ipv6 or result.observed.imagined
    families = (4, 6) if v6 and any(s.up6 for s in result.desired.uplinks) else (4,)
    picks = _choices(config, result.desired.uplinks, dead, families) if selecting else []
    # where connpin chooses but no uplink is live for a class, the routing table decides
    routes = _main_routes(config, main, families) if main is not None else None
    drift = [str(s) for s in result.steps]
    return {
        "schema": SCHEMA,
        "at": iso(now),
        "config": config.path,
        "backend": result.desired.backend,
        "nft_table": f"inet {result.desired.nft_table}" if result.desired.backend == "nftables"
        else "iptables chains CONNPIN-*",
        "installed": result.installed.ruleset is not None,
        "nft_in_place": not any(isinstance(s, Ruleset) for s in result.steps),
        "uplinks": uplinks,
        "patterns_without_interfaces": waiting,
        "new_connections": {"chosen_by": "connpin" if selecting else "routing table",
                            "classes": picks, "main": routes},
        "counters": counters is not None,
        "watch": dict(watch) if watch else None,
        "drift": drift,
        "in_place": not drift,
    }


def live(report: Mapping[str, Any]) -> list[str]:
    """The uplinks new connections can use now: up, and not dead by their health check."""
    return [u["uplink"] for u in report["uplinks"] if u["state"] == UP]
