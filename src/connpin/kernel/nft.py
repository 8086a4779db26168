"""The nft tool: replace or delete connpin's table in one transaction, and read it back; and the
ruleset generation (netlink), which tells without running the tool whether anything changed."""

from __future__ import annotations

import contextlib

from connpin.kernel import tools


class NftFailure(tools.ToolFailure):
    pass


def available() -> bool:
    """Whether the nft tool can be run (pinning.backend = "auto" picks iptables otherwise)."""
    return tools.exists("nft")


def _nft(argv: list[str], stdin: str | None = None) -> tools.Ran:
    try:
        return tools.run(["nft", *argv], stdin)
    except tools.ToolFailure as e:
        raise NftFailure(str(e)) from None


def run(script: str) -> None:
    """Load an nft script as one atomic transaction; nothing changes if any line fails."""
    p = _nft(["-f", "-"], script)
    if p.returncode != 0:
        msg = " ".join(line.strip() for line in p.stderr.splitlines() if "Error" in line)
        raise NftFailure(msg or p.stderr.strip() or f"nft exited with {p.returncode}")


def listing(family: str, table: str) -> str | None:
    """`nft list table` output, or None when the table does not exist. Stateless (`-s`): the
    values of counters ([metrics]) are left out, so the listing changes only with the rules."""
    p = _nft(["-s", "list", "table", family, table])
    if p.returncode != 0:
        if "No such file" in p.stderr:
            return None
        raise NftFailure(p.stderr.strip())
    return p.stdout


class Generation:
    """The nf_tables generation id of this namespace: every commit (any table, any tool) bumps it.

    An id equal to the one read before the last listing means that listing is still what the
    kernel holds, so observing skips `nft list` (a process start) on the common, unchanged path.
    """

    def __init__(self) -> None:
        self._sock = None

    def read(self) -> int | None:
        """The current id, or None when it cannot be read (then callers list the table)."""
        try:
            if self._sock is None:
                from pyroute2.netlink.nfnetlink.nftsocket import NFTSocket

                self._sock = NFTSocket()
            from pyroute2.netlink import NLM_F_REQUEST
            from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, nft_gen_msg

            reply = self._sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN, msg_flags=NLM_F_REQUEST)
            return int(reply[0].get_attr("NFTA_GEN_ID"))
        except Exception:  # noqa: BLE001 - an optimisation only: fall back to listing
            self.close()
            return None

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self._sock.close()
            self._sock = None
