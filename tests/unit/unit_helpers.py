"""What the unit tests share: running the CLI in-process and comparing with golden files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from connpin import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`connpin ARGV` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check_golden(directory: Path, files: Mapping[str, str]) -> None:
    """Each rendered file equals its golden copy in `directory` (`UPDATE_GOLDEN=1` rewrites
    them: review the diff)."""
    for name, text in files.items():
        path = directory / name
        if os.environ.get("UPDATE_GOLDEN"):
            path.write_text(text)
        assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
        assert text == path.read_text(), f"{directory.name}/{name} differs from golden"
