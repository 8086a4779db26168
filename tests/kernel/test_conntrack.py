"""Pinned connections you can see and steer: counts, `connections`, `flush`, failback and
on_down, on the real kernel. Checks go through the conntrack tool, not through connpin."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import KERNEL, STALL, holds, wait_for

from connpin.lab import Lab
from connpin.lab.echo import open_connection

pytestmark = KERNEL

FULL = 432000  # nf_conntrack_tcp_timeout_established: idle = FULL - timeout left


@contextmanager
def lab_with(uplink_keys: dict[str, str] | None = None, **pinning: object) -> Iterator[Lab]:
    """A two-PPP lab with hooks and pinning; `uplink_keys`: extra TOML lines per uplink."""
    with Lab(uplinks=("ppp", "ppp")) as lab:
        cfg = lab.default_config(masquerade=True, **pinning)
        for name, extra in (uplink_keys or {}).items():
            cfg = cfg.replace(f'name = "{name}"', f'name = "{name}"\n{extra}')
        lab.write_config(cfg)
        lab.connpin("hooks", "install", "--ppp", "--root", lab.hooks_root)
        lab.connpin("apply")
        yield lab


def marks(lab: Lab) -> dict[str, int]:
    report = json.loads(lab.connpin("status", "--json", check=False).stdout)
    return {u["uplink"]: int(u["mark"], 16) for u in report["uplinks"]}


def ct_list(lab: Lab, mark: int | None = None, mask: int = 0xFFFFFFFF) -> list[str]:
    argv = ["conntrack", "-L"] + (["-m", f"{mark:#x}/{mask:#x}"] if mark is not None else [])
    out = lab.exec("router", argv).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def ct_entries(lab: Lab, mark: int | None = None, mask: int = 0xFFFFFFFF) -> list[str]:
    """`ct_list` sorted, without the time left (it ticks down between two listings)."""
    return sorted(" ".join(ln.split()[:2] + ln.split()[3:]) for ln in ct_list(lab, mark, mask))


def ct_insert(lab: Lab, n: int, mark: int, idle: int = 0) -> None:
    """A fake established, masqueraded TCP entry with this mark, idle for `idle` seconds."""
    lab.exec("router", [
        "conntrack", "-I", "-p", "tcp", "-s", "10.77.0.99", "-d", "203.0.113.10",
        "--sport", str(20000 + n), "--dport", "80", "-r", "203.0.113.10", "-q", "100.64.2.2",
        "--reply-port-src", "80", "--reply-port-dst", str(20000 + n),
        "--state", "ESTABLISHED", "-u", "ASSURED,SEEN_REPLY", "-t", str(FULL - idle),
        "-m", f"{mark:#x}"])


def ct_idle(lab: Lab, mark: int, mask: int = 0xFF000000) -> list[int]:
    """Seconds each matching TCP entry has been idle, as the conntrack tool shows it (whole
    seconds: the established timeout minus the time left)."""
    return [FULL - int(ln.split()[2]) for ln in ct_list(lab, mark, mask) if ln.startswith("tcp")]


def test_status_counts_and_connections_listing() -> None:
    with lab_with() as lab:
        lab.set_sysctl("router", "net.netfilter.nf_conntrack_acct", 1)
        lab.set_sysctl("router", "net.netfilter.nf_conntrack_timestamp", 1)
        lab.uplink_up(1)
        lab.uplink_up(2)
        probes = [lab.probe(), lab.probe(), lab.probe(src="net", dst=lab.address(2), port=8080),
                  lab.probe(src="net", dst=lab.address(2), port=7)]
        for p in probes:
            assert p.wait_rounds(2, 5.0)
        report = json.loads(lab.connpin("status", "--json").stdout)
        pinned = {u["uplink"]: u["connections"] for u in report["uplinks"]}
        assert pinned == {"isp1": 2, "isp2": 2}
        assert all(u["bytes"] > 0 for u in report["uplinks"]), "accounting is on"
        assert "pinned" in lab.connpin("status").stdout.splitlines()[0]
        m = marks(lab)
        assert len(ct_list(lab, m["isp1"], 0xFF000000)) == 2
        groups = json.loads(lab.connpin("connections", "--json").stdout)["uplinks"]
        by = {g["uplink"]: g["connections"] for g in groups}
        assert [c["direction"] for c in by["isp2"]] == ["in", "in"], "forwarded, to the router"
        assert sorted(str(c["nat"]) for c in by["isp2"]) == ["10.77.0.2", "None"], \
            "a port forward shows the inside host"
        assert {c["direction"] for c in by["isp1"]} == {"out"}
        assert {c["nat"] for c in by["isp1"]} == {lab.address(1)}
        assert all(c["state"] == "ESTABLISHED" for c in by["isp1"])
        assert all(c["age"] is not None and c["bytes"] > 0 for c in by["isp1"])
        text = lab.connpin("connections", "ppp1").stdout
        assert text.startswith("isp2 (ppp1, up") and "2 connections" in text
        bad = lab.connpin("connections", "nope", check=False)
        assert bad.returncode == 2 and "nope" in bad.stderr


def test_flush_removes_exactly_that_uplinks_entries_whatever_the_other_bits() -> None:
    with lab_with() as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        m = marks(lab)
        for n, mark in enumerate((m["isp1"], m["isp1"] | 0x1, m["isp2"], m["isp2"] | 0x00800001,
                                  m["isp2"] | 0x1, 0x1, 0x0, 0x00800000, m["isp1"] | m["isp2"]),
                                 1):
            ct_insert(lab, n, mark)
        before = ct_entries(lab)
        isp2 = ct_entries(lab, m["isp2"], 0xFF000000)
        assert len(isp2) == 3
        dry = lab.connpin("flush", "isp2", "--dry-run").stdout
        assert "would flush 3 of 3" in dry and ct_entries(lab) == before
        out = lab.connpin("flush", "isp2").stdout
        assert "flushed 3 of 3" in out
        after = ct_entries(lab)
        assert after == sorted(set(before) - set(isp2)), "only isp2's entries went"


def test_flush_idle_only_takes_connections_idle_that_long() -> None:
    with lab_with() as lab:
        lab.uplink_up(2)
        m = marks(lab)
        for n, idle in enumerate((5, 100, 200, 10), 1):
            ct_insert(lab, n, m["isp2"], idle=idle)
        out = lab.connpin("flush", "ppp1", "--idle", "60").stdout
        assert "flushed 2 of 4" in out
        left = ct_list(lab, m["isp2"], 0xFF000000)
        assert sorted(ln.split("sport=")[1].split()[0] for ln in left) == ["20001", "20004"]


def test_failback_flush_resets_backup_connections_and_the_reconnect_takes_the_preferred() -> None:
    with lab_with(failback="flush") as lab:
        lab.uplink_up(2)
        probe = lab.probe()
        inbound = lab.probe(src="net", dst=lab.address(2), port=8080)
        assert probe.wait_rounds(2, 5.0) and lab.uplink_of(probe.peer) == 2
        assert inbound.wait_rounds(2, 5.0)
        lab.uplink_up(1)
        wait_for(lambda: probe.error is not None, 5.0, "the backup connection to be reset")
        assert isinstance(probe.error, ConnectionResetError), probe.error
        assert lab.uplink_of(lab.connect()) == 1, "the reconnect goes over the preferred uplink"
        inbound.reset_gap()
        assert inbound.wait_rounds(5, 5.0) and inbound.max_gap < STALL, \
            "a connection that arrived on the backup is never moved"


def test_failback_keep_leaves_backup_connections_alone() -> None:
    with lab_with(failback="keep") as lab:
        lab.uplink_up(2)
        probe = lab.probe()
        assert probe.wait_rounds(2, 5.0)
        lab.uplink_up(1)
        probe.reset_gap()
        assert probe.wait_rounds(5, 5.0) and probe.max_gap < STALL
        assert lab.uplink_of(probe.peer) == 2


class Talker:
    """A TCP connection from the LAN that sends a line every 0.2 s until told to stop."""

    def __init__(self, lab: Lab):
        self.sock = open_connection(lab.ns("lan"), lab.SERVER, 7, 2.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.sock.sendall(b"x\n")
                self.sock.recv(100)
            except OSError:
                return

    def quiet(self) -> None:
        self.stop.set()
        self.thread.join(2)

    def close(self) -> None:
        self.quiet()
        self.sock.close()


def test_failback_flush_idle_moves_idle_connections_now_and_busy_ones_once_idle() -> None:
    idle_after = 2
    # an uplink-level override: the returning isp1 asks for flush-idle, the default is keep
    with lab_with({"isp1": 'failback = "flush-idle"\npriority = 1'},
                  failback_idle=idle_after) as lab:
        busy = None
        try:
            lab.uplink_up(2)
            m = marks(lab)
            idle = lab.probe(interval=3600)  # one round trip, then silence
            busy = Talker(lab)
            wait_for(lambda: idle.rounds >= 1, 5.0, "the idle connection's one round trip")

            def pinned() -> int:
                return len(ct_list(lab, m["isp2"], 0xFF000000))

            wait_for(lambda: pinned() == 2, 5.0, "both connections pinned to isp2")
            # the idle one must have been idle longer than failback_idle, as the kernel counts
            wait_for(lambda: max(ct_idle(lab, m["isp2"])) > idle_after, idle_after + 30.0,
                     "the idle connection to be idle long enough")
            lab.uplink_up(1)
            assert pinned() == 1, "the idle connection is flushed at once, the busy one kept"
            t0 = time.monotonic()
            # while it talks, the sweeper has time to (wrongly) take it: the period is the claim
            holds(lambda: pinned() == 1 and busy.thread.is_alive(), idle_after + 0.5,
                  "a busy connection is never cut", interval=0.2)
            busy.quiet()
            wait_for(lambda: pinned() == 0, idle_after + 30.0, "the sweeper to flush it once idle")
            assert time.monotonic() - t0 >= idle_after
            wait_for(lambda: not lab.exec("router", ["pgrep", "-f", "connpin.*sweep"],
                                          check=False).stdout, 30.0, "the sweeper to exit")
        finally:
            if busy:
                busy.close()


@pytest.mark.parametrize("on_down", ["keep", "flush"])
def test_on_down_for_connections_the_kernel_keeps(on_down: str) -> None:
    # a port forward that arrived on isp2 (DNAT): the kernel keeps its entry when isp2 goes
    with lab_with({"isp2": f'on_down = "{on_down}"'}) as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        m = marks(lab)
        conn = open_connection(lab.ns("net"), lab.address(2), 8080, 2.0)
        try:
            conn.sendall(b"hello\n")
            conn.settimeout(2.0)
            assert conn.recv(100)
            assert len(ct_list(lab, m["isp2"], 0xFF000000)) == 1
            lab.uplink_down(2)
            left = len(ct_list(lab, m["isp2"], 0xFF000000))
            assert left == (1 if on_down == "keep" else 0)
        finally:
            conn.close()
