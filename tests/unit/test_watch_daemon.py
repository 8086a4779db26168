"""The daemon's shell without the kernel: what it tells systemd (a datagram socket stands in for
$NOTIFY_SOCKET) and how a SIGHUP reload decides. Its behaviour on the kernel is proven in
tests/kernel/test_watch.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from connpin import model
from connpin.watch import daemon
from connpin.watch import systemd as notify

GOOD = '[[uplink]]\nname = "a"\ninterface = "ppp0"\n[[uplink]]\nname = "b"\ninterface = "ppp1"\n'


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield s


def test_watchdog_interval_is_half_of_what_systemd_asked(monkeypatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert notify.watchdog_interval() is None


def test_status_line() -> None:
    assert notify.status_line(4, 3, 0.007, 6.8) == (
        "4 uplinks, 3 up, last converge 7 ms ago (6.8 ms)")
    assert notify.status_line(1, 0, None, None) == "1 uplink, 0 up, not converged yet"
    assert notify.status_line(2, 1, 300, 5.0, "Error: Nexthop has invalid gateway") == (
        "2 uplinks, 1 up, last converge 5 min ago (5.0 ms); "
        "failing: Error: Nexthop has invalid gateway")


def test_the_loop_pings_the_watchdog_with_its_status(notify_socket, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    now = [100.0]
    w = daemon.Watcher(str(tmp_path / "c.toml"), model.loads(GOOD), clock=lambda: now[0])
    assert w.sched.watchdog == 1.0
    assert w.sched.next() == "watchdog"
    w.sched.pinged()
    w._status(ping=True)
    assert notify_socket.recv(200) == b"WATCHDOG=1\nSTATUS=2 uplinks, 0 up, not converged yet"
    w.sched.converging()
    w.sched.converged(None)
    w.counts, w.last_ms = (2, 1), 7.25
    now[0] += 1.0
    assert w.sched.next() == "watchdog"
    w._status(ping=True)
    assert notify_socket.recv(200) == (
        b"WATCHDOG=1\nSTATUS=2 uplinks, 1 up, last converge 1 s ago (7.2 ms)")


def test_notify_never_blocks_on_a_supervisor_that_does_not_read(notify_socket) -> None:
    for _ in range(2000):  # far more than a unix datagram queue holds
        notify.notify("STATUS=busy")


def reloads(tmp_path: Path, text: str, monkeypatch) -> tuple[daemon.Watcher, list[str], list[str]]:
    path = tmp_path / "connpin.toml"
    path.write_text(text)
    lines: list[str] = []
    w = daemon.Watcher(str(path), model.loads(GOOD, str(path)), log=lines.append)
    converged: list[str] = []
    monkeypatch.setattr(w, "converge", converged.append)  # the kernel side: tests/kernel
    w.reload()
    return w, lines, converged


def test_reload_refuses_a_config_without_uplinks(tmp_path, monkeypatch) -> None:
    for text in ("", "[pinning]\nsysctl = true\n"):
        w, lines, converged = reloads(tmp_path, text, monkeypatch)
        assert len(w.config.uplinks) == 2 and not converged
        assert len(lines) == 1 and "no [[uplink]]" in lines[0] and "allow_empty" in lines[0]
        assert lines[0].endswith("keeping the running config")


def test_reload_takes_an_empty_config_that_says_so(tmp_path, monkeypatch) -> None:
    w, lines, converged = reloads(tmp_path, "[pinning]\nallow_empty = true\n", monkeypatch)
    assert w.config.uplinks == () and converged == ["config reloaded"]
    assert lines == [f"config reloaded from {tmp_path / 'connpin.toml'}"]


@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000 + "]" * 5000 + "\n",  # RecursionError in tomllib
    "[[uplink]]\nname = \"a\"\n",  # a ConfigError
    "[[uplink\n",  # invalid TOML
])
def test_reload_keeps_the_running_config_on_any_load_failure(tmp_path, monkeypatch, text) -> None:
    w, lines, converged = reloads(tmp_path, text, monkeypatch)
    assert len(w.config.uplinks) == 2 and not converged
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].endswith("keeping the running config"), lines


def test_reload_survives_whatever_load_raises(tmp_path, monkeypatch) -> None:
    def boom(path: str) -> model.Config:
        raise MemoryError("out of memory\nsecond line")

    monkeypatch.setattr(model, "load", boom)
    w, lines, converged = reloads(tmp_path, GOOD, monkeypatch)
    assert lines == [f"{tmp_path / 'connpin.toml'}: cannot load (MemoryError: out of memory); "
                     "keeping the running config"]
    assert not converged


def test_errors_outside_a_converge_are_recovered_until_they_keep_coming(tmp_path) -> None:
    """Each error rebuilds the sockets and asks for a full resync; more than MAX_RECOVERIES in a
    window is what cannot be recovered: Fatal (the daemon exits 1 with that line)."""
    now = [0.0]
    lines: list[str] = []
    w = daemon.Watcher(str(tmp_path / "c.toml"), model.loads(GOOD), log=lines.append,
                       clock=lambda: now[0])
    w.sleep = lambda s: None
    opened: list[int] = []
    w._open = lambda: opened.append(1)  # type: ignore[method-assign]
    for _ in range(daemon.MAX_RECOVERIES):
        w.sched.overflowed = False
        w._recover(OSError(88, "Socket operation on non-socket"))
        assert w.sched.overflowed  # a full resync follows
        now[0] += 1
    assert len(opened) == daemon.MAX_RECOVERIES
    assert "rebuilding the netlink sockets, full resync" in lines[0]
    assert "OSError: [Errno 88] Socket operation on non-socket" in lines[0]
    with pytest.raises(daemon.Fatal, match="errors outside a converge within 60 s"):
        w._recover(OSError(88, "Socket operation on non-socket"))
    now[0] += daemon.RECOVERY_WINDOW + 1  # spaced out, they are recovered again
    w._recover(OSError(88, "Socket operation on non-socket"))
    assert len(opened) == daemon.MAX_RECOVERIES + 1
