"""The iptables backend's own promises, on iptables-nft and iptables-legacy: the rendered
chains load beside foreign rules and are replaced, not added; a failing restore leaves the
previous state; switching backends leaves nothing behind; `auto` picks iptables without nft.

(The pinning stories themselves run on this backend through tests/kernel/conftest.py.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import KERNEL, foreign_iptables

from connpin import model, reconcile
from connpin.lab import Lab
from connpin.render import iptables as R

pytestmark = KERNEL

FLAVOURS = ["iptables-nft", "iptables-legacy"]
GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CONNPIN_IPTABLES", request.param)
    monkeypatch.setattr(Lab, "backend", "iptables")
    return request.param


def saved(lab: Lab) -> tuple[str, str]:
    return lab.iptables_save(4), lab.iptables_save(6)


def test_golden_rulesets_load_replace_and_go_beside_foreign_rules(flavour: str) -> None:
    with Lab(uplinks=("ppp",)) as lab:
        foreign_iptables(lab)
        before = saved(lab)
        for case in sorted(p for p in GOLDEN.iterdir() if (p / "connpin.toml").exists()):
            config = model.load(case / "connpin.toml")
            if config.selecting:  # choosing uplinks is nftables only (refused with iptables)
                continue
            config = replace(config, pinning=replace(config.pinning, backend="iptables"))
            want = reconcile.run(config, reconcile.Imagined(), effects=False).desired
            for family, script in R.split(want.ruleset).items():
                tool = flavour.replace("iptables", "ip6tables" if family == 6 else "iptables")
                have = R.owned(lab.exec("router", [f"{tool}-save"]).stdout)
                lab.exec("router", [f"{tool}-restore", "--noflush"],
                         input=R.transaction(script, have))
                once = lab.iptables_save(family)
                have = R.owned(lab.exec("router", [f"{tool}-save"]).stdout)
                lab.exec("router", [f"{tool}-restore", "--noflush"],
                         input=R.transaction(script, have))
                assert lab.iptables_save(family) == once, f"{case.name}: replaced, not added"
                assert once.count("-j CONNPIN-PRE") == 1
                have = R.owned(lab.exec("router", [f"{tool}-save"]).stdout)
                lab.exec("router", [f"{tool}-restore", "--noflush"],
                         input=R.transaction(None, have))
        assert saved(lab) == before


def test_a_failing_restore_leaves_the_previous_state(flavour: str, tmp_path: Path) -> None:
    """ip6tables-restore fails after the IPv4 chains were replaced: they are put back."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for fam in ("iptables", "ip6tables"):
        real = flavour.replace("iptables", fam)
        for suffix in ("save", "restore"):
            body = f'exec {real}-{suffix} "$@"'
            if fam == "ip6tables" and suffix == "restore":
                body = "echo 'injected failure' >&2; exit 1"
            path = fake / f"{real}-{suffix}"
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.connpin("apply")
        lab.uplink_up(1)
        lab.uplink_up(2)
        lab.connpin("apply")
        good = saved(lab)
        lab.write_config(lab.default_config(masquerade=False))  # both families change
        p = lab.connpin("apply", check=False,
                        env={"CONNPIN_IPTABLES": str(fake / flavour)})
        assert p.returncode == 1, p.stdout + p.stderr
        assert "injected failure" in p.stderr and "previous state kept" in p.stderr
        assert saved(lab) == good
        assert "verified" in lab.connpin("apply").stdout  # the real tools converge


def test_switching_backends_leaves_nothing_behind(flavour: str) -> None:
    with Lab(uplinks=("ppp", "eth")) as lab:
        foreign_iptables(lab)
        lab.uplink_up(1)
        lab.uplink_up(2)
        ipt_before = saved(lab)
        nft_before = lab.exec("router", ["nft", "list", "tables"]).stdout
        lab.write_config(lab.default_config(masquerade=True, backend="nftables"))
        lab.connpin("apply")
        assert "inet connpin" in lab.exec("router", ["nft", "list", "tables"]).stdout
        lab.write_config(lab.default_config(masquerade=True))  # backend = "iptables"
        p = lab.connpin("apply")
        assert "nft delete table inet connpin" in p.stdout
        assert "inet connpin" not in lab.exec("router", ["nft", "list", "tables"]).stdout
        assert "CONNPIN-PRE" in lab.iptables_save(4)
        assert lab.connpin("status", check=False).returncode == 0
        lab.write_config(lab.default_config(masquerade=True, backend="nftables"))
        p = lab.connpin("apply")
        assert "iptables: delete chains CONNPIN-*" in p.stdout
        assert saved(lab) == ipt_before
        lab.connpin("remove")
        assert lab.exec("router", ["nft", "list", "tables"]).stdout == nft_before
        assert saved(lab) == ipt_before


def test_auto_picks_iptables_when_nft_is_missing(flavour: str) -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True, backend="auto"))
        lab.uplink_up(1)
        no_nft = {"CONNPIN_NFT": "/nonexistent/nft"}
        assert "iptables-restore" in lab.connpin("apply", env=no_nft).stdout
        assert "CONNPIN-PRE" in lab.iptables_save(4)
        assert lab.uplink_of(lab.connect()) == 1
        assert lab.connpin("status", env=no_nft, check=False).returncode == 0
        plan = lab.connpin("plan", env=no_nft).stdout
        assert "iptables-restore --noflush" in plan and "table inet" not in plan
        lab.connpin("remove", env=no_nft)
        assert "CONNPIN" not in lab.iptables_save(4)
