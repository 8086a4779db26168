"""`make deb`'s builder: the package unpacks into a throwaway root (dpkg -x) where the installed
/usr/sbin/connpin runs, and carries the unit, the inert hooks, man pages and completion."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ["etc/ppp/ip-up.d/connpin", "etc/ppp/ip-down.d/connpin",
         "etc/NetworkManager/dispatcher.d/50-connpin",
         "etc/networkd-dispatcher/routable.d/50-connpin",
         "etc/network/if-up.d/connpin", "etc/network/if-post-down.d/connpin",
         "etc/dhcp/dhclient-exit-hooks.d/connpin"]


@pytest.fixture(scope="module")
def deb(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb missing (make deb installs it)")
    out = tmp_path_factory.mktemp("deb")
    subprocess.run(["sh", "packaging/deb/build.sh", str(dist), str(out)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PY": sys.executable}, timeout=600)
    [deb] = out.glob("connpin_*_all.deb")
    return deb


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=120)
    return root


def test_installed_connpin_runs(root: Path) -> None:
    out = subprocess.run([str(root / "usr/sbin/connpin"), "--help"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("usage: connpin")
    plan = subprocess.run([str(root / "usr/sbin/connpin"), "plan", "-c",
                           str(root / "usr/share/doc/connpin/examples/pppoe-multi.toml")],
                          check=True, capture_output=True, text=True, timeout=60).stdout
    assert "nft table inet connpin" in plan


def test_package_files(root: Path, deb: Path) -> None:
    for path in ["lib/systemd/system/connpin.service", "usr/share/man/man8/connpin.8.gz",
                 "usr/share/man/man5/connpin.toml.5.gz",
                 "usr/share/bash-completion/completions/connpin",
                 "usr/share/zsh/vendor-completions/_connpin", "usr/share/doc/connpin/copyright",
                 *HOOKS]:
        assert (root / path).is_file(), path
    unit = (root / "lib/systemd/system/connpin.service").read_text()
    assert "ExecStart=/usr/sbin/connpin watch\n" in unit
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], check=True,
                               capture_output=True, text=True, timeout=60).stdout.split()
    assert {"/" + h for h in HOOKS} <= set(conffiles)
    if shutil.which("man"):
        page = subprocess.run(["man", "-l", str(root / "usr/share/man/man8/connpin.8.gz")],
                              check=True, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "MANPAGER": "cat", "COLUMNS": "100"}).stdout
        assert "connpin flush" in page


def test_hooks_are_inert_until_configured(root: Path) -> None:
    """Without /etc/connpin/connpin.toml (never there in a test: the hooks name the real path,
    and the test refuses to run if the host has one) every hook exits 0 and runs nothing."""
    if Path("/etc/connpin/connpin.toml").exists():
        pytest.skip("this machine has /etc/connpin/connpin.toml")
    env = {"PATH": "/nonexistent", "IFACE": "eth9", "PPP_IFACE": "ppp9"}
    for hook in HOOKS:
        done = subprocess.run(["/bin/sh", str(root / hook), "eth9", "up"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stderr) == (0, ""), hook
    # dhclient-script sources its exit hooks: an `exit` there would end dhclient-script
    code = [ln for ln in (root / "etc/dhcp/dhclient-exit-hooks.d/connpin").read_text()
            .splitlines() if not ln.startswith("#")]
    assert code and not any("exit" in ln for ln in code), code


def test_unit_verifies_and_is_hardened(root: Path, tmp_path: Path) -> None:
    """systemd-analyze accepts the shipped unit (ExecStart pointed at the unpacked connpin, since
    verify checks the command exists) and rates its exposure below 5 ("OK" or better)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    text = (root / "lib/systemd/system/connpin.service").read_text()
    unit = tmp_path / "connpin.service"
    unit.write_text(text.replace("ExecStart=/usr/sbin/connpin",
                                 f"ExecStart={root}/usr/sbin/connpin"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=120)
    [level] = [line for line in done.stdout.splitlines() if "Overall exposure level" in line]
    assert float(level.split(":")[1].split()[0]) < 5.0, level
