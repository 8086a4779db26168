"""`connpin.ha.fast`: which command lines take the fast path of `connpin ha promote` (the
commit before connpin's start-up), and that it stays cheap. The commit itself is proven on the
kernel (tests/kernel/test_ha_roles.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from connpin import model
from connpin.ha import fast


def test_default_config_is_the_models() -> None:
    assert fast.DEFAULT_CONFIG == model.DEFAULT_CONFIG


@pytest.mark.parametrize(("argv", "path"), [
    (["-c", "/etc/r1.toml", "ha", "promote"], "/etc/r1.toml"),
    (["--config", "/etc/r1.toml", "ha", "promote"], "/etc/r1.toml"),
    (["--config=/etc/r1.toml", "ha", "promote"], "/etc/r1.toml"),
    (["ha", "promote", "-c", "/etc/r1.toml", "--json"], "/etc/r1.toml"),
    (["ha", "-c", "/etc/r1.toml", "promote"], "/etc/r1.toml"),
    (["-c", "/a.toml", "ha", "promote", "-c", "/b.toml"], "/b.toml"),  # argparse: the last wins
])
def test_plain_promote_takes_the_fast_path(argv: list[str], path: str) -> None:
    assert fast.request(argv) == path


def test_default_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNPIN_CONFIG", raising=False)
    assert fast.request(["ha", "promote"]) == model.DEFAULT_CONFIG
    monkeypatch.setenv("CONNPIN_CONFIG", "/etc/env.toml")
    assert fast.request(["ha", "promote"]) == "/etc/env.toml"


@pytest.mark.parametrize("argv", [
    ["ha", "promote", "--dry-run"],
    ["--netns", "r2", "ha", "promote"],
    ["--json", "ha", "promote"],  # not where argparse takes it: a usage error, no commit
    ["ha", "demote"], ["ha", "fault"], ["ha"], ["promote"], [],
    ["ha", "promote", "extra"],
    ["-c", "ha", "promote"],
    ["-c", "--x", "ha", "promote"],
    ["ha", "promote", "-h"],
    ["--config=", "ha", "promote"],
])
def test_anything_else_is_left_to_the_ordinary_path(argv: list[str]) -> None:
    assert fast.request(argv) is None


def test_an_unreadable_config_does_nothing() -> None:
    assert fast.start(["-c", "/nonexistent/connpin.toml", "ha", "promote"]) is None
    assert fast.done is None and fast.held is None


def test_the_fast_path_imports_no_heavy_module() -> None:
    code = ("import sys; from connpin.ha import fast; fast._first_step; "
            "import tomllib; from connpin.ha import roles, settings; from connpin.kernel import "
            "state, tools; heavy = sorted(m for m in sys.modules if m.startswith(('pyroute2.', "
            "'connpin.model', 'connpin.engine', 'connpin.cli'))); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_act_reports_the_early_commit_in_its_place_and_does_not_run_it_again() -> None:
    from connpin.ha import act, roles

    argv = ("conntrackd", "-C", "/etc/conntrackd/conntrackd.conf", "-c")
    fast.done = fast.Early(argv, False, " ".join(argv) + ": failed (exit 1, 3 ms): no socket")
    said: list[str] = []
    try:
        assert act._conntrackd(roles.Command(argv, "commit"), said.append) is False
    finally:
        left, fast.done = fast.done, None
    assert left is None, "consumed: reported once"
    assert said == [" ".join(argv) + ": failed (exit 1, 3 ms): no socket, before connpin's "
                    "start-up"]
