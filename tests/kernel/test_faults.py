"""A crash at any point loses nothing, on the real kernel: `apply` is SIGKILLed at fault points
(CONNPIN_FAULT=N: before each step, after each sysctl original is journaled, before the state
file is renamed into place) of a first apply (nftables and iptables-nft) and of a reconfiguring
apply: every 3rd or 4th point by default, 30 kills in all; CONNPIN_FAULT_STRIDE=1 visits every
point. Each time the
next `apply` converges, `status` is clean, and `remove` puts back `nft list ruleset`, ip rules,
routes (both families) and every rp_filter / src_valid_mark exactly as they were.

connpin runs in a child forked from this process (pyroute2 already imported), so a sweep of
dozens of kill points takes seconds; a child is exactly a `connpin` process (cli.main, --netns).
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
import traceback

import pytest

from connpin import cli
from connpin.lab import Lab

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

KILLED = -signal.SIGKILL
#: More kill points than any apply here has (a first apply of this lab has ~30).
MAX_POINTS = 120
#: Every how many kill points a sweep stops (each costs ~4 connpin runs, ~1 s on a busy
#: 2-core machine); CONNPIN_FAULT_STRIDE=1 visits every point of every sweep.
STRIDE = int(os.environ.get("CONNPIN_FAULT_STRIDE") or 0)


def connpin(lab: Lab, *args: str, fault: int | None = None, timeout: float = 60) -> tuple[int, str]:
    """`connpin --netns router -c CONFIG ARGS` in a forked child: (exit code or -signal, output)."""
    out = lab.workdir / "child.out"
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest, never run atexit handlers
        code = 99
        try:
            with open(out, "w") as f:
                os.dup2(f.fileno(), 1)
                os.dup2(f.fileno(), 2)
            sys.stdout = sys.stderr = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False),
                                                       write_through=True)
            if fault is None:
                os.environ.pop("CONNPIN_FAULT", None)
            else:
                os.environ["CONNPIN_FAULT"] = str(fault)
            code = cli.main(["--netns", lab.ns("router"), "-c", str(lab.config_path), *args])
        except BaseException:  # noqa: BLE001 - report, then exit without unwinding pytest
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"connpin {' '.join(args)} did not finish in {timeout} s")
        time.sleep(0.002)
    return os.waitstatus_to_exitcode(status), out.read_text()


SNAPSHOT = ("nft list ruleset; echo @rules4; ip -4 rule show; echo @rules6; ip -6 rule show; "
            "echo @routes4; ip -4 route show table all; echo @routes6; "
            "ip -6 route show table all; echo @sysctl; "
            "grep . /proc/sys/net/ipv4/conf/*/rp_filter /proc/sys/net/ipv4/conf/*/src_valid_mark")


def snapshot(lab: Lab) -> dict[str, str]:
    """The router's ruleset (nft: iptables-nft's tables included), rules, routes and sysctls,
    read in one shell (a process start per piece would dominate the sweep's time)."""
    text = lab.exec("router", ["sh", "-c", SNAPSHOT]).stdout
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    parts = re.split(r"^@(\w+)\n", "@nft\n" + text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def ok(lab: Lab, *args: str) -> str:
    code, out = connpin(lab, *args)
    assert code == 0, f"connpin {' '.join(args)} exited {code}:\n{out}"
    return out


#: Foreign iptables rules (both families), so the tables exist before connpin (iptables-restore
#: leaves a table it created behind, empty) and `remove` must leave these exactly as they were.
FOREIGN_IPT = ("*mangle\n-A PREROUTING -m mark --mark 0xca6c -j RETURN\n"
               "-A OUTPUT -p udp --dport 51820 -j RETURN\n-A POSTROUTING -o lan0 -j RETURN\n"
               "COMMIT\n*nat\n-A PREROUTING -p tcp --dport 2222 -j RETURN\n"
               "-A POSTROUTING -o lan0 -j RETURN\nCOMMIT\n")


def strict_lab(lab: Lab) -> None:
    """Strict rp_filter everywhere: every uplink gets two sysctls changed by connpin."""
    flavour = os.environ.get("CONNPIN_IPTABLES")
    if flavour:
        for tool in (flavour, flavour.replace("iptables", "ip6tables", 1)):
            lab.exec("router", [f"{tool}-restore", "--noflush"], input=FOREIGN_IPT)
    lab.set_sysctl("router", "net.ipv4.conf.all.rp_filter", 1)
    lab.set_sysctl("router", "net.ipv4.conf.default.rp_filter", 1)  # for interfaces to come
    for k in lab.ks:
        lab.uplink_up(k)


def sweep(lab: Lab, pristine: dict[str, str], first: str, second: str | None,
          stride: int) -> tuple[int, int]:
    """Kill the apply of `second` (or of `first` when None) at every `stride`th point; after
    each: apply converges, status is clean, remove restores `pristine`. Returns (points killed
    at, points the apply has)."""
    target = second or first
    stride = STRIDE or stride
    for i, n in enumerate(range(1, MAX_POINTS + 1, stride)):
        if second is not None:
            lab.write_config(first)
            ok(lab, "apply", "-q")
        lab.write_config(target)
        code, out = connpin(lab, "apply", "-q", fault=n)
        if code != KILLED:  # no point n: the apply ran to the end
            assert code == 0, out
            ok(lab, "status")
            ok(lab, "remove")
            assert snapshot(lab) == pristine
            assert n > 20, f"only {n - 1} kill points"
            return i, n - 1
        again = ok(lab, "apply")
        assert "verified" in again or "nothing to change" in again, again
        status = ok(lab, "status")
        assert "Traceback" not in status
        ok(lab, "remove")
        now = snapshot(lab)
        for key in pristine:
            assert now[key] == pristine[key], f"kill point {n}: {key} not restored"
    raise AssertionError(f"more than {MAX_POINTS} kill points")


#: CONNPIN_TEST_BACKENDS (see conftest) chooses the backends of the first-apply sweep too.
BACKENDS = [b.strip() for b in (os.environ.get("CONNPIN_TEST_BACKENDS") or
                                "nftables,iptables-nft").split(",") if b.strip()]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_kill_9_at_every_point_of_a_first_apply(backend) -> None:
    with Lab(uplinks=("ppp", "eth"), ipv6=True) as lab:
        strict_lab(lab)
        pristine = snapshot(lab)
        killed, points = sweep(lab, pristine, lab.default_config(masquerade=True), None,
                               stride=3 if backend == "nftables" else 4)
        assert killed >= 7
        print(f"{backend}: killed at {killed} of {points} points of a first apply, recovered")


@pytest.mark.parametrize("backend", ["nftables"], indirect=True)
def test_kill_9_at_every_point_of_a_reconfiguring_apply(backend) -> None:
    """From one config to another that moves connpin's whole slice (priorities, tables, nft
    table name) and changes the ruleset: the old slice must never be orphaned."""
    with Lab(uplinks=("ppp", "eth"), ipv6=True) as lab:
        strict_lab(lab)
        pristine = snapshot(lab)
        first = lab.default_config(masquerade=True)
        second = lab.default_config(masquerade=False, rule_priority=20000, table_base=2000,
                                    nft_table="pins")
        killed, points = sweep(lab, pristine, first, second, stride=4)
        assert killed >= 7
        print(f"{backend}: killed at {killed} of {points} points of a reconfiguring apply, "
              "recovered")
