"""--json: one emitter, schema 1 on every document, errors as documents with their exit codes,
and text output unchanged without --json (the CLI parts that need no kernel)."""

from __future__ import annotations

import json
import os

import pytest
from unit_helpers import run

from connpin import cli
from connpin.fields import ConfigError
from connpin.render import jsonout

CONFIG = '[[uplink]]\nname = "isp-a"\ninterface = "ppp0"\nmasquerade = true\n'


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "connpin.toml"
    p.write_text(CONFIG)
    return str(p)


def doc_of(out: str) -> dict:
    doc = json.loads(out)  # exactly one document: json.loads refuses trailing text
    assert isinstance(doc, dict) and doc["schema"] == 1, doc
    assert list(doc)[:2] == ["schema", "command"]
    return doc


def test_document_and_failure_shape() -> None:
    d = jsonout.document("apply", changes=[])
    assert d == {"schema": 1, "command": "apply", "changes": []}
    f = jsonout.failure("up", "usage", "bad")
    assert f == {"schema": 1, "command": "up", "error": {"kind": "usage", "message": "bad"},
                 "exit": 2}
    c = jsonout.config_failure("apply", ConfigError("/x.toml", "uplink[0] (a).name", "wrong"))
    assert c["error"] == {"kind": "config", "message": "/x.toml: uplink[0] (a).name: wrong",
                          "file": "/x.toml", "field": "uplink[0] (a).name", "problem": "wrong"}
    assert c["exit"] == 2
    assert jsonout.config_failure("plan", ConfigError("/x", "", "no such file"))["error"][
        "field"] is None
    assert jsonout.failure("apply", "runtime", "x")["exit"] == 1
    assert jsonout.failure("status", "root", "x")["exit"] == 4
    with pytest.raises(ValueError):
        jsonout.failure("apply", "oops", "x")
    with pytest.raises(ValueError):
        jsonout.dumps({"command": "x"})  # not made here: no schema
    assert jsonout.dumps(d).endswith("]\n}\n")


#: Commands whose output is a file for another program (conntrackd.conf, keepalived.conf lines).
PRINTS_A_FILE = {"conntrackd-conf", "keepalived-notify"}


def test_every_printing_command_takes_json() -> None:
    import argparse

    [sub] = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    def takes_json(p: argparse.ArgumentParser) -> bool:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:  # a command of commands: each that reports (not those printing a file) takes it
            return all(takes_json(c) for n, c in subs[0].choices.items()
                       if n not in PRINTS_A_FILE)
        return any("--json" in a.option_strings for a in p._actions)

    without = {name for name, p in sub.choices.items() if not takes_json(p)}
    # watch is a daemon (it logs), lab has its own parser (`lab list --json`), top is a live
    # view of what `status --json` carries
    assert without == {"watch", "lab", "top"}, (
        f"{sorted(without - {'watch', 'lab', 'top'})}: a command that prints takes --json "
        "(cli._json_flag, jsonout.document/failure) and has a section in docs/json.md")


def test_plan_json_has_schema_and_the_same_fields(capsys, cfg) -> None:
    from connpin import model, reconcile
    from connpin.render import plan

    code, out, _ = run(capsys, "-c", cfg, "plan", "--json")
    doc = doc_of(out)
    assert code == 0 and doc["command"] == "plan"
    config = model.load(cfg)
    want = plan.as_dict(config, reconcile.run(config, reconcile.Imagined(nft=doc["nft"] is not
                                                                             None),
                                              effects=False), False)
    assert {k: v for k, v in doc.items() if k not in ("schema", "command")} == want


@pytest.mark.parametrize("command", [["apply"], ["up", "ppp0"], ["down", "ppp0"], ["remove"],
                                     ["plan"], ["check"], ["status"], ["connections"],
                                     ["flush", "isp-a"], ["sweep"]])
def test_bad_config_is_a_json_error_with_file_and_field(capsys, tmp_path, command) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[[uplink]]\nname = "a"\ninterface = "eth 0"\n')
    code, out, err = run(capsys, "-c", str(p), *command, "--json")
    assert code == 2
    doc = doc_of(out)
    assert doc["command"] == command[0] and doc["exit"] == 2
    e = doc["error"]
    assert e["kind"] == "config" and e["file"] == str(p)
    assert e["field"] == "uplink[0] (a).interface" and "'eth 0'" in e["problem"]
    assert err == f"connpin: {e['message']}\n"  # stderr as without --json


def test_missing_config_json(capsys, tmp_path) -> None:
    code, out, _ = run(capsys, "-c", str(tmp_path / "none.toml"), "plan", "--json")
    doc = doc_of(out)
    assert code == 2 and doc["error"]["field"] is None and "no such file" in doc["error"][
        "problem"]


@pytest.mark.parametrize("name", ["ppp0;reboot", "$(id)", "a b", "x" * 16])
def test_hook_refused_interface_name_json(capsys, cfg, name) -> None:
    code, out, err = run(capsys, "-c", cfg, "up", "--json", "--", name)
    doc = doc_of(out)
    assert code == 2 and doc["command"] == "up" and doc["exit"] == 2
    assert doc["error"]["kind"] == "usage" and "is not a valid interface name" in doc[
        "error"]["message"]
    assert err.startswith("connpin up: ") and err.count("\n") == 1


def test_not_an_uplink_json(capsys, cfg) -> None:
    code, out, _ = run(capsys, "-c", cfg, "down", "eth7", "--json")
    doc = doc_of(out)
    assert code == 0 and doc["interface"] == "eth7" and doc["uplink"] is None
    assert doc["changes"] == [] and "not an uplink" in doc["message"]


