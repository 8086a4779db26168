"""`connpin status` rendering (render/status.py, render/status_text.py): for every golden config,
one fixed machine (every uplink up but the last, the first pattern interface present, health
figures, counters, main's default route, fixed times) rendered as text, `-v`, `--nagios` and
JSON, compared with tests/golden/CASE/status.txt and status.json; every line fits 100 columns;
the states, since, shares and monitoring codes of the cases that matter.

Regenerate after an intended change with `UPDATE_GOLDEN=1`, then review the diff.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from unit_helpers import check_golden

from connpin import desired as D
from connpin import model, reconcile
from connpin.render import status, status_text
from connpin.values import Counters, Link

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "connpin.toml").exists())
NOW = 1_764_700_000.0  # 2025-12-02T18:26:40Z


def _ifaces(config: model.Config) -> list[str]:
    out = []
    for u in config.uplinks:
        out.append(u.prefix + "0" if u.is_pattern else u.interface)
    return out


def machine(config: model.Config, down: set[str] | None = None,
            dead: set[str] = frozenset()) -> dict:  # type: ignore[assignment]
    """The facts `status` reads, for a made-up machine: every uplink interface up with an
    address (pattern uplinks: PREFIX0), but those in `down` (default: the last uplink's)."""
    ifaces = _ifaces(config)
    down = {ifaces[-1]} if down is None else down
    links = {n: Link(n, i + 2, n not in down, (f"100.64.{i}.2",)) for i, n in enumerate(ifaces)}
    gateways = {n: f"100.64.{i}.1" for i, n in enumerate(ifaces)}
    gw6 = {n: "fe80::1" for n in ifaces[:1]}  # IPv6 on the first uplink only
    observed = D.Observed(links, gateways, gateways6=gw6)
    want = D.compute(config, observed, dead=frozenset(dead))
    observed = replace(observed, sysctls=dict(want.sysctls))
    have = reconcile.Installed(want.rules, want.routes, "listing", reconcile.sha(want.ruleset))
    result = reconcile.Result(want, observed, have, reconcile.diff(want, observed, have))
    health = {}
    for u in config.uplinks:
        if not u.check:
            continue
        state = "dead" if u.name in dead else "alive"
        health[u.name] = {
            "state": state, "since": "ignored", "at": NOW - 754, "interface": u.interface,
            "reason": "all 1 targets lost 9 of their last 9 probes" if state == "dead" else
            "answers for 3 s",
            "targets": [{"target": str(t), "rtt_ms": 12.5 + i, "srtt_ms": 12.0 + i,
                         "loss": 0.0 if state == "alive" else 1.0, "probes": 900,
                         "lost": 3 if state == "alive" else 900}
                        for i, t in enumerate(u.check)]}
    since = {n: {"4": [n not in down, NOW - 3 * 3600 - 600 * i]} for i, n in enumerate(ifaces)}
    counters = {u.name: Counters(new=300 // (i + 1)) for i, u in enumerate(config.uplinks)}
    main = {4: [{"interface": ifaces[0], "gateway": "100.64.0.1", "metric": 100,
                 "weight": None}], 6: []}
    pinned = {n: (40 - 7 * i, None) for i, n in enumerate(ifaces)}
    return {"result": result, "pinned": pinned, "watch": {"health": health}, "since": since,
            "counters": counters, "main": main}


def report(config: model.Config, counters: bool = True, **kw: object) -> dict:
    m = machine(config, **kw)  # type: ignore[arg-type]
    return status.build(config, m["result"], m["pinned"], watch=m["watch"], since=m["since"],
                        counters=m["counters"] if counters else None, main=m["main"], now=NOW)


def load(case: str) -> model.Config:
    return replace(model.load(GOLDEN / case / "connpin.toml"), path="connpin.toml")


def render(case: str) -> dict[str, str]:
    rep = report(load(case))
    code, line = status_text.nagios(rep)
    return {
        "status.txt": status_text.text(rep) + "\n--- status -v\n" + status_text.text(rep, True)
        + f"\n--- status --nagios (exit {code})\n{line}\n",
        "status.json": json.dumps(rep, indent=2) + "\n",
    }


@pytest.mark.parametrize("case", CASES)
def test_status_matches_golden(case: str) -> None:
    check_golden(GOLDEN / case, render(case))


@pytest.mark.parametrize("case", CASES)
def test_every_text_line_fits_100_columns(case: str) -> None:
    config = load(case)
    for kw in ({}, {"down": set()}, {"dead": {u.name for u in config.uplinks}}):
        rep = report(config, **kw)
        for verbose in (False, True):
            wide = [ln for ln in status_text.text(rep, verbose).splitlines() if len(ln) > 100]
            assert not wide, f"{case} {kw} -v={verbose}: lines over 100 columns: {wide}"


def test_uplinks_in_config_order_with_short_states_since_and_reasons() -> None:
    config = load("pppoe-five")
    rep = report(config)
    assert [u["uplink"] for u in rep["uplinks"]] == [u.name for u in config.uplinks]
    assert [u["state"] for u in rep["uplinks"]] == ["up"] * 4 + ["down"]
    assert rep["uplinks"][0]["since"] == "2025-12-02T15:26:40Z"
    assert rep["schema"] == 1 and rep["at"] == "2025-12-02T18:26:40Z"
    text = status_text.text(rep).splitlines()
    assert text[0].split() == ["uplink", "interface", "state", "since", "share", "ipv6",
                               "pinned"]
    assert text[1].split()[:4] == ["isp0", "ppp0", "up", "3h00m"]
    assert text[5].split()[:4] == ["isp4", "ppp4", "down", "3h40m"]
    assert "  isp4: down: interface is down" in text  # the reason, indented, under the table
    assert not [ln for ln in text if "ipv6 off" in ln]  # IPv4-only is fine: why is in -v


def test_since_is_unknown_when_the_record_disagrees_with_the_kernel() -> None:
    config = load("pppoe-five")
    m = machine(config)
    m["since"]["ppp0"]["4"] = [False, NOW - 60]  # recorded down, but the kernel says up
    rep = status.build(config, m["result"], watch=m["watch"], since=m["since"], now=NOW)
    assert rep["uplinks"][0]["since"] is None
    assert status_text.text(rep).splitlines()[1].split()[:4] == ["isp0", "ppp0", "up", "-"]


def test_no_counters_no_share() -> None:
    rep = report(load("choose"), counters=False)
    assert [u["share"] for u in rep["uplinks"]] == [None] * 3
    head, first = status_text.text(rep).splitlines()[:2]
    assert first.split()[head.split().index("share")] == "-"


def test_dead_uplink_leaves_the_choice_and_shows_dead() -> None:
    config = load("long-names")
    fibre = config.uplinks[0].name
    rep = report(config, down=set(), dead={fibre})
    assert rep["uplinks"][0]["state"] == "dead"
    default = next(c for c in rep["new_connections"]["classes"]
                   if c["class"] == "default" and c["family"] == 4)
    assert [s["uplink"] for s in default["uplinks"]] == [config.uplinks[1].name]
    assert default["tier"] == 1 and default["uplinks"][0]["share"] == 1.0
    code, line = status_text.nagios(rep)
    assert code == status_text.WARNING
    assert line.startswith("CONNPIN WARNING - 3/4 uplinks live, "), line


def test_nagios_codes() -> None:
    config = load("pppoe-five")
    ok = report(config, down=set())
    assert status_text.nagios(ok)[0] == status_text.OK
    assert status_text.nagios(ok)[1].startswith("CONNPIN OK - 5/5 uplinks live | live=5;;;0;5")
    one_down = report(config)
    code, line = status_text.nagios(one_down)
    assert code == status_text.WARNING and "isp4 down" in line
    all_down = report(config, down={f"ppp{i}" for i in range(5)})
    assert status_text.nagios(all_down)[0] == status_text.CRITICAL
    not_installed = dict(ok, installed=False)
    assert status_text.nagios(not_installed)[0] == status_text.CRITICAL
    drift = dict(ok, drift=["ip rule add ..."], in_place=False)
    assert status_text.nagios(drift)[0] == status_text.WARNING
    assert status_text.nagios(ok, ["1 conflict(s)"])[0] == status_text.WARNING
    assert "|" in line and line.count("\n") == 0


def test_main_route_named_by_its_uplink_when_connpin_does_not_choose() -> None:
    rep = report(load("dual-stack"))
    routes = rep["new_connections"]["main"]
    assert rep["new_connections"]["chosen_by"] == "routing table"
    assert routes[0]["uplink"] == "dsl" and routes[0]["family"] == 4
    assert routes[1] == {"family": 6, "interface": None, "gateway": None, "metric": None,
                         "weight": None, "uplink": None}
    text = status_text.text(rep)
    assert "  ipv4  dsl: default via 100.64.0.1 dev ppp0, metric 100" in text
    assert "  ipv6  no default route in main" in text


def test_ago() -> None:
    at = status.iso(NOW)
    assert [status_text.ago(status.iso(NOW - s), at) for s in (5, 65, 3 * 3600 + 60,
            2 * 86400 + 3600, 400 * 86400)] == ["5s", "1m05s", "3h01m", "2d01h", "400d"]
    assert status_text.ago(None, at) == "-"
