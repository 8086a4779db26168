"""What the kernel tests share: the tier's marks, waiting with deadlines, the flow and status
checks, the core stories (1: outbound, 2: inbound) and the control that proves a story can
fail, and foreign iptables rules.

Timing is never asserted as "this took less than X" against a tight bound: a test waits for a
condition until a deadline, and the one threshold a behaviour needs (how long a pinned
connection may go without a round trip) is generous and tunable:

- `CONNPIN_TEST_STALL` (seconds, default 3): a connection whose round trips stop for longer
  is stalled. The probe does a round trip every 0.2 s, and an unpinned connection dies for good
  (reset or dropped: the control tests show the stories fail), so the default only separates
  "flowing" from "dead" on a loaded machine; set it lower (e.g. 1) to hunt brief stalls.
- `CONNPIN_TEST_FLAPS` (default 10): how often test_pinning's story 4 flaps the other uplink.
  Each flap is two converges and a kernel round trip or two (seconds each on a loaded machine),
  so the suite runs 10; the soak is `CONNPIN_TEST_FLAPS=50` (or more) on that one test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from connpin.lab import Lab
from connpin.model import RULE_BAND

#: `pytestmark = KERNEL` in every kernel test module: root and network namespaces needed.
KERNEL = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

#: A pinned connection must never go this long without a round trip (see the module docstring).
STALL = float(os.environ.get("CONNPIN_TEST_STALL", "3.0"))

#: Flaps of the other uplink in test_pinning's story 4 (see the module docstring).
FLAPS = int(os.environ.get("CONNPIN_TEST_FLAPS", "10"))


def wait_for(cond: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> None:
    """Poll `cond` until it is true; fail naming `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


def holds(cond: Callable[[], object], duration: float, what: str,
          interval: float = 0.05) -> None:
    """Check that `cond` stays true for `duration` seconds (a claim that something does NOT
    happen within a period; the period is the claim, not a guess at how long work takes)."""
    end = time.monotonic() + duration
    while True:
        assert cond(), f"no longer true: {what}"
        if time.monotonic() >= end:
            return
        time.sleep(interval)


def assert_flowing(probe, rounds: int = 5, timeout: float = 5.0) -> None:
    """`rounds` more round trips within `timeout`, and none of them late by `STALL`."""
    probe.reset_gap()
    assert probe.wait_rounds(rounds, timeout), f"probe stalled (peer {probe.peer})"
    assert probe.max_gap < STALL, f"probe stalled for {probe.max_gap:.2f}s"


def assert_status_ok(lab: Lab) -> None:
    p = lab.connpin("status", check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def settled(up: set[int]) -> None:
    """With hooks, `uplink_up` returns once the pinning is in place: nothing to wait for."""


def story_outbound(lab: Lab, settle: Callable[[set[int]], None] = settled) -> None:
    """1: a connection opened over the backup keeps working after the preferred uplink returns.
    `settle(up)` waits until the pinning of uplinks `up` is in place (the daemon's tests)."""
    lab.uplink_up(2)
    settle({2})
    probe = lab.probe()
    try:
        assert probe.wait_rounds(3, 5.0)
        assert lab.uplink_of(probe.peer) == 2
        lab.uplink_up(1)
        settle({1, 2})
        assert lab.uplink_of(lab.connect()) == 1, "new connections take the preferred uplink"
        assert_flowing(probe)
        assert lab.uplink_of(probe.peer) == 2
    finally:
        probe.close()


def story_inbound(lab: Lab, settle: Callable[[set[int]], None] = settled) -> None:
    """2: connections arriving on the backup (to the router, port-forwarded) answer over it."""
    lab.uplink_up(2)
    lab.uplink_up(1)
    settle({1, 2})
    assert lab.connect(src="net", dst=lab.address(2), port=7) is not None, "to the router"
    assert lab.connect(src="net", dst=lab.address(2), port=8080) is not None, "port forward"
    probe = lab.probe(src="net", dst=lab.address(2), port=8080)
    try:
        assert_flowing(probe)
    finally:
        probe.close()


def fails_without_pinning(story: Callable[[Lab], None], ipv6: bool = False) -> bool:
    """The control: `story` on plain routing and masquerade (no connpin) fails an assertion."""
    with Lab(uplinks=("ppp", "ppp"), lab_masquerade=True, ipv6=ipv6) as lab:
        try:
            story(lab)
        except AssertionError:
            return True
        return False


#: Foreign iptables rules in every built-in chain connpin hooks into (both families), so the
#: tables and chains exist before connpin: `remove` must leave them exactly as they were.
FOREIGN_IPT = """*mangle
-A PREROUTING -m mark --mark 0xca6c -j RETURN
-A OUTPUT -p udp --dport 51820 -j MARK --set-xmark 0x100/0x100
-A POSTROUTING -o lan0 -j RETURN
COMMIT
*nat
-A PREROUTING -p tcp --dport 2222 -j RETURN
-A POSTROUTING -o lan0 -j RETURN
COMMIT
"""


def foreign_iptables(lab: Lab) -> None:
    flavour = os.environ.get("CONNPIN_IPTABLES") or "iptables"
    for tool in (flavour, flavour.replace("iptables", "ip6tables", 1)):
        lab.exec("router", [f"{tool}-restore", "--noflush"], input=FOREIGN_IPT)


def rule_band(lab: Lab, family: int) -> list[str]:
    """The router's `ip -4|-6 rule` lines in connpin's priority band (10000 + RULE_BAND)."""
    rules = lab.exec("router", ["ip", f"-{family}", "rule", "show"]).stdout.splitlines()
    return [r for r in rules if int(r.split(":")[0]) in range(10000, 10000 + RULE_BAND)]
