"""Every shipped example loads and plans."""

from pathlib import Path

import pytest

from connpin import cli

EXAMPLES = sorted((Path(__file__).parent.parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans(path: Path, capsys) -> None:
    assert cli.main(["-c", str(path), "plan"]) == 0
    assert "table inet" in capsys.readouterr().out


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
