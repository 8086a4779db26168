"""Hooks leave a trace: pppd runs them with stdio on /dev/null, so what a hook command says goes
to syslog too. The real hook script runs in a private mount namespace whose /dev holds the
usual device nodes and a /dev/log bound to a datagram socket this test reads (the host's /dev
is never touched). Where systemd runs, journald reads the daemon's priorities. And the dhclient
exit hook, sourced as dhclient-script does, pins and unpins an Ethernet uplink of the lab."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
from helpers import KERNEL

from connpin import hooks
from connpin.lab import Lab
from connpin.lab.hookrunner import DHCLIENT_RUN_HOOK

pytestmark = KERNEL

_PRIVATE_DEV = """set -e
d=$1; shift
mount -t tmpfs -o mode=755 connpin-test "$d"
for n in null zero full random urandom; do touch "$d/$n"; mount --bind "/dev/$n" "$d/$n"; done
ln -s /proc/self/fd "$d/fd"
touch "$d/log"; mount --bind "$d.sock" "$d/log"
mount --move "$d" /dev
exec "$@" </dev/null >/dev/null 2>/dev/null
"""


class Syslog:
    """A datagram socket standing in for /dev/log."""

    def __init__(self, directory: Path) -> None:
        self.dev = directory / "dev"
        self.dev.mkdir()
        self.path = str(self.dev) + ".sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def run(self, argv: list[str], env: Mapping[str, str]) -> int:
        """argv with stdio on /dev/null (as pppd runs hooks) and this socket as /dev/log."""
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            _PRIVATE_DEV, "sh", str(self.dev), *argv], env=dict(env),
                           capture_output=True, text=True, timeout=60)
        assert not p.stderr, p.stderr
        return p.returncode

    def lines(self, timeout: float = 5.0) -> list[str]:
        """What arrived; waits up to `timeout` for the first datagram."""
        out = []
        self.sock.settimeout(timeout)
        try:
            while True:
                out.append(self.sock.recv(65536).decode().rstrip("\0"))
                self.sock.settimeout(0.2)
        except (TimeoutError, BlockingIOError):
            pass
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def syslog(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a private mount namespace")
    s = Syslog(tmp_path)
    yield s
    s.close()


def _hook(tmp_path: Path, hook: hooks.Hook) -> str:
    cfg = tmp_path / "connpin.toml"
    cfg.write_text('[[uplink]]\nname = "isp1"\ninterface = "ppp0"\n')
    path = tmp_path / "hook"
    path.write_text(hooks.script(hook, str(cfg)))
    path.chmod(0o755)
    return str(path)


def test_a_failing_ppp_hook_is_seen_in_syslog(syslog, tmp_path) -> None:
    hook = _hook(tmp_path, hooks.PPP[0])
    hostile = "ppp0;touch pwned"
    code = syslog.run([hook, hostile], {"PATH": os.environ["PATH"], "PPP_IFACE": hostile})
    assert code == 2
    lines = syslog.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("<27>connpin-hook[")  # facility daemon (3), priority err (3)
    assert lines[0].endswith(f"]: connpin up: {hostile!r} is not a valid interface name")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_no_syslog_socket_the_hook_still_runs(tmp_path) -> None:
    hook = _hook(tmp_path, hooks.PPP[1])
    p = subprocess.run([hook], env={"PATH": os.environ["PATH"], "PPP_IFACE": "eth9"},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "not an uplink" in p.stdout, p.stderr


def test_journald_reads_the_daemons_priorities(tmp_path) -> None:
    if not os.path.isdir("/run/systemd/system") or not shutil.which("systemd-run"):
        pytest.skip("systemd is not the init system here (no /run/systemd/system): "
                    "journald cannot be asked; the prefixes are unit-tested (tests/unit/"
                    "test_logs.py)")
    unit = f"connpin-logtest-{uuid.uuid4().hex[:8]}"
    code = ("import logging; from connpin import logs; logs.setup('connpin watch'); "
            "log = logging.getLogger('connpin.watch'); "
            f"log.warning('{unit} warning'); log.error('{unit} error'); log.info('{unit} info')")
    subprocess.run(["systemd-run", "--quiet", "--wait", f"--unit={unit}",
                    "-p", "StandardError=journal", sys.executable, "-c", code], check=True,
                   timeout=60)
    want = {"warning": "4", "error": "3", "info": "6"}
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["journalctl", "-o", "json", "--no-pager", "-u", unit],
                             capture_output=True, text=True, timeout=30).stdout
        seen = {}
        for line in out.splitlines():
            entry = json.loads(line)
            msg = entry.get("MESSAGE")
            if isinstance(msg, str) and msg.startswith(unit):
                seen[msg.split()[-1]] = entry.get("PRIORITY")
        if seen == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == want


DHCLIENT_SCRIPT = DHCLIENT_RUN_HOOK + 'run_hook "$HOOK" 0\n'


def test_dhclient_hook_refuses_a_hostile_interface_and_says_so_in_syslog(syslog, tmp_path
                                                                          ) -> None:
    hook = _hook(tmp_path, hooks.DHCLIENT[0])
    hostile = "eth0$(touch pwned)"
    code = syslog.run(["sh", "-c", DHCLIENT_SCRIPT, "dhclient-script", hostile, "BOUND"],
                      {"PATH": os.environ["PATH"], "HOOK": hook})
    assert code == 0  # dhclient-script's own status: the hook never ends it
    lines = syslog.lines()
    assert len(lines) == 1 and lines[0].startswith("<27>connpin-hook["), lines
    assert lines[0].endswith(f"]: connpin dhclient: {hostile!r} is not a valid interface name")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_dhclient_hook_pins_and_unpins_an_ethernet_uplink() -> None:
    with Lab(uplinks=("ppp", "eth")) as lab:
        lab.write_config(lab.default_config())
        lab.connpin("hooks", "install", "--dhclient", "--root", str(lab.hooks_root))
        hook = str(lab.hooks_root / hooks.DHCLIENT[0].path)

        def dhclient(reason: str) -> None:
            lab.exec("router", ["sh", "-c", DHCLIENT_SCRIPT, "dhclient-script", "wan2", reason],
                     env={"HOOK": hook})

        def wan2() -> dict:
            p = lab.connpin("status", "--json", check=False)
            report = json.loads(p.stdout)
            assert p.returncode == 0, p.stdout  # the kernel matches the plan
            return next(u for u in report["uplinks"] if u["interface"] == "wan2")

        lab.uplink_up(2)  # a lease: address and default route (no NetworkManager hook here)
        dhclient("PREINIT")  # nothing happens: nothing installed yet
        assert lab.connpin("status", check=False).returncode == 3
        dhclient("BOUND")
        st = wan2()
        assert st["up"] and st["rule_in_place"] and st["route_in_place"]
        assert lab.uplink_of(lab.connect("router", device="wan2")) == 2
        lab.uplink_down(2)  # the lease released: address and route gone
        dhclient("RELEASE")
        st = wan2()
        assert not st["up"] and st["rule_in_place"] and st["route_in_place"]  # none left
        assert f"table {st['table']}" not in lab.exec("router", ["ip", "route", "show",
                                                                 "table", "all"]).stdout
