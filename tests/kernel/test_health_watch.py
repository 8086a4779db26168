"""Health tracking in `connpin watch` on the real kernel: the daemon runs in the lab's router with
`check` on both uplinks (targets on the internet host, behind the ISPs); an ISP that blackholes
everything beyond its first hop is shown dead by `connpin status`, an events.d hook runs with the
uplink, old and new state and reason in its environment, the daemon logs the transition; when the
fault is cleared the uplink is alive again after the stable period. Deadlines, not sleeps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from helpers import KERNEL
from test_watch import Daemon, status, watching

from connpin.lab import Lab, faults

pytestmark = KERNEL

EXTRA = "203.0.113.11"  # a second internet address, on the net host's lo
HOOK = """#!/bin/sh
printf '%s|%s|%s|%s\\n' "$CONNPIN_UPLINK" "$CONNPIN_OLD" "$CONNPIN_NEW" "$CONNPIN_REASON" >> {out}
"""


def health_of(lab: Lab) -> dict[str, dict]:
    return {u["uplink"]: u["health"] for u in status(lab)["uplinks"] if u.get("health")}


def wait_health(lab: Lab, want: dict[str, str], daemon: Daemon, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = health_of(lab)
        if all(got.get(n, {}).get("state") == s for n, s in want.items()):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"health not {want} after {timeout:g} s: {got}\n{daemon.log}")
        time.sleep(0.05)


def tiered_config(lab: Lab) -> None:
    """Every uplink checked (ICMP and TCP to the lab's server), weight 1, tier = its number."""
    keys = f'check = ["icmp:{Lab.SERVER}", "tcp:{Lab.SERVER}:443"]\nweight = 1'
    text = lab.default_config(masquerade=True)
    for k in lab.ks:
        text = text.replace(f'name = "isp{k}"\n', f'name = "isp{k}"\npriority = {k}\n{keys}\n')
    lab.write_config(text)


@contextmanager
def tiered_watch(lab: Lab) -> Iterator[Daemon]:
    """All uplinks up and tiered (`tiered_config`), the daemon running, every uplink alive and
    new connections leaving by isp1, the best tier."""
    for k in lab.ks:
        lab.uplink_up(k)
    tiered_config(lab)
    with watching(lab) as daemon:
        wait_health(lab, {f"isp{k}": "alive" for k in lab.ks}, daemon, 15)
        assert {lab.uplink_of(lab.connect(timeout=5.0)) for _ in range(5)} == {1}
        yield daemon


def until_new_by(lab: Lab, k: int, started: float, deadline: float, daemon: Daemon) -> float:
    """Seconds from `started` until a new LAN connection leaves by uplink `k`."""
    while lab.uplink_of(lab.connect(timeout=0.3)) != k:
        assert time.monotonic() - started < deadline, \
            f"new connections never moved to isp{k}\n{daemon.log}"
    return time.monotonic() - started


def wait_lines(path, count: int, timeout: float) -> list[str]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_watch_health_blackhole_status_hooks_and_recovery() -> None:
    """`check` alone on each uplink (no weight, no class): health, status, event hooks, and new
    connections leaving by the next uplink while the first is dead (connpin chooses by tier)."""
    with Lab(("ppp", "eth")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        lab.exec("net", ["ip", "addr", "add", f"{EXTRA}/32", "dev", "lo"])
        check = f'check = ["icmp:{Lab.SERVER}", "icmp:{EXTRA}", "tcp:{Lab.SERVER}:443"]'
        lab.write_config(re.sub(r'(interface = "[^"]+"\n)', rf"\1{check}\n",
                                lab.default_config(masquerade=True)))
        events = lab.workdir / "events.d"
        events.mkdir()
        out = lab.workdir / "events.out"
        (events / "10-log").write_text(HOOK.format(out=out))
        (events / "10-log").chmod(0o755)
        with watching(lab, env={"CONNPIN_EVENTS_DIR": str(events)}) as daemon:
            got = wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 15)
            assert [t["target"] for t in got["isp1"]["targets"]] == [
                f"icmp:{Lab.SERVER}", f"icmp:{EXTRA}", f"tcp:{Lab.SERVER}:443"]
            assert wait_lines(out, 2, 10) and not faults.dropped(lab, 1)
            n_lines, n_events = len(daemon.lines), len(wait_lines(out, 2, 0))
            # `check` alone (no weight, no class): connpin chooses, by tier (file order)
            assert status(lab)["new_connections"]["chosen_by"] == "connpin"
            assert {lab.uplink_of(lab.connect(timeout=5.0)) for _ in range(3)} == {1}

            started = time.monotonic()
            faults.blackhole(lab, 1)
            got = wait_health(lab, {"isp1": "dead", "isp2": "alive"}, daemon, 10)
            shown = time.monotonic() - started
            line = daemon.wait_log(r"health: isp1 alive -> dead \(all 3 targets lost",
                                   after=n_lines)
            logged = daemon.times[daemon.lines.index(line)] - started
            print(f"\nblackhole -> logged dead {logged:.2f} s, status shows dead {shown:.2f} s")
            assert status(lab)["uplinks"][0]["interface"] == lab.iface(1)
            assert all(t["loss"] > 0 for t in got["isp1"]["targets"])
            assert all(t["rtt_ms"] is not None for t in got["isp2"]["targets"])
            report = status(lab)
            assert report["watch"]["dead"] == ["isp1"]
            hooked = wait_lines(out, n_events + 1, 10)[n_events:]
            assert hooked and hooked[0].startswith("isp1|alive|dead|all 3 targets lost"), hooked
            text = lab.connpin("status", check=False).stdout
            row = next(ln for ln in text.splitlines() if ln.startswith("isp1 "))
            assert row.split()[2] == "dead" and row.split()[4] == "dead", text  # link, health
            assert re.search(r"^  isp1: dead: all 3 targets", text, re.M), text
            assert report["uplinks"][0]["state"] == "dead"
            assert report["uplinks"][0]["health"]["since"] is not None
            until_new_by(lab, 2, time.monotonic(), 10, daemon)  # failover with `check` alone
            nagios = lab.connpin("status", "--nagios", check=False)
            assert nagios.returncode == 1, nagios.stdout
            assert nagios.stdout.startswith("CONNPIN WARNING - 1/2 uplinks live, isp1 dead")

            n_lines = len(daemon.lines)
            started = time.monotonic()
            faults.clear(lab, 1)
            wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 15)
            recovered = time.monotonic() - started
            daemon.wait_log(r"health: isp1 dead -> alive \(answers for", after=n_lines)
            print(f"fault cleared -> status shows alive {recovered:.2f} s")
            hooked = wait_lines(out, n_events + 2, 10)[n_events:]
            assert hooked[1].startswith("isp1|dead|alive|answers for"), hooked
            assert status(lab)["watch"]["dead"] == []
            until_new_by(lab, 1, time.monotonic(), 10, daemon)  # and back
            assert not [ln for ln in daemon.lines if "isp2 alive -> " in ln]


