"""The generated man pages and completion scripts cover what they describe (packaging/)."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from connpin import cli, hooks

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_pkg_{name}", ROOT / "packaging" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_connpin_8_lists_every_subcommand_and_option() -> None:
    page = _load("man").connpin_8()
    assert page.startswith('.TH CONNPIN "8"')
    subs = _subcommands()
    assert len(subs) >= 12
    for name, sub in subs.items():
        assert f"connpin {name}" in page, name
        for action in sub._actions:
            for opt in action.option_strings:
                if action.help != argparse.SUPPRESS and opt not in ("-h", "--help"):
                    assert opt.replace("-", r"\-") in page or opt in page, (name, opt)
    assert "EXIT STATUS" in page


def test_connpin_toml_5_is_readmes_config_reference() -> None:
    man = _load("man")
    page = man.connpin_toml_5()
    reference = man.config_reference((ROOT / "README.md").read_text())
    keys = set(re.findall(r"^(\w+) = ", reference, re.M))
    assert {"mark_mask", "interface", "gateway6", "failback"} <= keys
    for key in keys:
        assert f"\n{key} = " in page, key
    for line in page.splitlines():  # no stray request: text never starts with . or '
        assert not line.startswith("'"), line
        if line.startswith("."):
            assert re.match(r"\.(TH|SH|SS|PP|IP|TP|RS|RE|EX|EE)\b", line), line


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_knows_every_subcommand_and_uplinks(shell: str) -> None:
    text = _load("completion").script(shell)
    for name in _subcommands():
        assert re.search(rf"\b{name}\b", text), name
    assert "_connpin_uplinks" in text


def test_ifupdown_hooks_skip_lo_and_all() -> None:
    paths = [h.path for h in hooks.IFUPDOWN]
    assert paths == ["etc/network/if-up.d/connpin", "etc/network/if-post-down.d/connpin"]
    for hook in hooks.IFUPDOWN:
        assert hooks.script(hook, None).index("lo|--all") < hooks.script(hook, None).index("exec")


def test_unit_is_hardened_and_keeps_a_home_install_readable() -> None:
    unit = hooks.unit(None, exe="/usr/sbin/connpin")
    for line in ("ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                 "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "RuntimeDirectory=connpin",
                 "RuntimeDirectoryPreserve=yes"):
        assert f"\n{line}\n" in unit, line
    assert "ProtectKernelTunables" not in unit  # it writes /proc/sys/net/ipv4/conf/*
    assert "\nProtectHome=read-only\n" in hooks.unit(None, exe="/root/venv/bin/connpin")
