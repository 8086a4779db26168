"""Per-family health on the real kernel (issue 14 follow-up), in the dual-stack lab: isp1 (the
best tier) and isp2 both check an IPv4 and an IPv6 target; ISP 1 then drops only IPv6 beyond
its first hop (IPv4 keeps working, as when an ISP's IPv6 breaks). The daemon declares isp1's
IPv6 side dead while the uplink stays alive: new IPv6 connections move to the next tier, new
IPv4 connections stay on isp1; with on_down = "reset" isp1's pinned IPv6 connection is reset
and its IPv4 connection lives on (the dead set holds `ipv6 . mark` only); `connpin status
--json` shows the family sides. When IPv6 comes back, new IPv6 connections return to isp1.
"""

from __future__ import annotations

import errno
import re
import time
from collections import Counter

from helpers import KERNEL, wait_for
from test_dead import Sender, mark_of
from test_health_ipv6 import config
from test_health_watch import health_of, wait_health
from test_select import uplinks_of
from test_watch import watching

from connpin.lab import Lab, faults

pytestmark = KERNEL


def blackhole6(lab: Lab, k: int) -> None:
    """ISP k forwards no IPv6 (both directions), IPv4 as before: in the lab's fault table
    (`faults.clear` removes it)."""
    t = faults.TABLE
    lab.exec(f"isp{k}", ["nft", "-f", "-"], input=(
        f"table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain forward {{\n"
        "    type filter hook forward priority -10; policy accept;\n"
        "    meta nfproto ipv6 counter drop\n  }\n}\n"))


def sides(lab: Lab, name: str) -> dict[str, str]:
    h = health_of(lab).get(name) or {}
    return {f: s["state"] for f, s in (h.get("families") or {}).items()}


def dead_set(lab: Lab) -> str:
    out = lab.exec("router", ["nft", "list", "set", "inet", "connpin", "dead_marks"]).stdout
    return " ".join(out.split("elements = {", 1)[1].split("}")[0].split()) \
        if "elements" in out else ""


def test_ipv6_dead_alone_moves_only_new_ipv6_connections_and_resets_only_them() -> None:
    checks = f'check = ["icmp:{Lab.SERVER}", "icmp:{Lab.SERVER6}"]\nweight = 1'
    with Lab(("ppp", "eth"), ipv6=True) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        keys = {k: f"priority = {k}\n{checks}" for k in lab.ks}
        keys[1] += '\non_down = "reset"'
        lab.write_config(config(lab, keys))
        with watching(lab) as daemon:
            wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 15)
            wait_for(lambda: sides(lab, "isp1") == {"ipv4": "alive", "ipv6": "alive"}, 10,
                     "both family sides of isp1 alive")
            assert uplinks_of(lab, 6, dst=lab.SERVER6) == Counter({1: 6})
            assert uplinks_of(lab, 6) == Counter({1: 6})
            tcp4, tcp6 = Sender(lab), Sender(lab, dst=Lab.SERVER6)
            try:
                assert lab.uplink_of(tcp4.peer) == 1 and lab.uplink_of(tcp6.peer) == 1
                n_lines = len(daemon.lines)
                started = time.monotonic()
                blackhole6(lab, 1)
                line = daemon.wait_log(r"health: isp1 ipv6 alive -> dead", after=n_lines)
                dead = daemon.times[daemon.lines.index(line)] - started
                err = tcp6.wait_error(15)
                assert err.errno == errno.ECONNRESET, err
                print(f"\nIPv6 blackhole -> isp1 ipv6 dead {dead:.2f} s -> IPv6 connection "
                      f"reset {(tcp6.at or 0) - started:.2f} s")
                tcp4.wait_sent(5)  # the IPv4 connection on isp1 lives on
                assert health_of(lab)["isp1"]["state"] == "alive"
                assert sides(lab, "isp1") == {"ipv4": "alive", "ipv6": "dead"}
                assert dead_set(lab) == f"ipv6 . {mark_of(lab, 1)}"
                assert not any(re.search(r"health: isp1 (ipv4 )?alive -> dead", ln)
                               for ln in daemon.lines[n_lines:])
            finally:
                tcp4.close()
                tcp6.close()
            wait_for(lambda: lab.uplink_of(lab.connect(dst=lab.SERVER6, timeout=0.5)) == 2, 10,
                     "a new IPv6 connection by isp2")
            assert uplinks_of(lab, 6, dst=lab.SERVER6) == Counter({2: 6})
            assert uplinks_of(lab, 6) == Counter({1: 6}), "IPv4 stays on the best tier"
            assert lab.spoofed6(1) == 0 and lab.spoofed6(2) == 0

            faults.clear(lab, 1)
            wait_for(lambda: sides(lab, "isp1").get("ipv6") == "alive", 15,
                     "isp1's IPv6 side alive again")
            wait_for(lambda: lab.uplink_of(lab.connect(dst=lab.SERVER6, timeout=5)) == 1, 10,
                     "new IPv6 connections back on isp1")
            assert uplinks_of(lab, 6, dst=lab.SERVER6) == Counter({1: 6})
            wait_for(lambda: dead_set(lab) == "", 10, "isp1 out of the dead set")
