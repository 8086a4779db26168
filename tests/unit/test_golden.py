"""Golden files: the plan (nft ruleset, rules, routes) for each case under tests/golden/.

Regenerate after an intended change with `UPDATE_GOLDEN=1 make unit`, then review the diff.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from unit_helpers import check_golden

from connpin import model, reconcile
from connpin.render import plan

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "connpin.toml").exists())


def _render(case: str) -> dict[str, str]:
    config = model.load(GOLDEN / case / "connpin.toml")
    config = replace(config, path="connpin.toml")
    result = reconcile.run(config, reconcile.Imagined(), effects=False)
    out = {
        "plan.txt": plan.text(config, result, live=False),
        "plan.json": json.dumps(plan.as_dict(config, result, live=False), indent=2) + "\n",
    }
    if not config.selecting:  # choosing uplinks is nftables only (refused with iptables)
        ipt = replace(config, pinning=replace(config.pinning, backend="iptables"))
        ipt_result = reconcile.run(ipt, reconcile.Imagined(), effects=False)
        out["plan-iptables.txt"] = plan.text(ipt, ipt_result, live=False)
    return out


@pytest.mark.parametrize("case", CASES)
def test_plan_matches_golden(case: str) -> None:
    check_golden(GOLDEN / case, _render(case))


#: Renders every case in a fresh interpreter and prints them as JSON (this file's `_render`).
RENDER_ALL = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); import test_golden as g; "
    "print(json.dumps({c: g._render(c) for c in g.CASES}, sort_keys=True))"
)


def _render_with_hash_seed(seed: str) -> dict[str, dict[str, str]]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    p = subprocess.run([sys.executable, "-c", RENDER_ALL, str(Path(__file__).parent)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_plan_is_deterministic() -> None:
    """Byte for byte the same whatever the hash order of str sets and dicts keyed by them:
    two interpreters with different PYTHONHASHSEED (a set iterated while rendering differs)."""
    first, second = _render_with_hash_seed("1"), _render_with_hash_seed("2")
    assert sorted(first) == CASES
    for case in CASES:
        for name, text in first[case].items():
            assert second[case][name] == text, f"{case}/{name} depends on the hash seed"
