"""The status report (render/status.py) as text a person reads, and as the one line of the
monitoring-plugin convention (`status --nagios`). Pure.

Text: one row per uplink in config order with short states and how long they have held, rows
no wider than WIDTH; the long reason on an indented line under an uplink that is not fine (all
of them with `verbose`, which also adds a block per uplink: marks, tables, rules, routes, IPv6,
health per target, pinned bytes); then where new connections go now, and whether the kernel
matches the plan.

Monitoring (nagios): OK (0) when every uplink is up and alive and the kernel matches the plan;
WARNING (1) when some uplink is down or dead but new connections still have a live uplink, or
the kernel differs from the plan, or a conflict or a failing daemon shows, or uplinks have
`check` but no daemon runs; CRITICAL (2) when no
uplink is live or connpin's ruleset is not installed; UNKNOWN (3) is the caller's, for a config
error or a status that could not be read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connpin.render.columns import columns, wrap
from connpin.render.status import DEAD, UP, epoch, live

WIDTH = 100
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def ago(since: str | None, now: str | None) -> str:
    """How long since `since` (both ISO 8601 from the report), in at most 6 characters:
    45s, 12m05s, 3h12m, 4d03h, 812d; "-" when unknown."""
    a, b = epoch(since), epoch(now)
    if a is None or b is None:
        return "-"
    s = max(0, int(b - a))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s < 100 * 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"{s // 86400}d"


def _size(n: float) -> str:
    b, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            break
        b /= 1024
    return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0%}" if x in (0, 1) or x >= 0.1 else f"{x:.1%}"


def _rtt(h: Mapping[str, Any] | None) -> str:
    """The best smoothed RTT over the uplink's targets."""
    rtts = [t.get("srtt_ms") or t.get("rtt_ms") for t in (h or {}).get("targets") or ()]
    rtts = [r for r in rtts if r is not None]
    if not rtts:
        return "-"
    r = min(rtts)
    return f"{r:.0f}ms" if r >= 10 else f"{r:.1f}ms"


def _loss(h: Mapping[str, Any] | None) -> str:
    """The mean loss over the uplink's targets."""
    losses = [t["loss"] for t in (h or {}).get("targets") or () if t.get("loss") is not None]
    return _pct(sum(losses) / len(losses)) if losses else "-"


