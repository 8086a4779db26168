"""kernel.state without the kernel: the lock's timeout names the holder, a damaged state file is
kept aside and what could be read survives, sysctl originals are on disk before the change."""

from __future__ import annotations

import fcntl
import json
import os
import time

import pytest

from connpin.kernel import state, tools


@pytest.fixture(autouse=True)
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path))
    return tmp_path


GOOD = {"sysctls": {"conf/ppp0/rp_filter": 1, "conf/all/rp_filter": 2},
        "slice": {"rules": [10000, 11024], "tables": [1000, 1256], "nft_table": "connpin",
                  "backend": "nftables"},
        "up": ["ppp0"], "nft": {"ruleset": "ab", "listing": "cd", "gen": 3, "table": "connpin",
                                "text": "table inet connpin {}"}}


def _write(text: str) -> str:
    os.makedirs(state.directory(), exist_ok=True)
    path = os.path.join(state.directory(), "state.json")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_round_trip_and_empty_state_leaves_no_file() -> None:
    state.save(GOOD)
    assert state.load() == GOOD
    state.save({})
    assert not os.path.exists(os.path.join(state.directory(), "state.json"))
    assert state.load() == {}


@pytest.mark.parametrize("text", ["{", "[1, 2]", "null", "[" * 100000, '"x"'])
def test_invalid_json_is_kept_aside_with_a_warning(text, capsys) -> None:
    path = _write(text)
    assert state.load() == {}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and "lost: everything" in err
    copies = [n for n in os.listdir(state.directory()) if n.startswith("state.json.corrupt-")]
    assert len(copies) == 1
    with open(os.path.join(state.directory(), copies[0])) as f:
        assert f.read() == text
    assert not os.path.exists(path)
    assert state.load() == {} and capsys.readouterr().err == ""  # said once


def test_wrong_shape_keeps_what_is_valid(capsys) -> None:
    bad = dict(GOOD, sysctls={"conf/ppp0/rp_filter": 1, "../../../../etc/passwd": 1,
                              "conf/all/rp_filter": "2"}, slice={"rules": "x"}, up=[1])
    _write(json.dumps(bad))
    got = state.load()
    assert got == {"sysctls": {"conf/ppp0/rp_filter": 1}, "nft": GOOD["nft"]}
    err = capsys.readouterr().err
    assert "2 sysctl original(s)" in err and "slice" in err and "uplinks were up" in err
    assert state.load() == got  # written back: the next run is clean
    assert capsys.readouterr().err == ""


def test_sysctl_original_is_on_disk_before_the_change() -> None:
    st: dict = {"up": ["ppp0"]}
    state.remember_sysctl(st, "conf/ppp0/rp_filter", 1)
    assert state.load()["sysctls"] == {"conf/ppp0/rp_filter": 1}
    state.remember_sysctl(st, "conf/ppp0/rp_filter", 2)  # connpin's own value: not an original
    assert state.load()["sysctls"] == {"conf/ppp0/rp_filter": 1}


def test_lock_times_out_naming_the_holder() -> None:
    with state.locked():
        path = os.path.join(state.directory(), "lock")
        with open(path) as f:
            assert f.read().strip() == str(os.getpid())
        fd = os.open(path, os.O_RDWR)  # a second holder (flock is per open file)
        try:
            start = time.monotonic()
            with pytest.raises(state.LockTimeout, match=f"process {os.getpid()} has held"), \
                    state.locked(timeout=0.2):
                pass
            assert 0.2 <= time.monotonic() - start < 2
        finally:
            os.close(fd)
    with state.locked(timeout=0.2):  # released: taken at once
        pass


def test_lock_waits_for_a_holder_that_lets_go() -> None:
    os.makedirs(state.directory(), exist_ok=True)
    fd = os.open(os.path.join(state.directory(), "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.1)
        os._exit(0)
    os.close(fd)  # the child still holds it until it exits
    start = time.monotonic()
    with state.locked(timeout=5):
        assert time.monotonic() - start >= 0.05
    os.waitpid(pid, 0)


def test_tool_timeout_names_the_tool(monkeypatch) -> None:
    monkeypatch.setenv("CONNPIN_TOOL_TIMEOUT", "0.2")
    with pytest.raises(tools.ToolFailure, match=r"sleep did not finish within 0.2 s"):
        tools.run(["sleep", "5"])
    with pytest.raises(tools.ToolFailure, match="nosuchtool-x is not installed"):
        tools.run(["nosuchtool-x"])
    assert tools.run(["true"]).returncode == 0


def test_nft_override_and_timeout(monkeypatch, tmp_path) -> None:
    from connpin.kernel import nft

    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\nsleep 5\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CONNPIN_NFT", str(fake))
    monkeypatch.setenv("CONNPIN_TOOL_TIMEOUT", "0.2")
    with pytest.raises(nft.NftFailure, match="nft did not finish within 0.2 s"):
        nft.run("flush ruleset\n")


def test_tools_refuse_input_outside_printable_ascii() -> None:
    for argv, stdin in ((["cat"], "table inet x { }\x00"), (["cat"], "\u2028"),
                        (["echo", "a\nb"], None)):
        with pytest.raises(tools.ToolFailure, match="outside printable ASCII"):
            tools.run(argv, stdin)
    assert tools.run(["cat"], "table inet x {\n\tchain c { }\n}\n").returncode == 0


def test_since_changes_only_with_the_state_and_bad_entries_are_dropped(capsys) -> None:
    from types import SimpleNamespace as U

    saved: dict = {}
    state.note_since(saved, [U(interface="ppp0", up=True, up6=False),
                             U(interface="ppp1", up=False, up6=False)], now=100.0)
    assert saved["since"] == {"ppp0": {"4": [True, 100.0], "6": [False, 100.0]},
                              "ppp1": {"4": [False, 100.0], "6": [False, 100.0]}}
    state.note_since(saved, [U(interface="ppp0", up=True, up6=True)], now=200.0)
    assert saved["since"] == {"ppp0": {"4": [True, 100.0], "6": [True, 200.0]}}  # ppp1: gone
    state.save(saved)
    assert state.load() == saved
    _write(json.dumps({"up": ["ppp0"], "since": {"ppp0": {"4": ["yes", 1]}}}))
    assert state.load() == {"up": ["ppp0"]}
    assert "when uplinks last changed state" in capsys.readouterr().err
