"""`--json` and `connpin init` on the real kernel, in a lab.

--json: every command that prints, run in the lab's router, prints one document with
`"schema": 1` that says what it did, and errors (a bad config, an interface name a hook would
refuse, a foreign nft table, a failing tool) are documents with the command's exit code.
init: in a router with two uplinks whose default routes have different metrics, `connpin init`
proposes both (the lower metric first, a pppd peer named after its `unit`), and `check`,
`plan` and `apply` take the config it wrote.
"""

from __future__ import annotations

import json
import subprocess

from helpers import KERNEL

from connpin.lab import Lab

pytestmark = KERNEL


def doc(p: subprocess.CompletedProcess[str], command: str, code: int = 0) -> dict:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    d = json.loads(p.stdout)  # the whole of stdout is one document
    assert d["schema"] == 1 and d["command"] == command, d
    if code:
        assert d["exit"] == code and d["error"]["message"], d
    else:
        assert "error" not in d, d
    return d


def test_json_documents_of_every_command_and_their_errors(tmp_path) -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config())
        lab.uplink_up(1)
        applied = doc(lab.connpin("apply", "--json", check=False), "apply")
        assert applied["verified"] is True and applied["changes"], applied
        assert any("nft replace table inet connpin" in c for c in applied["changes"])
        assert applied["adopted"] == [] and applied["ms"] >= 0
        again = doc(lab.connpin("apply", "--json", "-q", check=False), "apply")
        assert again["changes"] == [] and again["verified"] is True

        lab.uplink_up(2)  # no hooks installed: the entry point is run by hand, like a hook
        up = doc(lab.connpin("up", "--json", "--", "ppp1", check=False), "up")
        assert up["interface"] == "ppp1" and up["changes"]
        assert any("ppp1" in c for c in up["changes"]), up
        other = doc(lab.connpin("up", "--json", "eth9", check=False), "up")
        assert other["uplink"] is None and other["changes"] == []

        plan = doc(lab.connpin("plan", "--live", "--json", check=False), "plan")
        assert plan["changes"] == [] and [u["uplink"] for u in plan["uplinks"]]
        check = doc(lab.connpin("check", "--json", check=False), "check")
        assert check["conflicts"] == [] and check["unread"] == []

        probe = lab.probe()
        try:
            assert probe.wait_rounds(2, 10.0)
            conns = doc(lab.connpin("connections", "--json", check=False), "connections")
            assert sum(len(g["connections"]) for g in conns["uplinks"]) >= 1
            assert {g["uplink"] for g in conns["uplinks"]} == {"isp1", "isp2"}
            dry = doc(lab.connpin("flush", "isp1", "--dry-run", "--json", check=False), "flush")
            assert dry["dry_run"] is True and dry["uplinks"][0]["uplink"] == "isp1"
            assert dry["uplinks"][0]["flushed"] == dry["uplinks"][0]["pinned"] >= 1
            assert dry["flushed"] == dry["uplinks"][0]["flushed"]
        finally:
            probe.close()
        sweep = doc(lab.connpin("sweep", "--json", check=False), "sweep")
        assert sweep["flushed"] == 0

        down = doc(lab.connpin("down", "--json", "ppp1", check=False), "down")
        assert down["interface"] == "ppp1" and any("del" in c for c in down["changes"]), down

        # a hook's refused input: exit 2, a usage document, nothing run
        bad = doc(lab.connpin("up", "--json", "--", "ppp0;reboot", check=False), "up", 2)
        assert bad["error"]["kind"] == "usage" and "not a valid interface name" in \
            bad["error"]["message"]
        unknown = doc(lab.connpin("flush", "isp9", "--json", check=False), "flush", 2)
        assert unknown["error"]["kind"] == "usage" and "isp9" in unknown["error"]["message"]

        # a bad config: exit 2 with file, field and problem; the kernel is left as it was
        before = lab.exec("router", ["nft", "list", "table", "inet", "connpin"]).stdout
        bad_cfg = tmp_path / "bad.toml"
        bad_cfg.write_text('[pinning]\nmark_mask = 0\n[[uplink]]\nname = "x"\n'
                           'interface = "ppp0"\n')
        for cmd in (["apply"], ["up", "ppp0"], ["remove"], ["check"], ["connections"]):
            p = lab.connpin("-c", str(bad_cfg), *cmd, "--json", check=False)
            err = doc(p, cmd[0], 2)["error"]
            assert err["kind"] == "config" and err["file"] == str(bad_cfg)
            assert err["field"] == "pinning.mark_mask" and err["problem"], err
            assert p.stderr.startswith(f"connpin: {bad_cfg}: pinning.mark_mask: ")
        assert lab.exec("router", ["nft", "list", "table", "inet", "connpin"]).stdout == before

        removed = doc(lab.connpin("remove", "--json", check=False), "remove")
        assert any("delete table inet connpin" in c for c in removed["changes"]), removed

        # a tool that fails: a runtime error document, exit 1, nothing left installed
        fake = tmp_path / "nft"
        fake.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -f ] && '
                        '{ echo "nft: refusing to load" >&2; exit 1; }; done\nexec nft "$@"\n')
        fake.chmod(0o755)
        failing = doc(lab.connpin("apply", "--json", env={"CONNPIN_NFT": str(fake)},
                                  check=False), "apply", 1)
        assert failing["error"]["kind"] == "runtime" and "previous state kept" in \
            failing["error"]["message"], failing
        assert "connpin" not in lab.exec("router", ["nft", "list", "tables"]).stdout

        # someone else's table of the same name: a conflict document, exit 2
        lab.exec("router", ["nft", "add", "table", "inet", "connpin"])
        conflict = doc(lab.connpin("up", "--json", "ppp0", check=False), "up", 2)
        assert conflict["error"]["kind"] == "conflict"


