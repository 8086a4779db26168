"""The passive health signal on the real kernel (docs/health.md "The passive signal"): the
daemon probes slowly (`[health] rate = 0.5`: a round of 3 ICMP targets every 6 s, so probes
alone need ~9 s to call a blackholed ISP dead), while a LAN host opens ~10 new TCP connections
per second through the best uplink. connpin's nft table counts them (`sent`) and their first
replies (`answered`); unanswered ones make the uplink suspect, which only hurries its probes.

- another nft rule setting label bit 127 is a conflict `connpin check` names;
- healthy: the counters count, and no hurry happens while connections are answered;
- a LAN host scanning an address that never answers, through a healthy uplink: hurries happen
  (the signal cannot tell), the burst of probes is answered, the uplink is never dead;
- the ISP blackholed beyond its first hop: a hurry, then dead well before probes alone could
  (they need at least ~6 s here), and new connections leave by the other ISP.
Deadlines, not sleeps.
"""

from __future__ import annotations

import re
import time

from helpers import KERNEL, holds, wait_for
from test_health_watch import wait_health
from test_watch import status, watching

from connpin.lab import Lab, faults
from connpin.lab.opener import Opener

pytestmark = KERNEL

EXTRA = ("203.0.113.11", "203.0.113.13")  # more probe targets, on the net host's lo
SCAN = "203.0.113.12"  # an address on the net host that never answers (dropped on input)
PROBES_ALONE = 6.0  # the least time probes alone need here (3 lost rounds of 2 s spacing)


def passive_of(lab: Lab, uplink: str) -> dict:
    u = next(u for u in status(lab)["uplinks"] if u["uplink"] == uplink)
    return (u.get("health") or {}).get("passive") or {}


def test_passive_signal_hurries_probes_but_never_kills() -> None:
    with Lab(("ppp", "ppp")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        for a in (*EXTRA, SCAN):
            lab.exec("net", ["ip", "addr", "add", f"{a}/32", "dev", "lo"])
        lab.exec("net", ["nft", "-f", "-"], input=(
            "table inet scan {\n chain input {\n  type filter hook input priority 0;\n"
            f"  ip daddr {SCAN} drop\n }}\n}}\n"))
        targets = ", ".join(f'"icmp:{a}"' for a in (Lab.SERVER, *EXTRA))
        text = lab.default_config(masquerade=True)
        for k in lab.ks:
            text = text.replace(f'name = "isp{k}"\n',
                                f'name = "isp{k}"\npriority = {k}\nweight = 1\n'
                                f"check = [{targets}]\n")
        lab.write_config(text + "\n[health]\nrate = 0.5\n")
        plan = lab.connpin("plan").stdout
        assert re.search(r'ct label set 126 counter name "sent_\d+_isp1"', plan), plan
        lab.exec("router", ["nft", "-f", "-"], input=(  # another user of label bit 127
            "table inet other {\n chain c {\n  type filter hook prerouting priority 0;\n"
            "  ct label set 127\n }\n}\n"))
        check = lab.connpin("check", check=False)
        assert check.returncode != 0 and "sets conntrack label bit 127" in check.stdout, check
        lab.exec("router", ["nft", "delete", "table", "inet", "other"])
        with watching(lab) as daemon:
            wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 20)

            # healthy: counted, answered, never hurried
            opener = Opener(lab)
            try:
                wait_for(lambda: passive_of(lab, "isp1").get("answered", 0) >= 20, 10,
                         "20 answered connections in status")
                holds(lambda: not [ln for ln in daemon.lines if "suspect" in ln], 2,
                      "no hurry while connections are answered")
            finally:
                opener.stop()
            assert status(lab)["drift"] == [], status(lab)["drift"]  # the kernel holds the plan
            p = passive_of(lab, "isp1")
            assert p["sent"] >= p["answered"] >= 20 and p["hurries"] == 0, p
            verbose = lab.connpin("status", "-v", check=False).stdout
            assert re.search(r"^  passive: \d+ sent, \d+ answered", verbose, re.M), verbose

            # a LAN host scanning an address that never answers: hurries, never dead
            n = len(daemon.lines)
            scanner = Opener(lab, dst=SCAN, port=80)
            try:
                daemon.wait_log(r"health: isp1 suspect: \d+ new connections unanswered",
                                timeout=10, after=n)
                holds(lambda: not [ln for ln in daemon.lines[n:] if "-> dead" in ln], 6,
                      "isp1 stays alive while a LAN host scans a dead address")
            finally:
                scanner.stop()
            assert passive_of(lab, "isp1")["hurries"] >= 1

            # the ISP blackholed: a hurry, then dead well before probes alone could
            wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 10)
            opener = Opener(lab)
            try:
                wait_for(lambda: opener.first_by(1, 0) is not None, 5, "a connection by isp1")
                n = len(daemon.lines)
                started = time.monotonic()
                faults.blackhole(lab, 1)
                dead = daemon.wait_log(r"health: isp1 alive -> dead", timeout=20, after=n)
                hurry = daemon.wait_log(r"health: isp1 suspect", timeout=1, after=n)
                at = {ln: daemon.times[daemon.lines.index(ln, n)] - started
                      for ln in (hurry, dead)}
                wait_for(lambda: opener.first_by(2, started) is not None, 10,
                         "a new connection by isp2")
                moved = opener.first_by(2, started) - started
            finally:
                opener.stop()
            print(f"\nblackhole -> hurry {at[hurry]:.2f} s, dead {at[dead]:.2f} s, "
                  f"first new connection by isp2 {moved:.2f} s (probes alone: >= "
                  f"{PROBES_ALONE:g} s)")
            assert at[hurry] < at[dead] < PROBES_ALONE, (at, daemon.log)
