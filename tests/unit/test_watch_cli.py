"""`connpin watch` without the kernel: its systemd unit, sd_notify, and the CLI contract.
The daemon's behaviour is proven on the real kernel in tests/kernel/test_watch.py."""

import os
import socket
from pathlib import Path

import pytest
from unit_helpers import run

from connpin import hooks, watch

ROOT = Path(__file__).parent.parent.parent


def test_hooks_install_systemd_writes_the_unit_and_says_how_to_start_it(capsys, tmp_path) -> None:
    cfg = tmp_path / "connpin.toml"
    cfg.write_text('[[uplink]]\nname = "a"\ninterface = "ppp0"\n')
    code, out, _ = run(capsys, "-c", str(cfg), "hooks", "install", "--systemd",
                       "--root", str(tmp_path))
    unit = tmp_path / "etc/systemd/system/connpin.service"
    assert code == 0 and f"installed {unit}" in out
    assert hooks.SYSTEMD_START in out  # printed for the user, never run
    text = unit.read_text()
    assert text.startswith(hooks.MARK)
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "\nWatchdogSec=30\n" in text  # the loop sends WATCHDOG=1 (connpin.watch.systemd)
    assert f"-I -m connpin -c {cfg} watch\n" in text
    assert unit.stat().st_mode & 0o777 == 0o644
    code, out, _ = run(capsys, "hooks", "remove", "--systemd", "--root", str(tmp_path))
    assert code == 0 and f"removed {unit}" in out and not unit.exists()


def test_hooks_remove_systemd_keeps_a_unit_connpin_did_not_write(capsys, tmp_path) -> None:
    unit = tmp_path / "etc/systemd/system/connpin.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/opt/mine\n")
    code, out, _ = run(capsys, "hooks", "remove", "--systemd", "--root", str(tmp_path))
    assert code == 0 and out == "" and unit.exists()


def test_the_shipped_unit_is_the_generated_one() -> None:
    shipped = (ROOT / "contrib/systemd/connpin.service").read_text()
    assert shipped == hooks.unit(None, exe="/usr/local/bin/connpin", header=hooks.CONTRIB_HEADER)
    assert hooks.MARK not in shipped  # a copied file is the admin's, not removed by connpin


def test_notify_sends_one_datagram(tmp_path, monkeypatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        watch.notify("READY=1")
        assert s.recv(100) == b"READY=1"


def test_notify_abstract_socket_and_unset(monkeypatch) -> None:
    name = f"connpin-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        watch.notify("STOPPING=1")
        assert s.recv(100) == b"STOPPING=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    watch.notify("READY=1")  # no socket: nothing happens


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_watch_resync_must_be_positive(capsys, tmp_path, value) -> None:
    cfg = tmp_path / "connpin.toml"
    cfg.write_text('[[uplink]]\nname = "a"\ninterface = "ppp0"\n')
    code, _, err = run(capsys, "-c", str(cfg), "watch", "--resync", value)
    assert code == 2 and "positive number of seconds" in err


def test_watch_bad_config_exits_2_before_anything(capsys, tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[uplink]]\nname = "a"\n')
    code, out, err = run(capsys, "-c", str(cfg), "watch")
    assert code == 2 and out == "" and err.count("\n") == 1 and "interface: is required" in err