def test_init_names_both_uplinks_and_check_takes_it(tmp_path) -> None:
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "dsl-provider").write_text("plugin rp-pppoe.so eth1\nuser \"x@isp\"\nunit 0\n")
    (peers / "dsl-provider~").write_text("unit 0\n")  # an editor's backup: not a peer
    with Lab(uplinks=("ppp", "eth")) as lab:
        lab.uplink_up(2)  # wan2: via a gateway, metric 20
        lab.uplink_up(1)  # ppp0: a dev route, metric 10
        shown = doc(lab.connpin("init", "--ppp-peers", str(peers), "--json", check=False),
                    "init")
        ups = shown["uplinks"]
        assert [(u["name"], u["interface"], u["metric"]) for u in ups] == [
            ("dsl-provider", "ppp0", 10), ("wan2", "wan2", 20)], ups
        assert ups[0]["ppp_peer"] == "dsl-provider" and ups[0]["gateway"] is None
        assert ups[1]["gateway"] == lab.gateway(2) and shown["written"] is None

        text = lab.connpin("init", "--ppp-peers", str(peers)).stdout
        assert text == shown["config"]
        assert 'interface = "ppp0"' in text and 'interface = "wan2"' in text
        assert 'gateway = "auto"' in text

        out = lab.config_path
        wrote = lab.connpin("init", "-o", str(out), "--ppp-peers", str(peers), check=False)
        assert wrote.returncode == 0 and out.read_text() == text, wrote.stderr
        again = lab.connpin("init", "-o", str(out), check=False)
        assert again.returncode == 2 and "not overwritten" in again.stderr
        assert out.read_text() == text
        assert lab.connpin("init", "-o", str(out), "--force", "--ppp-peers", str(peers)
                           ).returncode == 0

        check = lab.connpin("check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "no conflicts" in check.stdout
        assert lab.connpin("plan").returncode == 0
        applied = doc(lab.connpin("apply", "--json", check=False), "apply")
        assert applied["verified"] is True
        live = doc(lab.connpin("plan", "--live", "--json", check=False), "plan")
        assert live["changes"] == [], live["changes"]
        assert {u["uplink"]: u["up"] for u in live["uplinks"]} == {
            "dsl-provider": True, "wan2": True}, live["uplinks"]
        lab.connpin("remove")
