"""Every shipped example loads and plans; the HA pair's two files agree and render."""

from pathlib import Path

import pytest

from connpin import cli, model

DIR = Path(__file__).parent.parent.parent / "examples"
EXAMPLES = sorted(DIR.glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans(path: Path, capsys) -> None:
    assert cli.main(["-c", str(path), "plan"]) == 0
    assert "table inet" in capsys.readouterr().out
    assert cli.main(["-c", str(path), "plan", "--json"]) == 0


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
    assert {"ha-primary.toml", "ha-backup.toml"} <= {p.name for p in EXAMPLES}


def test_the_ha_pair_gives_the_same_pins_and_swaps_the_sync_link(capsys) -> None:
    primary, backup = str(DIR / "ha-primary.toml"), str(DIR / "ha-backup.toml")
    assert cli.main(["-c", primary, "check", "--peer", backup]) == 0
    assert cli.main(["-c", backup, "check", "--peer", primary]) == 0
    a, b = model.load(primary).ha, model.load(backup).ha
    assert a is not None and b is not None
    assert (a.local, a.peer) == (b.peer, b.local) and a.topology == b.topology == "shared"
    capsys.readouterr()
    for path in (primary, backup):
        assert cli.main(["-c", path, "ha", "conntrackd-conf"]) == 0
        assert "Mode FTFW" in capsys.readouterr().out
        assert cli.main(["-c", path, "ha", "keepalived-notify", "--instance", "VI_1"]) == 0
        assert f"-c {path} ha promote" in capsys.readouterr().out
        assert cli.main(["-c", path, "ha", "promote", "--dry-run"]) == 0
