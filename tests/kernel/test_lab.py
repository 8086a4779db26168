"""The lab itself, on the real kernel: it builds, it is always removed, and it reproduces the bug.

No connpin here: these tests pin down the behaviour the pinning tests rely on (ISPs dropping
foreign sources, uplinks that come and go like pppd's and a DHCP client's, hooks run as pppd
would run them) and the control scenario that connpin exists to fix. And the lab as a
playground: `lab up` and `demo --keep` leave a lab whose files live until `lab down`, and every
command they suggest works as printed (nothing a minimal Debian lacks, like curl).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import KERNEL, wait_for

from connpin.kernel import netns
from connpin.lab import HookError, Lab, cleanup, down_all, read_state
from connpin.lab.cleanup import state_file
from connpin.lab.cli import suggestions
from connpin.lab.echo import connect_once

pytestmark = KERNEL


def lab_namespaces(prefix: str) -> list[str]:
    return [n for n in os.listdir(netns.NETNS_RUN_DIR) if n.startswith(prefix + "-")] \
        if os.path.isdir(netns.NETNS_RUN_DIR) else []


def assert_gone(lab: Lab) -> None:
    assert lab_namespaces(lab.prefix) == []
    assert not lab.workdir.exists()
    assert read_state(lab.prefix) is None


def link_index(lab: Lab, host: str, ifname: str) -> int:
    # `ip netns exec` mounts the namespace's own /sys
    return int(lab.exec(host, ["cat", f"/sys/class/net/{ifname}/ifindex"]).stdout)


def test_lab_builds_works_and_is_removed() -> None:
    with Lab(uplinks=("ppp", "eth")) as lab:
        assert lab.prefix.startswith("cpl-") and len(lab.prefix) == 10
        assert sorted(lab_namespaces(lab.prefix)) == sorted(
            lab.ns(h) for h in ("lan", "router", "net", "isp1", "isp2"))
        assert (lab.iface(1), lab.iface(2)) == ("ppp0", "wan2")
        assert lab.hooks_root.is_dir() and lab.config_path.parent == lab.workdir
        assert read_state(lab.prefix)["namespaces"]["router"] == lab.ns("router")
        # nothing is connected yet: the router reaches its LAN, not the internet
        assert lab.connect("lan", "10.77.0.1", 7) == "10.77.0.2"
        assert lab.connect("lan", timeout=0.3) is None

        lab.uplink_up(2)
        lab.uplink_up(1)
        assert lab.uplink_of(lab.connect("router")) == 1, "the lower metric wins"
        assert lab.connect("router", device="wan2") == lab.address(2) == "198.51.100.34"
        routes = lab.exec("router", ["ip", "-4", "route", "show", "default"]).stdout
        assert "default dev ppp0 scope link metric 10" in routes
        assert "default via 198.51.100.33 dev wan2 proto dhcp metric 20" in routes
        # the admin's own table: a port forward (it works on the preferred uplink), no masquerade
        assert lab.connect("net", lab.address(1), 8080) == lab.SERVER
        table = lab.exec("router", ["nft", "list", "table", "inet", "lab"]).stdout
        assert "dnat ip to 10.77.0.2:8080" in table and "masquerade" not in table

        # pppd recreates its interface (new ifindex, maybe a new address) ...
        before = link_index(lab, "router", "ppp0")
        lab.uplink_down(1)
        assert lab.exec("router", ["ip", "link", "show", "ppp0"], check=False).returncode != 0
        assert lab.uplink_of(lab.connect("router")) == 2
        lab.uplink_up(1, address="100.64.9.9")
        assert link_index(lab, "router", "ppp0") != before
        assert lab.connect("router") == "100.64.9.9" and lab.uplink_of("100.64.9.9") == 1
        # ... a DHCP release keeps the interface, without address and route
        lab.uplink_down(2)
        assert "wan2" in lab.exec("router", ["ip", "-br", "link", "show", "wan2"]).stdout
        assert "198.51.100" not in lab.exec("router", ["ip", "-4", "addr", "show", "wan2"]).stdout
        assert "wan2" not in lab.exec("router", ["ip", "-4", "route"]).stdout
        assert lab.uplink_of(lab.connect("router", device="wan2", timeout=0.3)) is None
        cfg = lab.default_config(mark_mask=0x00FF0000)
        assert 'interface = "wan2"\ngateway = "auto"' in cfg and "mark_mask = 0x00ff0000" in cfg
    assert_gone(lab)


def test_setup_failing_halfway_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Lab] = []
    real = Lab._build_isp

    def boom(self: Lab, k: int) -> None:
        made.append(self)
        if k == 2:
            assert lab_namespaces(self.prefix), "namespaces exist when the failure hits"
            raise RuntimeError("injected failure")
        real(self, k)

    monkeypatch.setattr(Lab, "_build_isp", boom)
    with pytest.raises(RuntimeError, match="injected"), Lab() as lab:
        pytest.fail(f"unreachable {lab}")
    assert made
    assert_gone(made[0])
    assert not cleanup.is_registered(made[0])


def test_hooks_run_like_pppd_and_networkmanager() -> None:
    with Lab(uplinks=("ppp", "eth")) as lab:
        log = lab.workdir / "hooks.log"
        record = (f'#!/bin/sh\nip -br link show "$1" >/dev/null 2>&1 && e=exists || e=missing\n'
                  f'echo "$(basename "$0") $* | $PPP_IFACE $PPP_LOCAL $PPP_REMOTE '
                  f'$DEVICE_IFACE $e" >> {log}\n')
        for d in ("etc/ppp/ip-up.d", "etc/ppp/ip-down.d", "etc/NetworkManager/dispatcher.d"):
            for name in ("20-b", "10-a"):
                path = lab.hooks_root / d / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(record)
                path.chmod(0o755)
        lab.uplink_up(1)
        lab.uplink_down(1)
        lab.uplink_up(2)
        lab.uplink_down(2)
        lines = log.read_text().splitlines()
        ppp = "ppp0 /dev/pts/lab 115200 100.64.1.2 100.64.1.1  | ppp0 100.64.1.2 100.64.1.1  exists"
        assert lines == [
            f"10-a {ppp}", f"20-b {ppp}",  # ip-up.d, in order, after the interface exists
            f"10-a {ppp}", f"20-b {ppp}",  # ip-down.d, before it is deleted
            "10-a wan2 up |    wan2 exists",
            "20-b wan2 up |    wan2 exists",
            "10-a wan2 down |    wan2 exists",
            "20-b wan2 down |    wan2 exists",
        ]
        bad = lab.hooks_root / "etc/ppp/ip-up.d/30-fail"
        bad.write_text("#!/bin/sh\necho 'cannot pin ppp0' >&2\nexit 3\n")
        bad.chmod(0o755)
        with pytest.raises(HookError, match="cannot pin ppp0"):
            lab.uplink_up(1)
    assert_gone(lab)


def test_isp_drops_packets_with_another_isps_source() -> None:
    """Strict reverse-path filtering at ISP 1: the source of ISP 2's customer is refused."""
    with Lab() as lab:
        lab.uplink_up(1)
        lab.uplink_up(2)
        rx = netns.socket_in(lab.ns("net"), socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((lab.SERVER, 9999))
        rx.settimeout(10.0)  # a deadline: the datagram normally arrives at once

        def send_via_ppp0(source: str, payload: bytes) -> None:
            with netns.socket_in(lab.ns("router"), socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"ppp0")
                tx.bind((source, 0))
                tx.sendto(payload, (lab.SERVER, 9999))

        def rp_drops() -> int:
            return lab.netstat("isp1").get("TcpExt.IPReversePathFilter", 0)

        with rx:
            dropped = rp_drops()
            send_via_ppp0(lab.address(2), b"foreign")
            wait_for(lambda: rp_drops() != dropped, 10.0, "ISP 1 to refuse ISP 2's source",
                     interval=0.01)
            assert rp_drops() == dropped + 1, "ISP 1 refused ISP 2's source"
            send_via_ppp0(lab.address(1), b"own")
            data, (src, _) = rx.recvfrom(100)
            assert (data, src) == (b"own", lab.address(1)), "only the own source got through"


def test_control_without_pinning_the_old_connection_dies() -> None:
    """The bug connpin fixes: plain routing + masquerade, the preferred uplink comes back."""
    with Lab(lab_masquerade=True) as lab:
        lab.uplink_up(2)
        events: list[str] = []
        probe = lab.probe(on_event=lambda e, p: events.append(e))
        assert probe.wait_rounds(3, 3.0) and lab.uplink_of(probe.peer) == 2
        assert probe.healthy()
        lab.uplink_up(1)
        assert not probe.wait_rounds(2, 1.0), "the old connection should not keep flowing"
        wait_for(lambda: not probe.healthy(0.5), 10.0, "the dead connection to show as unhealthy",
                 interval=0.02)
        # The kernel kills a masqueraded conntrack entry whose output interface changed; the
        # retransmission is re-NATed to ISP 1's address and the server answers with a reset.
        # (With SNAT, or without loose TCP pickup, it would hang instead: dead either way.)
        assert probe.error is not None or probe.max_gap >= 0.9, events
        assert lab.uplink_of(lab.connect()) == 1, "new connections take the preferred ISP"
        probe.close()
    assert_gone(lab)


def test_sigterm_removes_the_lab(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from connpin.lab import Lab\n"
        "with Lab() as lab:\n"
        "    lab.uplink_up(1)\n"
        "    print(lab.prefix, flush=True)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        prefix = proc.stdout.readline().strip()
        assert prefix.startswith("cpl-") and lab_namespaces(prefix)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lab_namespaces(prefix) == []
    assert read_state(prefix) is None


def test_kept_lab_serves_until_down_all() -> None:
    lab = Lab(uplinks=("eth",))
    lab.build()
    try:
        lab.uplink_up(1)
        state = lab.keep()
        assert lab_namespaces(lab.prefix) and state["server_pid"]
        assert read_state(lab.prefix)["up"] == [1]
        # its servers moved to a background process: wait for them to listen
        deadline, seen = time.monotonic() + 5, None
        while seen is None and time.monotonic() < deadline:
            seen = connect_once(lab.ns("router"), lab.SERVER, 7, 0.5)
            if seen is None:
                time.sleep(0.05)
        assert seen == lab.address(1)
        assert connect_once(lab.ns("lan"), "10.77.0.1", 7) == "10.77.0.2"
    finally:
        removed = down_all(lab.prefix)
    assert sorted(removed) == sorted(lab.ns(h) for h in lab.hosts)
    assert_gone(lab)
    assert not os.path.exists(f"/proc/{state['server_pid']}"), "the server process ended"


TIMEOUT = 120


def _run(words: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    assert words[0] == "connpin", words
    env = dict(os.environ)
    env.pop("CONNPIN_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "connpin", *words[1:]], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env, **kw)  # type: ignore[call-overload]


def _leftovers(prefix: str) -> list[str]:
    found = [n for n in os.listdir("/run/netns") if n.startswith(prefix)] \
        if os.path.isdir("/run/netns") else []
    if (Path(tempfile.gettempdir()) / f"{prefix}-work").exists():
        found.append("work directory")
    if state_file(prefix).exists():
        found.append("state file")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if prefix.encode() in cmd:
            found.append(f"process {pid}: {b' '.join(cmd).decode(errors='replace')}")
    return found


def _try_all(commands: list[str], prefix: str) -> None:
    """Run each suggested command as printed (the last one: `lab down`), then look for
    leftovers."""
    assert not any("curl" in c for c in commands)
    for line in commands:
        words = shlex.split(line, comments=True)
        # top reads "q" from a pipe (it quits on q, on a terminal or not)
        p = _run(words, input="q\n" if "top" in words else None)
        assert p.returncode == 0, f"{line}\nexit {p.returncode}\n{p.stdout}{p.stderr}"
        if "status" in words:
            assert "kernel matches the plan" in p.stdout
        if "connect" in words:
            assert re.search(r"the server saw 100\.64\.\d+\.2 \(isp\d\)", p.stdout), p.stdout
        if "top" in words:
            assert re.search(r"^isp1\s+ppp0\s+up\s", p.stdout, re.M), p.stdout
    assert shlex.split(commands[-1], comments=True) == ["connpin", "lab", "down", prefix]
    assert _leftovers(prefix) == []


def test_lab_up_suggestions_all_work_and_down_leaves_nothing() -> None:
    up = _run(["connpin", "lab", "up"])
    m = re.match(r"lab (cpl-[0-9a-f]{6}) is up: .*; config (\S+)\n", up.stdout)
    assert up.returncode == 0 and m, up.stdout + up.stderr
    prefix, config = m.group(1), m.group(2)
    try:
        assert Path(config).is_file(), "the lab's config must outlive `lab up`"
        commands = [ln.strip() for ln in up.stdout.splitlines()[1:]]
        assert commands == suggestions(prefix)
        _try_all(commands, prefix)
    finally:
        down_all(prefix)



def test_demo_end_to_end() -> None:
    """`connpin lab demo --keep`: exit 0, connpin's column all pass, the bug shown; the commands
    it suggests for the kept lab work, the last (`lab down`) leaves nothing."""
    res = _run(["connpin", "lab", "demo", "--keep"])
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    rows = [line for line in out.splitlines() if line[:2] in {f"{i}." for i in range(1, 6)}]
    assert len(rows) == 5, out
    for row in rows:
        assert row.split("  ")[-1].strip().startswith("pass"), row
    assert "FAIL" in rows[2] and "FAIL" in rows[3], "without connpin, scenarios 3 and 4 fail"
    prefixes = {w.rstrip(":") for line in out.splitlines() for w in line.split()
                if re.fullmatch(r"cpl-[0-9a-f]{6}:?", w)}
    assert len(prefixes) == 2, out
    m = re.search(r"The lab (cpl-[0-9a-f]{6}) is still running .*\n((  .*\n)+)", out)
    assert m, out
    try:
        _try_all([ln.strip() for ln in m.group(2).splitlines()], m.group(1))
    finally:
        down_all(m.group(1))
    for prefix in prefixes:
        assert lab_namespaces(prefix) == []