def test_argparse_usage_error_json(capsys, cfg) -> None:
    code, out, err = run(capsys, "-c", cfg, "flush", "--json", "--idle", "soon")
    doc = doc_of(out)
    assert code == 2 and doc["command"] == "flush" and doc["error"]["kind"] == "usage"
    assert "invalid int value" in doc["error"]["message"]
    assert err.startswith("usage: connpin flush") and "connpin flush: error: " in err


def test_usage_error_found_by_the_main_parser_names_the_command(capsys, cfg) -> None:
    code, out, _ = run(capsys, "-c", cfg, "apply", "--bogus", "--json")
    doc = doc_of(out)
    assert code == 2 and doc["command"] == "apply" and "--bogus" in doc["error"]["message"]
    code, out, _ = run(capsys, "--json")
    assert code == 2 and doc_of(out)["command"] is None


def test_argparse_usage_error_text_is_unchanged(capsys) -> None:
    """The same two lines argparse itself prints (usage, then prog: error: message)."""
    code, out, err = run(capsys, "flush")
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == ("connpin flush: error: the following arguments are "
                                    "required: UPLINK")
    assert err.startswith("usage: connpin flush ")  # usage first, as argparse does


def test_needs_root_json(capsys, cfg, monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, _ = run(capsys, "-c", cfg, "apply", "--json")
    doc = doc_of(out)
    assert code == 4 and doc["error"]["kind"] == "root" and doc["exit"] == 4


def test_runtime_error_json(capsys, cfg, monkeypatch) -> None:
    from connpin.kernel.state import LockTimeout

    def fail(args):
        raise LockTimeout("held by 42\n more")

    monkeypatch.setattr(cli, "_dispatch", fail)
    code, out, err = run(capsys, "-c", cfg, "apply", "--json")
    doc = doc_of(out)
    assert code == 1 and doc["error"] == {"kind": "runtime", "message": "held by 42; more"}
    assert err == "connpin apply: held by 42; more\n"


def test_hooks_json(capsys, cfg, tmp_path) -> None:
    root = str(tmp_path / "root")
    code, out, _ = run(capsys, "-c", cfg, "hooks", "install", "--ppp", "--systemd", "--root",
                       root, "--json")
    doc = doc_of(out)
    assert code == 0 and doc["command"] == "hooks" and doc["action"] == "install"
    assert doc["kinds"] == ["ppp", "systemd"] and len(doc["installed"]) == 5
    assert all(os.path.exists(p) for p in doc["installed"]) and "systemctl" in doc["start"]
    code, out, _ = run(capsys, "hooks", "remove", "--ppp", "--systemd", "--root", root, "--json")
    doc = doc_of(out)
    assert code == 0 and doc["action"] == "remove" and len(doc["removed"]) == 5
    code, out, _ = run(capsys, "hooks", "install", "--json")
    assert code == 2 and doc_of(out)["error"]["kind"] == "usage"


def test_hooks_text_is_unchanged(capsys, cfg, tmp_path) -> None:
    root = str(tmp_path / "root")
    code, out, _ = run(capsys, "-c", cfg, "hooks", "install", "--systemd", "--root", root)
    assert code == 0 and out == (
        f"installed {root}/etc/systemd/system/connpin.service\n"
        "start it: systemctl daemon-reload && systemctl enable --now connpin\n")


def test_docs_describe_every_json_command() -> None:
    """docs/json.md has a section per command that takes --json (status: its own section)."""
    import argparse
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "json.md").read_text()
    sections = {w for h in re.findall(r"^## (.+)$", doc, re.M) for w in h.split(", ")}
    [sub] = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    takes = {name for name, p in sub.choices.items()
             if any("--json" in a.option_strings for a in p._actions)}
    assert "Conventions" in sections
    assert takes - {"status"} <= sections | {"up", "down"} and "up, down" in doc
    assert "lab list" in sections


def test_init_json_and_refusal(capsys, tmp_path, monkeypatch) -> None:
    """init without the kernel's answer (discover is the adapter): the document, -o, --force."""
    from connpin.kernel import discover
    from connpin.starter import DefaultRoute

    monkeypatch.setattr(discover, "default_routes",
                        lambda: [DefaultRoute("wan1", 4, 20, "198.51.100.1"),
                                 DefaultRoute("ppp0", 4, 10, None)])
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "dsl").write_text("unit 0\n")
    out = tmp_path / "etc" / "connpin.toml"
    code, text, _ = run(capsys, "init", "--ppp-peers", str(peers))
    assert code == 0 and text.index('"dsl"') < text.index('"wan1"')
    code, o, _ = run(capsys, "init", "--ppp-peers", str(peers), "-o", str(out), "--json")
    d = doc_of(o)
    assert code == 0 and d["written"] == str(out) and out.read_text() == d["config"] == text
    assert [u["name"] for u in d["uplinks"]] == ["dsl", "wan1"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    code, o, err = run(capsys, "init", "-o", str(out), "--json")
    assert code == 2 and doc_of(o)["error"]["kind"] == "usage" and "--force" in err
    out.write_text("mine\n")
    code, o, _ = run(capsys, "init", "--ppp-peers", str(peers), "-o", str(out), "--force")
    assert code == 0 and out.read_text() == text and "wrote" in o
    assert [p.name for p in out.parent.iterdir()] == ["connpin.toml"]  # no temporary left
