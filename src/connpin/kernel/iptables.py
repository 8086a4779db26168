"""The iptables tools: read connpin's CONNPIN-* chains, and replace or remove them with
`iptables-restore --noflush` / `ip6tables-restore --noflush`. What to write is decided by the
pure render.iptables; this module only runs the tools.

`CONNPIN_IPTABLES` picks the flavour: `iptables` (the default: whatever the alternatives system
points at), `iptables-legacy`, `iptables-nft`, or a path to one of them; the save/restore tools
and the IPv6 ones are derived from that name (iptables-legacy -> ip6tables-legacy-restore).
"""

from __future__ import annotations

import os

from connpin.kernel import tools
from connpin.render import iptables as render


class IptablesFailure(tools.ToolFailure):
    pass


def flavour() -> str:
    return os.environ.get("CONNPIN_IPTABLES") or "iptables"


def tool(family: int, suffix: str) -> str:
    """e.g. tool(6, "restore") -> ip6tables-legacy-restore for CONNPIN_IPTABLES=iptables-legacy
    (a name, or a path when CONNPIN_IPTABLES is one; tools.find locates it when run)."""
    base = flavour()
    head, name = os.path.split(base)
    if not name.startswith("iptables"):
        raise IptablesFailure(f"CONNPIN_IPTABLES={base!r}: expected iptables, iptables-legacy, "
                              "iptables-nft or a path to one of them")
    name = ("ip6tables" if family == 6 else "iptables") + name[len("iptables"):] + f"-{suffix}"
    return os.path.join(head, name) if head else name


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        p = tools.run(argv, stdin)
    except tools.ToolFailure as e:
        raise IptablesFailure(str(e)) from None
    if p.returncode != 0:
        msg = " ".join(line.strip() for line in p.stderr.splitlines() if line.strip())
        raise IptablesFailure(f"{os.path.basename(argv[0])}: "
                              f"{msg or f'exited with {p.returncode}'}")
    return p.stdout


def owned(family: int) -> str:
    """connpin's part of one family's tables (empty: none). Lists only tables that exist, so
    observing never creates one."""
    return render.owned(_run([tool(family, "save")]))


def listing(families: tuple[int, ...]) -> str | None:
    """connpin's chains and jumps in every family, in render.iptables' shape; None: none."""
    return render.join({f: owned(f) for f in families})


def _restore(family: int, script: str) -> None:
    # --wait: iptables-legacy serializes writers with the host-wide xtables lock
    _run([tool(family, "restore"), "--noflush", "--wait"], script)


def apply(want: str | None, families: tuple[int, ...]) -> None:
    """Make connpin's chains what `want` (render.iptables output) says, None: none at all.

    Each table commits as a whole. If a later table or family fails, what was already changed
    is put back, so a failure leaves the previous state."""
    wanted = render.split(want)
    before = {f: owned(f) for f in families}
    try:
        for f in families:
            tx = render.transaction(wanted.get(f), before[f])
            if tx:
                _restore(f, tx)
    except IptablesFailure:
        for f in families:
            try:
                now = owned(f)
                if now != before[f]:
                    _restore(f, render.transaction(before[f] or None, now))
            except IptablesFailure:
                pass
        raise
