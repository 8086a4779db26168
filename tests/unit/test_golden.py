"""Golden files: the plan (nft ruleset, rules, routes) for each case under tests/golden/.

Regenerate after an intended change with `UPDATE_GOLDEN=1 make unit`, then review the diff.
"""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from connpin import model, reconcile
from connpin.render import plan

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "connpin.toml").exists())


def _render(case: str) -> dict[str, str]:
    config = model.load(GOLDEN / case / "connpin.toml")
    config = model.Config(config.pinning, config.uplinks, "connpin.toml")
    result = reconcile.run(config, reconcile.Imagined(), effects=False)
    ipt = replace(config, pinning=replace(config.pinning, backend="iptables"))
    ipt_result = reconcile.run(ipt, reconcile.Imagined(), effects=False)
    return {
        "plan.txt": plan.text(config, result, live=False),
        "plan.json": json.dumps(plan.as_dict(config, result, live=False), indent=2) + "\n",
        "plan-iptables.txt": plan.text(ipt, ipt_result, live=False),
    }


@pytest.mark.parametrize("case", CASES)
def test_plan_matches_golden(case: str) -> None:
    for name, text in _render(case).items():
        path = GOLDEN / case / name
        if os.environ.get("UPDATE_GOLDEN"):
            path.write_text(text)
        assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
        assert text == path.read_text(), f"{case}/{name} differs from golden"


@pytest.mark.parametrize("case", CASES)
def test_plan_is_deterministic(case: str) -> None:
    assert _render(case) == _render(case)
