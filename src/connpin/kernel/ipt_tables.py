"""The iptables tables connpin's chains brought into existence, and their removal.

With iptables-nft, `mangle` and `nat` are nft tables (`table ip mangle`, `table ip6 nat`, ...)
that appear when first used and keep their base chains registered on every packet's path, empty
or not. connpin records which of them did not exist before its first apply (`absent`) and, when
it removes its chains, deletes those that are empty again (`drop_empty`): no rules, only base
chains. With iptables-legacy the tables belong to kernel modules and cannot be deleted by a
tool; nothing is recorded (docs/coexistence.md).
"""

from __future__ import annotations

import json
import os

from connpin.kernel import iptables as ipt
from connpin.kernel import nft as nftool
from connpin.kernel import tools

#: connpin's iptables tables and the base chains iptables-nft may add to them
TABLES = {"mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
          "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
_FAMILY = {4: "ip", 6: "ip6"}


def nft_flavour() -> bool:
    """Whether the iptables tools in use are iptables-nft (the tables are nft tables)."""
    try:
        exe = ipt.tool(4, "save")
    except ipt.IptablesFailure:
        return False
    name = os.path.basename(os.path.realpath(exe))
    if "legacy" in os.path.basename(exe) or "legacy" in name:
        return False
    if "nft" in os.path.basename(exe) or "nft" in name:
        return True
    try:
        return "nf_tables" in tools.run([exe, "--version"]).stdout
    except tools.ToolFailure:
        return False


def _objects(family: str, table: str) -> list[dict] | None:
    """`nft -j list table` objects, None when the table does not exist."""
    try:
        p = tools.run(["nft", "-j", "list", "table", family, table])
    except tools.ToolFailure:
        return None
    if p.returncode != 0:
        return None
    try:
        return json.loads(p.stdout).get("nftables", [])
    except ValueError:
        return None


def _chains(objs: list[dict]) -> dict[str, dict]:
    return {o["chain"]["name"]: o["chain"] for o in objs if "chain" in o}


def absent(families: tuple[int, ...]) -> list[list[str]]:
    """What of connpin's iptables tables does not exist now (iptables-nft only; empty for
    iptables-legacy or without the nft tool): [family, table] for a missing table,
    [family, table, chain] for a missing base chain of an existing one (iptables-nft adds base
    chains as they are first used)."""
    if not nftool.available() or not nft_flavour():
        return []
    out: list[list[str]] = []
    for f in families:
        for table, chains in TABLES.items():
            objs = _objects(_FAMILY[f], table)
            if objs is None:
                out.append([_FAMILY[f], table])
            else:
                have = _chains(objs)
                out += [[_FAMILY[f], table, c] for c in chains if c not in have]
    return out


def drop_empty(created: list[list[str]]) -> None:
    """Delete the tables (and base chains) connpin created that are empty again: a table with
    nothing but empty base chains, a base chain without rules."""
    script = ""
    for entry in created:
        objs = _objects(*entry[:2])
        if objs is None:
            continue
        rules = {o["rule"]["chain"] for o in objs if "rule" in o}
        chains = _chains(objs)
        if len(entry) == 3:
            if entry[2] in chains and entry[2] not in rules:
                script += f"delete chain {entry[0]} {entry[1]} {entry[2]}\n"
        elif not rules and all("hook" in c for c in chains.values()) and not any(
                "set" in o or "map" in o for o in objs):
            script += f"delete table {entry[0]} {entry[1]}\n"
    if script:
        nftool.run(script)