def test_watch_moves_new_connections_off_a_dead_uplink_and_back() -> None:
    """Health and selection together (issue 14): isp1 is the best tier, isp2 the next. When isp1
    is blackholed beyond its first hop (link up), new connections leave by isp2 once the daemon
    declares it dead; when it recovers they return to isp1 after the stable period."""
    with Lab(("ppp", "eth")) as lab, tiered_watch(lab) as daemon:

        started = time.monotonic()
        faults.blackhole(lab, 1)
        moved = until_new_by(lab, 2, started, 15, daemon)
        print(f"\nblackhole -> first new connection by isp2 {moved:.2f} s")
        assert {lab.uplink_of(lab.connect(timeout=5.0)) for _ in range(5)} == {2}
        report = status(lab)  # status says where new connections go now, and why
        default = [c for c in report["new_connections"]["classes"]
                   if c["class"] == "default" and c["family"] == 4]
        assert default[0]["tier"] == 2 and [s["uplink"] for s in default[0]["uplinks"]] == [
            "isp2"], report["new_connections"]
        assert [(u["uplink"], u["state"], u["tier"], u["weight"]) for u in report[
            "uplinks"]] == [("isp1", "dead", 1, 1), ("isp2", "up", 2, 1)]
        text = lab.connpin("status", check=False).stdout
        assert re.search(r"^  default  ipv4  tier 2  isp2 100%$", text, re.M), text

        faults.clear(lab, 1)
        wait_health(lab, {"isp1": "alive"}, daemon, 15)
        until_new_by(lab, 1, time.monotonic(), 10, daemon)