def _sides(h: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Per-family health sides (only for a `check` with both families)."""
    fams = h.get("families")
    return sorted(fams.items()) if isinstance(fams, Mapping) else []


def _word(h: Mapping[str, Any]) -> str:
    """The health column: the state, and a family side that differs from it ("alive/dead6")."""
    odd = [f"{s.get('state')}{f[-1]}" for f, s in _sides(h) if s.get("state") != h["state"]]
    return "/".join([h["state"], *odd])


def _problems(u: Mapping[str, Any]) -> list[str]:
    """What is not fine with one uplink, as short phrases (empty: up, alive, in place; an
    IPv4-only uplink is fine: why its IPv6 is off is in -v)."""
    out = []
    if u["state"] != UP:
        out.append(f"{u['state']}: {u['reason']}" if u["state"] != DEAD else
                   f"dead: {(u['health'] or {}).get('reason', '')}")
    elif u.get("health") and u["health"]["state"] != "alive":
        out.append(f"health {u['health']['state']}: {u['health']['reason']}")
    elif u.get("health"):  # alive, but maybe not in both families (per-family health)
        out += [f"{f} dead: {s.get('reason', '')}" for f, s in _sides(u["health"])
                if s.get("state") == DEAD]
    missing = [what for what, ok in (("rule", u["rule_in_place"]),
                                     ("route", u["route_in_place"])) if not ok]
    if missing:
        out.append(f"{' and '.join(missing)} {'MISSING' if u['up'] else 'STALE'}")
    six = u.get("ipv6") or {}
    if six and not (six["rule_in_place"] and six["route_in_place"]):
        out.append(f"IPv6 rule/route {'MISSING' if six['up'] else 'STALE'}")
    return out


def _table(report: Mapping[str, Any], v6: bool) -> list[str]:
    """The uplinks' table; pinned bytes only where they fit in WIDTH (always with -v)."""
    lines = _rows(report, v6, True)
    return lines if max(map(len, lines)) <= WIDTH else _rows(report, v6, False)


def _rows(report: Mapping[str, Any], v6: bool, nbytes: bool) -> list[str]:
    ups = report["uplinks"]
    checked = any(u.get("checked") or u.get("health") for u in ups)
    choosing = report["new_connections"]["chosen_by"] == "connpin"
    shared = choosing or report.get("counters")
    counted = any("connections" in u for u in ups)
    head = ["uplink", "interface", "state", "since"]
    head += ["health", "since", "rtt", "loss"] if checked else []
    head += ["tier", "weight"] if choosing else []
    head += ["share"] if shared else []
    head += ["ipv6"] if v6 else []
    head += ["pinned"] if counted else []
    rows = [head]
    now = report.get("at")
    for u in ups:
        h = u.get("health")
        row = [u["uplink"], u["interface"], u["state"], ago(u["since"], now)]
        if checked:  # (a dead uplink's RTT is history: "-")
            row += [_word(h), ago(h["since"], now), "-" if h["state"] == DEAD else _rtt(h),
                    _loss(h)] if h else ["-"] * 4
        if choosing:
            row += [str(u["tier"]), str(u["weight"])]
        if shared:
            row.append(_pct(u.get("share")))
        if v6:
            row.append("up" if u["ipv6"]["up"] else "off")
        if counted:
            row.append(str(u.get("connections", 0)) + (
                f" ({_size(u['bytes'])})" if nbytes and u.get("bytes") is not None else ""))
        rows.append(row)
    return columns(rows, width=WIDTH)


def _detail(u: Mapping[str, Any], now: str | None) -> list[str]:
    """-v: everything about one uplink, lines of at most WIDTH."""
    def since(s: str | None) -> str:
        return f"since {s} ({ago(s, now)} ago)" if s else "since: not recorded"

    def why(reason: str) -> str:
        return "" if reason == "up" else f": {reason}"

    out = [f"{u['uplink']} ({u['interface']}): {u['state']}, {since(u['since'])}"
           f"{why(u['reason'])}",
           f"  mark {u['mark']}, table {u['table']}, rule "
           f"{'ok' if u['rule_in_place'] else 'MISSING'}, route "
           f"{'ok' if u['route_in_place'] else 'MISSING'}"]
    if u["route"]:
        out.append(f"  route: {u['route']}")
    v6 = u["ipv6"]
    out.append(f"  ipv6: {'up' if v6['up'] else 'off'}, {since(v6.get('since'))}"
               f"{why(v6['reason'])}" + ("" if v6["rule_in_place"] and v6["route_in_place"] else
                                        ", rule/route " + ("MISSING" if v6["up"] else "STALE")))
    if v6.get("route"):
        out.append(f"  ipv6 route: {v6['route']}")
    if u.get("tier") is not None and u.get("weight") is not None:
        out.append(f"  tier {u['tier']}, weight {u['weight']}")
    if u.get("new_connections") is not None:
        out.append(f"  new connections: {u['new_connections']} ({_pct(u.get('share'))})")
    if "connections" in u:
        n = u["connections"]
        out.append(f"  pinned: {n} connection{'' if n == 1 else 's'}"
                   + (f", {_size(u['bytes'])}" if u.get("bytes") is not None else ""))
    h = u.get("health")
    if h:
        out.append(f"  health: {h['state']}, {since(h['since'])}: {h['reason']}")
        for f, s in _sides(h):
            out.append(f"    {f}: {s.get('state')}, {since(s.get('since'))}: {s.get('reason', '')}")
        rows = [("target", "rtt", "srtt", "loss", "probes", "lost")]
        for t in h["targets"]:
            rows.append((str(t["target"]),
                         "-" if t.get("rtt_ms") is None else f"{t['rtt_ms']:g} ms",
                         "-" if t.get("srtt_ms") is None else f"{t['srtt_ms']:g} ms",
                         _pct(t.get("loss")), str(t.get("probes", "-")),
                         str(t.get("lost", "-"))))
        if len(rows) > 1:
            out += columns(rows, indent="    ", width=WIDTH)
        if p := h.get("passive"):
            out.append(f"  passive: {p['sent']} sent, {p['answered']} answered, "
                       f"{p['unanswered']} unanswered now, {p['hurries']} hurries")
    return [ln for line in out for ln in wrap(line, WIDTH, indent="    ", sep=", ")]


def _family(f: int | str) -> str:
    return {4: "ipv4", 6: "ipv6"}.get(f, str(f))  # type: ignore[call-overload]


def _choosing(classes: Sequence[Mapping[str, Any]]) -> list[str]:
    merged: list[tuple[str, str, str, str]] = []
    seen: dict[str, tuple[Any, Any]] = {}
    names = list(dict.fromkeys(c["class"] for c in classes))  # classes in order, then default
    for c in sorted(classes, key=lambda c: (names.index(c["class"]), c["family"])):
        key = (c["tier"], [(s["uplink"], s["share"]) for s in c["uplinks"]], c["sticky"])
        if seen.get(c["class"]) == key and c["family"] == 6:  # both families alike: one row
            merged[-1] = (merged[-1][0], "both", *merged[-1][2:])
            continue
        seen[c["class"]] = key
        what = (", ".join(f"{s['uplink']} {_pct(s['share'])}" for s in c["uplinks"])
                if c["uplinks"] else "no live uplink: the routing table decides")
        merged.append((c["class"], _family(c["family"]), "-" if c["tier"] is None
                       else f"tier {c['tier']}", what + (" (sticky)" if c["sticky"] else "")))
    lines = columns([(n, f, t) for n, f, t, _ in merged], indent="  ")
    pad = max(len(ln) for ln in lines) + 2
    out = ["new connections (connpin chooses by class, tier and weight):"]
    for line, (_, _, _, what) in zip(lines, merged, strict=True):
        for i, part in enumerate(wrap(what, WIDTH - pad)):
            out.append((line.ljust(pad) if i == 0 else " " * pad) + part)
    return out


def _routing(main: Sequence[Mapping[str, Any]] | None,
             head: str = "new connections: the routing table chooses (connpin pins them)"
             ) -> list[str]:
    out = [head]
    if main is None:
        return out
    for r in main:
        if r["interface"] is None:
            out.append(f"  {_family(r['family'])}  no default route in main")
            continue
        via = f" via {r['gateway']}" if r["gateway"] else ""
        who = r["uplink"] or "not an uplink (not pinned)"
        weight = f", weight {r['weight']}" if r.get("weight") else ""
        out += wrap(f"  {_family(r['family'])}  {who}: default{via} dev {r['interface']}"
                    f", metric {r['metric']}{weight}", WIDTH, indent="        ")
    return out


def text(report: Mapping[str, Any], verbose: bool = False) -> str:
    ups = report["uplinks"]
    v6 = any(u["ipv6"]["up"] for u in ups)
    lines = _table(report, v6)
    for u in ups:
        problems = _problems(u)
        if problems and not verbose:
            lines += wrap(f"  {u['uplink']}: {'; '.join(problems)}", WIDTH, indent="    ",
                          sep="; ")
    for w in report["patterns_without_interfaces"]:
        lines.append(f"{w['uplink']}: no interface matches {w['pattern']!r} yet")
    if untracked(report):
        lines.append("health: not tracked (`connpin watch` is not running)")
    if verbose:
        for u in ups:
            lines += _detail(u, report.get("at"))
    new = report["new_connections"]
    if new["chosen_by"] == "connpin":
        lines += _choosing(new["classes"])
        if any(not c["uplinks"] for c in new["classes"]) and new.get("main") is not None:
            lines += _routing(new["main"], "where no uplink is live, the routing table:")
    else:
        lines += _routing(new.get("main"))
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


def untracked(report: Mapping[str, Any]) -> bool:
    """Some uplink has `check` but no daemon runs to probe it."""
    return any(u.get("checked") for u in report["uplinks"]) and not report.get("watch")


def nagios(report: Mapping[str, Any], problems: Sequence[str] = ()) -> tuple[int, str]:
    """(exit code, the one line) of the monitoring-plugin convention. `problems`: more reasons
    for a WARNING the report does not carry (conflicts, a failing daemon)."""
    ups = report["uplinks"]
    alive = live(report)
    bad = [f"{u['uplink']} {u['state']}" for u in ups if u["state"] != UP]
    bad += [f"{w['uplink']} no interface" for w in report["patterns_without_interfaces"]]
    bad += [f"{u['uplink']} {f} dead" for u in ups if u["state"] == UP  # one family dead
            for f, s in _sides(u.get("health") or {}) if s.get("state") == DEAD]
    names = len({u["uplink"] for u in ups}) + len(report["patterns_without_interfaces"])
    if not report.get("installed", True):
        code, summary = CRITICAL, "connpin's ruleset is not installed (connpin apply)"
    elif not alive:
        code, summary = CRITICAL, "no live uplink" + (f" ({', '.join(bad)})" if bad else "")
    else:
        parts = [f"{len(set(alive))}/{names} uplinks live"]
        parts += bad
        if report["drift"]:
            parts.append(f"kernel differs from the plan ({len(report['drift'])})")
        parts += list(problems)
        if untracked(report):
            parts.append("health not tracked (connpin watch is not running)")
        code = WARNING if len(parts) > 1 else OK
        summary = ", ".join(parts)
    perf = [f"live={len(set(alive))};;;0;{names}"]
    for u in ups:
        key = u["uplink"] if sum(x["uplink"] == u["uplink"] for x in ups) == 1 else (
            f"{u['uplink']}_{u['interface']}")
        perf.append(f"{key}_up={1 if u['state'] == UP else 0};;;0;1")
        if "connections" in u:
            perf.append(f"{key}_pinned={u['connections']};;;0")
        if u.get("new_connections") is not None:
            perf.append(f"{key}_new={u['new_connections']}c")
        h = u.get("health")
        if h and h["state"] != DEAD and (r := _rtt(h)) != "-":
            perf.append(f"{key}_rtt={r}")
        if h and (loss := _loss(h)) != "-":
            perf.append(f"{key}_loss={loss};;;0;100")
    return code, f"CONNPIN {LABELS[code]} - {summary} | {' '.join(perf)}"
