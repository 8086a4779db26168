"""`connpin ha promote / demote` against two real conntrackd (issue 16, docs/ha.md): the peer's
replicated connections are committed into this router's kernel with their marks, and with
`on_promote = "flush-stranded"` the pinned ones NATed to an address this router does not have
are deleted, and only those. The lab's router is the router that takes over; its LAN host plays
the old master (its conntrackd replicates over the LAN link, the "sync link" here). The whole
two-router story with keepalived and traffic is the HA lab's (`connpin lab demo --ha`).
Checks go through the conntrack tool and conntrackd's own client, not through connpin.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import KERNEL, wait_for

from connpin.kernel import tools
from connpin.lab import Lab

pytestmark = [*KERNEL, pytest.mark.skipif(not tools.exists("conntrackd"),
                                          reason="conntrackd is not installed")]

FOREIGN = "198.51.100.250"  # the old master's public address: not this router's


def _ha(lab: Lab, name: str, iface: str, local: str, peer: str) -> str:
    w = lab.workdir
    return (f'\n[ha]\ntopology = "own"\nsync_interface = "{iface}"\nlocal = "{local}"\n'
            f'peer = "{peer}"\nconntrackd_config = "{w}/{name}.conf"\n'
            f'conntrackd_socket = "{w}/{name}.ctl"\nconntrackd_lockfile = "{w}/{name}.lock"\n')


@contextmanager
def pair() -> Iterator[tuple[Lab, str, str]]:
    """A lab whose router (uplink 1 up, pinning applied) and LAN host each run conntrackd.
    Yields the lab and the two conntrackd configs (router's, LAN host's)."""
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.uplink_up(1)
        lab.write_config(lab.default_config(masquerade=True)
                         + _ha(lab, "router", "lan0", lab.LAN_GATEWAY, lab.LAN_HOST))
        old = lab.workdir / "old-master.toml"
        old.write_text(lab.default_config(masquerade=True)
                       + _ha(lab, "old", "eth0", lab.LAN_HOST, lab.LAN_GATEWAY))
        lab.connpin("ha", "conntrackd-conf", "--write")
        lab.connpin("-c", str(old), "ha", "conntrackd-conf", "--write")
        lab.connpin("apply")
        mine, theirs = str(lab.workdir / "router.conf"), str(lab.workdir / "old.conf")
        daemons = [subprocess.Popen(["ip", "netns", "exec", lab.ns(host), tools.find("conntrackd"),
                                     "-C", conf], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for host, conf in (("router", mine), ("lan", theirs))]
        try:
            for host, conf in (("router", mine), ("lan", theirs)):
                wait_for(lambda h=host, c=conf: lab.exec(h, ["conntrackd", "-C", c, "-s"],
                                                         check=False).returncode == 0,
                         10, f"conntrackd of {host} answering")
            yield lab, mine, theirs
        finally:
            for d in daemons:
                d.terminate()
            for d in daemons:
                try:
                    d.wait(10)
                except subprocess.TimeoutExpired:
                    d.kill()
                    d.wait()


def marks(lab: Lab) -> dict[str, int]:
    report = json.loads(lab.connpin("status", "--json", check=False).stdout)
    return {u["uplink"]: int(u["mark"], 16) for u in report["uplinks"]}


def insert(lab: Lab, src: str, sport: int, mark: int, nat: str | None) -> None:
    """A connection on the old master (the LAN host's kernel), replicated by its conntrackd."""
    argv = ["conntrack", "-I", "-p", "tcp", "-s", src, "-d", lab.SERVER, "--sport", str(sport),
            "--dport", "80", "--state", "ESTABLISHED", "-t", "600", "-u", "SEEN_REPLY,ASSURED"]
    lab.exec("lan", argv + (["--src-nat", nat] if nat else []))
    if mark:  # conntrack -I does not take the mark as given; -U does
        lab.exec("lan", ["conntrack", "-U", "-p", "tcp", "-s", src, "--sport", str(sport),
                         "-m", str(mark)])


def kernel_entries(lab: Lab, host: str = "router") -> dict[int, tuple[int, int]]:
    """sport -> (mark, seconds left) of the router's TCP entries to the server."""
    out = lab.exec(host, ["conntrack", "-L", "-p", "tcp", "-d", lab.SERVER], check=False).stdout
    found = {}
    for line in out.splitlines():
        sport = re.search(r" sport=(\d+) ", line)
        mark = re.search(r" mark=(\d+)", line)
        left = re.match(r"tcp\s+6\s+(\d+) ", line)
        if sport and mark and left:
            found[int(sport.group(1))] = (int(mark.group(1)), int(left.group(1)))
    return found


def test_promote_commits_marks_and_flushes_only_the_stranded_pins() -> None:
    with pair() as (lab, mine, _):
        m = marks(lab)
        own = lab.address(1)
        insert(lab, "10.77.0.51", 40001, m["isp1"], own)  # pinned, NATed to an address of ours
        insert(lab, "10.77.0.52", 40002, m["isp2"], FOREIGN)  # pinned, stranded
        insert(lab, "10.77.0.53", 40003, 0, FOREIGN)  # not connpin's: never touched
        insert(lab, "10.77.0.54", 40004, m["isp2"], None)  # pinned, not NATed: survives
        wait_for(lambda: lab.exec("router", ["conntrackd", "-C", mine, "-e"]).stdout
                 .count("mark=") >= 4 and f"mark={m['isp2']}" in lab.exec(
                     "router", ["conntrackd", "-C", mine, "-e"]).stdout,
                 10, "the four connections in the router's external cache, with their marks")
        assert not kernel_entries(lab), "the external cache is not injected before promotion"

        # as keepalived runs it (inside the namespace, `python -I -m connpin`): the commit runs
        # before connpin's start-up (connpin.ha.fast), once, reported in its place
        p = lab.exec("router", [sys.executable, "-I", "-m", "connpin", "-c",
                                str(lab.config_path), "ha", "promote"], check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        commits = [ln for ln in p.stdout.splitlines() if f"-C {mine} -c:" in ln]
        assert len(commits) == 1 and commits[0].endswith("before connpin's start-up"), p.stdout
        assert p.stdout.splitlines()[0] == commits[0], "the commit is the first step"
        assert "flush stranded: 1 of 1 pinned connection(s)" in p.stdout, p.stdout
        got = kernel_entries(lab)
        assert {s: mk for s, (mk, _) in got.items()} == {
            40001: m["isp1"], 40003: 0, 40004: m["isp2"]}, got

        d = lab.connpin("ha", "demote", check=False)
        assert d.returncode == 0, d.stdout + d.stderr
        assert kernel_entries(lab), "demote schedules the flush (after PurgeTimeout), no more"


def test_a_conntrackd_that_does_not_answer_fails_the_step_not_the_promotion() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.uplink_up(1)
        lab.write_config(lab.default_config(masquerade=True)
                         + _ha(lab, "router", "lan0", lab.LAN_GATEWAY, lab.LAN_HOST))
        p = lab.connpin("ha", "promote", check=False)
        assert p.returncode == 1
        lines = p.stdout.splitlines()
        assert len([ln for ln in lines if ": failed (exit 1, " in ln]) == 4, p.stdout
        assert any("converge:" in ln and "verified" in ln for ln in lines), p.stdout
        assert "flush stranded: 0 of 0" in p.stdout
        assert lab.connpin("status", check=False).returncode == 0, "converged all the same"
