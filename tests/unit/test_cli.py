"""CLI contract without the kernel: exit codes, one-line errors, hooks that never reach a shell."""

import os
import subprocess
import sys

import pytest
from unit_helpers import run

from connpin import cli

CONFIG = """
[[uplink]]
name = "isp-a"
interface = "ppp0"
masquerade = true
"""


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "connpin.toml"
    p.write_text(CONFIG)
    return str(p)


def test_plan_needs_no_root(capsys, cfg, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, _ = run(capsys, "-c", cfg, "plan")
    assert code == 0
    assert "table inet connpin {" in out and "ip rule add priority 10000" in out
    code, out2, _ = run(capsys, "plan", "-c", cfg)  # options after the command work too
    assert code == 0 and out2 == out


def test_plan_json(capsys, cfg) -> None:
    import json

    code, out, _ = run(capsys, "-c", cfg, "plan", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["uplinks"][0]["interface"] == "ppp0"
    assert doc["rules"][0] == "priority 10000 fwmark 0x0/0xff000000 goto 11023"


def test_config_from_environment(capsys, cfg, monkeypatch) -> None:
    monkeypatch.setenv("CONNPIN_CONFIG", cfg)
    code, out, _ = run(capsys, "plan")
    assert code == 0 and cfg in out


def test_bad_config_exits_2_with_one_line(capsys, tmp_path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[[uplink]]\nname = "a"\ninterface = "eth 0"\n')
    code, out, err = run(capsys, "-c", str(p), "apply")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"connpin: {p}: uplink[0] (a).interface: 'eth 0' is not a valid")


def test_missing_config(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "-c", str(tmp_path / "none.toml"), "plan")
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize("name", ["ppp0;reboot", "$(id)", "a b", "x" * 16, "", "../x"])
def test_bad_interface_name_is_refused(capsys, cfg, name) -> None:
    code, _, err = run(capsys, "-c", cfg, "up", name)
    assert code == 2 and "is not a valid interface name" in err


def test_unknown_interface_is_fine_for_hooks(capsys, cfg) -> None:
    code, out, _ = run(capsys, "-c", cfg, "down", "eth7")
    assert code == 0 and "eth7 is not an uplink" in out


def test_changing_commands_need_root(capsys, cfg, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv in (["apply"], ["remove"], ["status"], ["up", "ppp0"], ["plan", "--live"]):
        code, _, err = run(capsys, "-c", cfg, *argv)
        assert code == 4, argv
        assert "needs root" in err and "connpin plan" in err


def test_usage_error_exits_2(capsys) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["hooks", "install"]) == 2


def test_hooks_install_and_remove(capsys, cfg, tmp_path) -> None:
    root = tmp_path / "root"
    code, out, _ = run(capsys, "-c", cfg, "hooks", "install", "--ppp", "--networkmanager",
                       "--root", str(root))
    assert code == 0
    up = root / "etc/ppp/ip-up.d/connpin"
    assert os.access(up, os.X_OK)
    assert '"$PPP_IFACE"' in up.read_text() and cfg in up.read_text()
    assert (root / "etc/NetworkManager/dispatcher.d/50-connpin").exists()
    mine = root / "etc/ppp/ip-up.d/someone-else"
    mine.write_text("#!/bin/sh\n")
    code, out, _ = run(capsys, "hooks", "remove", "--ppp", "--networkmanager", "--root",
                       str(root))
    assert code == 0 and not up.exists() and mine.exists()


@pytest.mark.parametrize("hostile", ["ppp0; touch {f}", "$(touch {f})", "`touch {f}`",
                                     "ppp0\ntouch {f}", "-c/etc/shadow"])
def test_hook_never_passes_names_to_a_shell(capsys, cfg, tmp_path, hostile) -> None:
    root = tmp_path / "root"
    assert cli.main(["-c", cfg, "hooks", "install", "--ppp", "--root", str(root)]) == 0
    canary = tmp_path / "pwned"
    env = {"PATH": os.environ["PATH"], "PPP_IFACE": hostile.format(f=canary),
           "PYTHONPATH": str(tmp_path), "PYTHONSTARTUP": str(tmp_path / "evil.py")}
    (tmp_path / "connpin.py").write_text(f"open({str(canary)!r}, 'w')\n")  # shadowing attempt
    p = subprocess.run([str(root / "etc/ppp/ip-up.d/connpin")], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 2, p.stderr
    assert "not a valid interface name" in p.stderr
    assert not canary.exists()


def test_python_m_connpin() -> None:
    p = subprocess.run([sys.executable, "-m", "connpin", "--version"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and "connpin" in p.stdout


def test_networkd_and_networkmanager_hooks_map_actions(capsys, cfg, tmp_path) -> None:
    root = tmp_path / "root"
    assert cli.main(["-c", cfg, "hooks", "install", "--networkd", "--networkmanager",
                     "--root", str(root)]) == 0
    nd = root / "etc/networkd-dispatcher"
    assert ' up -- "$IFACE"' in (nd / "routable.d/50-connpin").read_text()
    for state in ("off.d", "no-carrier.d"):
        assert ' down -- "$IFACE"' in (nd / state / "50-connpin").read_text()
    nm = (root / "etc/NetworkManager/dispatcher.d/50-connpin").read_text()
    assert 'dhcp4-change' in nm and 'up -- "$1"' in nm and 'down -- "$1"' in nm
    # an interface that is no uplink: the hook succeeds quietly (hooks run for every interface)
    env = {"PATH": os.environ["PATH"]}
    p = subprocess.run([str(root / "etc/NetworkManager/dispatcher.d/50-connpin"), "eth9", "up"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "not an uplink" in p.stdout
    p = subprocess.run([str(root / "etc/NetworkManager/dispatcher.d/50-connpin"), "eth9",
                        "hostname"], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == ""


def test_lab_needs_root_like_the_rest(capsys, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["lab", "demo"]) == 4
    err = capsys.readouterr().err
    assert "needs root" in err and "connpin plan -c examples/" in err


def test_version_is_the_installed_packages(monkeypatch) -> None:
    import importlib.metadata

    import connpin

    assert connpin.__version__ == importlib.metadata.version("connpin")

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert connpin.version() == connpin.UNKNOWN_VERSION  # a source tree never installed


@pytest.mark.parametrize("error", [
    "LockTimeout: process 4242 has held connpin's lock /run/connpin/net-1/lock for more than "
    "30 s (stuck? see /proc/4242/cmdline); CONNPIN_LOCK_TIMEOUT sets the limit",
    "ToolFailure: nft did not finish within 30 s (killed;\n see CONNPIN_TOOL_TIMEOUT)",
])
def test_lock_and_tool_timeouts_print_their_message_on_one_line(capsys, cfg, monkeypatch,
                                                                 error) -> None:
    from connpin.kernel.state import LockTimeout
    from connpin.kernel.tools import ToolFailure

    kind, message = error.split(": ", 1)
    exc = {"LockTimeout": LockTimeout, "ToolFailure": ToolFailure}[kind](message)

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_dispatch", fail)
    code, out, err = run(capsys, "-c", cfg, "apply")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("connpin apply: "), err
    assert "failed:" not in err and kind not in err, err
    assert message.splitlines()[0] in err
