"""connpin.logs: syslog priorities for journald, plain lines elsewhere, the daemon's levels, and
what hook commands print copied to syslog (a datagram socket this test binds)."""

from __future__ import annotations

import io
import logging
import os
import socket

import pytest

from connpin import cli, logs, model
from connpin.watch import daemon


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("connpin.watch", level, __file__, 1, msg, None, None)


@pytest.mark.parametrize(("level", "prefix"), [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"),
                                               (logging.WARNING, "<4>"), (logging.ERROR, "<3>"),
                                               (logging.CRITICAL, "<2>"), (25, "<6>")])
def test_journal_prefix_is_the_syslog_priority(level: int, prefix: str) -> None:
    assert logs.JournalFormatter().format(_record(level, "isp1 ppp0: up")) == \
        prefix + "isp1 ppp0: up"


def test_journal_prefixes_every_line() -> None:
    text = logs.JournalFormatter().format(_record(logging.ERROR, "failed:\n  needs: x"))
    assert text == "<3>failed:\n<3>  needs: x"


def test_plain_lines_name_the_program_and_the_level() -> None:
    f = logs.PlainFormatter("connpin watch")
    assert f.format(_record(logging.INFO, "up")) == "connpin watch: up"
    assert f.format(_record(logging.DEBUG, "event")) == "connpin watch: event"
    assert f.format(_record(logging.WARNING, "x")) == "connpin watch: warning: x"
    assert f.format(_record(logging.ERROR, "x")) == "connpin watch: error: x"


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.journal_stream(a, env)
        assert not logs.journal_stream(b, env)  # inherited by a child with another stderr
        assert not logs.journal_stream(a, {})
        assert not logs.journal_stream(a, {"JOURNAL_STREAM": "garbage"})
        assert not logs.journal_stream(io.StringIO(), env)
        assert isinstance(logs.formatter("p", a, env), logs.JournalFormatter)
        assert isinstance(logs.formatter("p", b, env), logs.PlainFormatter)


def test_the_daemon_logs_with_levels_through_setup(tmp_path, monkeypatch) -> None:
    path = tmp_path / "err"
    with open(path, "w") as err:
        st = os.fstat(err.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        try:
            logs.setup("connpin watch", stream=err)
            w = daemon.Watcher("c.toml", model.loads('[[uplink]]\nname="a"\ninterface="ppp0"\n'))
            w.log("isp1 ppp0: up")
            w.log("converge failed: boom", daemon.ERROR)
            w.log("event: ppp0: link", daemon.DEBUG)  # not shown without --verbose
            logs.setup("connpin watch", stream=err, verbose=True)
            w.log("event: ppp0: link", daemon.DEBUG)
        finally:
            logs.restore()
    assert path.read_text() == ("<6>isp1 ppp0: up\n<3>converge failed: boom\n"
                                "<7>event: ppp0: link\n")


@pytest.fixture
def syslog(tmp_path, monkeypatch):
    path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    monkeypatch.setattr(logs, "SYSLOG", path)
    yield s
    s.close()


def _received(s: socket.socket) -> list[str]:
    out = []
    s.setblocking(False)
    try:
        while True:
            out.append(s.recv(65536).decode().rstrip("\0"))
    except BlockingIOError:
        pass
    return out


def test_syslog_handler_daemon_facility_and_ident(syslog) -> None:
    handler = logs.syslog_handler()
    assert handler is not None
    handler.emit(_record(logging.ERROR, "hook failed"))
    handler.emit(_record(logging.INFO, "up"))
    handler.close()
    assert _received(syslog) == [f"<27>connpin-hook[{os.getpid()}]: hook failed",
                                 f"<30>connpin-hook[{os.getpid()}]: up"]  # daemon = 3


def test_no_syslog_socket_no_handler(tmp_path) -> None:
    assert logs.syslog_handler(str(tmp_path / "none")) is None


def test_a_hook_command_prints_as_before_and_to_syslog(syslog, capsys, tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[uplink]]\nname = "a"\ninterface = "ppp0"\n')
    assert cli.main(["-c", str(cfg), "up", "--", "eth0;reboot"]) == 2
    assert cli.main(["-c", str(cfg), "up", "eth9"]) == 0  # no uplink: a message, exit 0
    out, err = capsys.readouterr()
    assert "'eth0;reboot' is not a valid interface name" in err and "not an uplink" in out
    got = _received(syslog)
    pid = os.getpid()
    assert got[0] == (f"<27>connpin-hook[{pid}]: connpin up: 'eth0;reboot' is not a valid "
                      "interface name")
    assert got[1].startswith(f"<30>connpin-hook[{pid}]: connpin up: eth9 is not an uplink")
    assert len(got) == 2
    import sys

    assert not isinstance(sys.stdout, logs._Tee) and not isinstance(sys.stderr, logs._Tee)
    assert cli.main(["-c", str(cfg), "plan"]) == 0  # other commands: no syslog
    assert _received(syslog) == []


def test_role_changes_keepalived_runs_go_to_syslog_too(syslog, capsys, tmp_path,
                                                        monkeypatch) -> None:
    """keepalived runs `ha promote|demote|fault` with stdio on /dev/null: their lines go to
    syslog like a hook's; what prints a config or a plan for a person does not."""
    from test_ha import HA, UPLINKS

    from connpin.ha import act

    cfg = tmp_path / "r.toml"
    cfg.write_text(UPLINKS + HA.format(topology="own"))

    def carry_out(config, role, say):  # noqa: ANN001, ANN202 - the steps, without conntrackd
        say(f"conntrackd -t: ok (3 ms) [{role}]")
        say("converge: failed: OSError: boom")
        return False

    monkeypatch.setattr(act, "carry_out", carry_out)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)  # acting needs root: not for real here
    assert cli.main(["-c", str(cfg), "ha", "demote"]) == 1
    out = capsys.readouterr().out
    assert out == ("connpin ha demote: conntrackd -t: ok (3 ms) [demote]\n"
                   "connpin ha demote: converge: failed: OSError: boom\n")
    pid = os.getpid()
    assert _received(syslog) == [f"<30>connpin-hook[{pid}]: {line}" for line in out.splitlines()]
    assert cli.main(["-c", str(cfg), "ha", "fault", "--dry-run"]) == 0
    assert cli.main(["-c", str(cfg), "ha", "conntrackd-conf"]) == 0
    assert _received(syslog) == []
    import sys

    assert not isinstance(sys.stdout, logs._Tee) and not isinstance(sys.stderr, logs._Tee)


def test_daemon_lines_carry_their_levels(tmp_path, monkeypatch, caplog) -> None:
    """A config that does not load on SIGHUP is an error, an error outside a converge a
    warning, a reload an info line (what journald shows with -p)."""
    path = tmp_path / "connpin.toml"
    path.write_text("[[uplink\n")
    w = daemon.Watcher(str(path), model.loads('[[uplink]]\nname="a"\ninterface="ppp0"\n'))
    w.sleep = lambda s: None
    w._open = lambda: None  # type: ignore[method-assign]
    monkeypatch.setattr(w, "converge", lambda why: None)
    with caplog.at_level(logging.DEBUG, logger="connpin"):
        w.reload()
        w._recover(OSError(88, "Socket operation on non-socket"))
        path.write_text('[[uplink]]\nname="a"\ninterface="ppp0"\n')
        w.reload()
    got = [(r.name, r.levelno, r.getMessage().split(" ")[-1]) for r in caplog.records]
    assert got == [("connpin.watch", logging.ERROR, "config"),
                   ("connpin.watch", logging.WARNING, "resync"),
                   ("connpin.watch", logging.INFO, str(path))]
