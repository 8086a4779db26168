"""The nft tool: replace or delete connpin's table in one transaction, and read it back."""

from __future__ import annotations

import os
import shutil
import subprocess


class NftFailure(Exception):
    pass


def _nft() -> str:
    """The nft tool: $CONNPIN_NFT, else nft on PATH or in the sbin directories."""
    exe = os.environ.get("CONNPIN_NFT") or shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if exe is None:
        raise NftFailure("the nft tool is not installed (apt install nftables)")
    return exe


def run(script: str) -> None:
    """Load an nft script as one atomic transaction; nothing changes if any line fails."""
    p = subprocess.run([_nft(), "-f", "-"], input=script, text=True, capture_output=True)
    if p.returncode != 0:
        msg = " ".join(line.strip() for line in p.stderr.splitlines() if "Error" in line)
        raise NftFailure(msg or p.stderr.strip() or f"nft exited with {p.returncode}")


def listing(family: str, table: str) -> str | None:
    """`nft list table` output, or None when the table does not exist."""
    p = subprocess.run([_nft(), "list", "table", family, table], text=True, capture_output=True)
    if p.returncode != 0:
        if "No such file" in p.stderr:
            return None
        raise NftFailure(p.stderr.strip())
    return p.stdout
