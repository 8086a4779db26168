"""The daemon logs conflicts with other software when it sees the ruleset change (issue 12):
another tool started after connpin, writing marks inside connpin's mask, shows in its log."""

from __future__ import annotations

import os

import pytest
from test_watch import watching

from connpin.lab import Lab
from connpin.lab import foreign as F
from connpin.watch.coexist import INTERVAL

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def test_watch_logs_a_tool_started_after_it_that_writes_connpins_bits_once() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        # Tailscale's mask: no conflict while Tailscale is not running
        lab.write_config(lab.default_config(masquerade=True, mark_mask=0x00FF0000))
        with watching(lab) as daemon:
            lab.uplink_up(1)
            daemon.wait_log(r"looked for conflicts: 0 ")  # its first look, at start
            # Tailscale starts: its iptables-nft rules and ip rules (nf_tables events about
            # ip mangle/filter); the next look is at most INTERVAL later
            F.tailscale(lab)
            line = daemon.wait_log(r"conflict: .*ts-forward.*MARK", timeout=INTERVAL + 20)
            assert "overlaps mark_mask 0x00ff0000" in line, line
            assert daemon.wait_log(r"conflict: ip rule 5210 fwmark 0x80000/0xff0000")
            at = daemon.lines.index(line)
            daemon.wait_log(r"looked for conflicts", after=at)
            n = len(daemon.lines)
            # more of others' changes: another look, the same conflicts are not logged again
            lab.exec("router", ["nft", "add", "table", "inet", "unrelated"])
            look = daemon.wait_log(r"looked for conflicts", after=n, timeout=INTERVAL + 20)
            assert "(0 new)" in look, daemon.log
            assert not [ln for ln in daemon.lines[n:] if "conflict:" in ln], daemon.log
