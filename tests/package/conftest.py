"""Package tier: `make wheel` once per session into a temporary directory, for the tests that
install it (fresh venv) or package it (.deb)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.package)
            # one xdist worker builds the wheel (it stages src/connpin/share in the checkout)
            item.add_marker(pytest.mark.xdist_group("package"))


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "wheel", f"DIST={out}",
                    f"PY={sys.executable}"], check=True, capture_output=True, timeout=600)
    return out
