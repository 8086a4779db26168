"""The wheel installs into a fresh venv: `connpin --help` runs, the examples, the systemd unit,
the man pages and the completion scripts are inside the installed package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_wheel_installs_with_its_files(dist: Path, tmp_path: Path) -> None:
    [wheel] = dist.glob("connpin-*-py3-none-any.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    out = subprocess.run([str(venv / "bin/connpin"), "--help"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert out.startswith("usage: connpin")
    share = subprocess.run(
        [str(venv / "bin/python"), "-I", "-c",
         "import connpin, pathlib; print(pathlib.Path(connpin.__file__).parent / 'share')"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    names = {p.relative_to(share).as_posix() for p in Path(share).rglob("*") if p.is_file()}
    assert {"examples/pppoe-multi.toml", "examples/dual-stack.toml", "systemd/connpin.service",
            "man/connpin.8", "man/connpin.toml.5", "completion/bash/connpin",
            "completion/zsh/_connpin"} <= names
