"""Golden files of the HA pieces (tests/golden/ha-*/): for each router.toml, the conntrackd.conf
`connpin ha conntrackd-conf` writes, the keepalived lines of `connpin ha keepalived-notify` and
the steps of promote / demote / fault (`--dry-run`).

Regenerate after an intended change with `UPDATE_GOLDEN=1`, then review the diff.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from unit_helpers import check_golden

from connpin import model
from connpin.ha import conntrackd, keepalived, roles

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.name.startswith("ha-")
               and (p / "router.toml").exists())
PROGRAM = ("/usr/sbin/connpin",)


def _render(case: str) -> dict[str, str]:
    config = replace(model.load(GOLDEN / case / "router.toml"), path="/etc/connpin/connpin.toml")
    assert config.ha is not None
    plans = "".join(f"# connpin ha {role} --dry-run\n" + "\n".join(roles.plan(config.ha, role)
                                                                    .lines()) + "\n"
                    for role in roles.ROLES)
    return {
        "conntrackd.conf": conntrackd.render(config.ha, config.path),
        "keepalived.conf": keepalived.render(PROGRAM, config.path, ["VI_LAN", "VI_WAN"]),
        "roles.txt": plans,
    }


def test_there_are_cases() -> None:
    assert {"ha-own", "ha-shared"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_ha_files_match_golden(case: str) -> None:
    check_golden(GOLDEN / case, _render(case))
