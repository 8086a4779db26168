"""The dhclient exit hook: a snippet dhclient-script *sources* (it must not exit, exec or change
dhclient-script's variables), passing $interface and $reason as arguments to connpin, which
validates them and maps the reason to up, down or nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from connpin import cli, hooks
from connpin.lab.hookrunner import DHCLIENT_RUN_HOOK

#: dhclient-script running the hook, then saying what it saw after the hook (still its shell).
RUN_HOOK = DHCLIENT_RUN_HOOK + """run_hook "$HOOK" 7
echo "status=$? interface=$interface reason=$reason"
"""


def _sourced(tmp_path: Path, text: str, interface: str, reason: str
             ) -> subprocess.CompletedProcess[str]:
    hook = tmp_path / "connpin"
    hook.write_text(text)
    return subprocess.run(["sh", "-c", RUN_HOOK, "dhclient-script", interface, reason],
                          env={"PATH": os.environ["PATH"], "HOOK": str(hook)},
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)


def test_the_snippet_passes_arguments_and_never_ends_dhclient_script(tmp_path) -> None:
    [hook] = hooks.DHCLIENT
    assert hook.path == "etc/dhcp/dhclient-exit-hooks.d/connpin" and hook.sourced
    # connpin replaced by a probe printing its arguments, one per line, then failing
    text = hooks.script(hook, None).replace(
        hooks.command(None), "/bin/sh -c 'printf \"<%s>\\n\" \"$@\"; exit 3' sh")
    hostile = "eth0$(touch pwned);`touch pwned2` \"x"
    p = _sourced(tmp_path, text, hostile, "BOUND")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:4] == ["<dhclient>", "<-->", f"<{hostile}>", "<BOUND>"]
    # dhclient-script goes on, with its own exit status and variables untouched
    assert lines[4] == f"status=7 interface={hostile} reason=BOUND"
    assert not any(tmp_path.glob("pwned*"))


@pytest.mark.parametrize(("reason", "action"), [
    ("BOUND", "up"), ("RENEW", "up"), ("REBIND", "up"), ("REBOOT", "up"), ("TIMEOUT", "up"),
    ("BOUND6", "up"), ("EXPIRE6", "up"), ("EXPIRE", "down"), ("FAIL", "down"),
    ("RELEASE", "down"), ("STOP", "down"), ("PREINIT", None), ("ARPCHECK", None),
    ("MEDIUM", None), ("bound", None), ("", None)])
def test_reasons(reason: str, action: str | None) -> None:
    assert hooks.dhclient_action(reason) == action


@pytest.fixture
def cfg(tmp_path) -> str:
    path = tmp_path / "connpin.toml"
    path.write_text('[[uplink]]\nname = "a"\ninterface = "eth1"\n')
    return str(path)


def test_cli_refuses_hostile_input_in_one_line(capsys, cfg) -> None:
    assert cli.main(["-c", cfg, "dhclient", "--", "eth0;reboot", "BOUND"]) == 2
    assert cli.main(["-c", cfg, "dhclient", "--", "eth1", "BOUND;reboot"]) == 2
    assert cli.main(["-c", cfg, "dhclient", "--", "-eth1", "BOUND"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["connpin dhclient: 'eth0;reboot' is not a valid interface name",
                   "connpin dhclient: 'BOUND;reboot' is not a dhclient reason",
                   "connpin dhclient: '-eth1' is not a valid interface name"]


def test_cli_quiet_for_reasons_that_need_nothing(capsys, cfg) -> None:
    assert cli.main(["-c", cfg, "dhclient", "eth1", "PREINIT"]) == 0
    assert cli.main(["-c", cfg, "dhclient", "eth9", "BOUND"]) == 0  # not an uplink
    out, err = capsys.readouterr()
    assert out == f"connpin up: eth9 is not an uplink in {cfg}; nothing to do\n" and err == ""


def test_install_and_remove(capsys, cfg, tmp_path) -> None:
    root = tmp_path / "root"
    assert cli.main(["-c", cfg, "hooks", "install", "--dhclient", "--root", str(root)]) == 0
    path = root / "etc/dhcp/dhclient-exit-hooks.d/connpin"
    text = path.read_text()
    assert "\nexit" not in text and "\n( exec env -i " in text
    assert text.rstrip().endswith('dhclient -- "$interface" "$reason" ) || :')
    assert cli.main(["hooks", "remove", "--dhclient", "--root", str(root)]) == 0
    assert not path.exists()
