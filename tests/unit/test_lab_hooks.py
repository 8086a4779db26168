"""How the lab calls hook scripts, as pppd and NetworkManager do: pure parts and the runner with
a fake command runner (no namespaces)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from connpin.lab.commands import HOOK_PATH, CommandError, HookError, with_sbin
from connpin.lab.hookrunner import hook_call, run_hooks


def test_ppp_calls(tmp_path: Path) -> None:
    up = hook_call(tmp_path, "ppp", 1, "ppp0", "up", "100.64.1.2", "100.64.1.1")
    assert up.directory == tmp_path / "etc/ppp/ip-up.d" and up.run_parts
    assert up.args == ["ppp0", "/dev/pts/lab", "115200", "100.64.1.2", "100.64.1.1", ""]
    assert up.env["PATH"] == HOOK_PATH and up.env["PPP_IFACE"] == "ppp0"
    assert (up.env["PPP_LOCAL"], up.env["IPREMOTE"]) == ("100.64.1.2", "100.64.1.1")
    v6 = hook_call(tmp_path, "ppp", 1, "ppp0", "down", "100.64.1.2", "100.64.1.1", family=6)
    assert v6.directory == tmp_path / "etc/ppp/ipv6-down.d" and v6.run_parts
    assert v6.args == ["ppp0", "/dev/pts/lab", "115200", "fe80::2", "fe80::1", ""]


def test_networkmanager_calls(tmp_path: Path) -> None:
    up = hook_call(tmp_path, "eth", 2, "wan2", "up", "198.51.100.34", "198.51.100.33")
    assert up.directory == tmp_path / "etc/NetworkManager/dispatcher.d" and not up.run_parts
    assert up.args == ["wan2", "up"]
    assert up.env["IP4_ADDRESS_0"] == "198.51.100.34/28 198.51.100.33"
    assert up.env["CONNECTION_ID"] == "isp2" and up.env["NM_DISPATCHER_ACTION"] == "up"
    down = hook_call(tmp_path, "eth", 2, "wan2", "down", "198.51.100.34", "198.51.100.33")
    assert down.args == ["wan2", "down"] and "IP4_ADDRESS_0" not in down.env


def script(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


class Recorder:
    def __init__(self, fail: str | None = None):
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.fail = fail

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert kw["check"] is False
        self.calls.append((argv, kw["env"]))
        code = 3 if self.fail and argv[0].endswith(self.fail) else 0
        return subprocess.CompletedProcess(argv, code, "", "cannot pin" if code else "")


def test_run_parts_order_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    call = hook_call(tmp_path, "ppp", 1, "ppp0", "up", "100.64.1.2", "100.64.1.1")
    d = call.directory
    script(d / "20-b"), script(d / "10-a"), script(d / "30-off", 0o644)
    monkeypatch.setenv("CONNPIN_X", "1")
    monkeypatch.setenv("HOME", "/root")
    rec = Recorder()
    assert run_hooks(call, rec) == [str(d / "10-a"), str(d / "20-b")]
    assert [argv[0] for argv, _ in rec.calls] == [str(d / "10-a"), str(d / "20-b")]
    env = rec.calls[0][1]
    assert env["CONNPIN_X"] == "1" and "HOME" not in env and env["PATH"] == HOOK_PATH
    assert run_hooks(hook_call(tmp_path, "ppp", 1, "ppp0", "down", "a", "b"), rec) == []


def test_refusals_and_failures(tmp_path: Path) -> None:
    call = hook_call(tmp_path, "ppp", 1, "ppp0", "up", "100.64.1.2", "100.64.1.1")
    bad = script(call.directory / "connpin.sh")
    with pytest.raises(HookError, match="run-parts"):
        run_hooks(call, Recorder())
    bad.unlink()
    script(call.directory / "10-fail")
    with pytest.raises(HookError, match="exited 3:\ncannot pin"):
        run_hooks(call, Recorder(fail="10-fail"))
    nm = hook_call(tmp_path, "eth", 2, "wan2", "up", "198.51.100.34", "198.51.100.33")
    script(nm.directory / "90-open", 0o777)
    with pytest.raises(HookError, match="NetworkManager ignores"):  # also: not owned by root
        run_hooks(nm, Recorder())


def test_commands_environment_and_errors() -> None:
    env = with_sbin({"PATH": "/opt/bin:/usr/bin"})
    assert env["PATH"].split(":")[:3] == ["/opt/bin", "/usr/bin", "/usr/local/sbin"]
    assert env["PATH"].count("/usr/bin") == 1
    err = CommandError(1, ["nft", "-f", "-"], "", "Error: syntax error\n")
    assert str(err).endswith("--- stderr:\nError: syntax error")
