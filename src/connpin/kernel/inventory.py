"""Lists what other software put into this namespace's kernel, for conflicts.conflicts() to judge:
the nft ruleset (`nft -j list ruleset`), iptables rules of both flavours (iptables-nft-save and
iptables-legacy-save, IPv4 and IPv6; a tool that cannot list a rule is not started), ip rules
(all, pyroute2) and routes of connpin's table range (kernel/tableroutes). It runs before every
hook's converge, so it stays cheap: ~15 ms (docs/performance.md). Decides nothing; a part it
cannot read is named in `unread`, never guessed.
"""

from __future__ import annotations

import json
import os
import socket

from connpin import conflicts as C
from connpin.kernel import nft as nftool
from connpin.kernel import state, tools
from connpin.model import Config

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
FIB_RULE_INVERT = 0x2


def _run(argv: list[str]) -> tuple[int, str, str]:
    """Run a listing tool through the one runner (found there, with its timeout); a tool that
    cannot run or times out is an unreadable part, not an error."""
    try:
        p = tools.run(argv)
    except tools.ToolFailure as e:
        return 127, "", str(e)
    return p.returncode, p.stdout, p.stderr


def _oneline(text: str) -> str:
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())


#: The tables iptables-nft keeps in nft (families ip and ip6), named as iptables names them.
XT_TABLES = ("filter", "mangle", "nat", "raw", "security")


def _shows_anything(flavour: str, family: str, nft_tables: set[tuple[str, str]] | None) -> bool:
    """Whether `<family>tables-<flavour>-save` can list a rule (the tool is not started
    otherwise: ~1-2 ms each on every hook call). iptables-nft keeps its rules in nft tables named
    XT_TABLES; iptables-legacy-save lists the tables /proc/net/ip{,6}_tables_names names in this
    namespace, and prints nothing without that file (x_tables never used here)."""
    if flavour == "nft":
        return nft_tables is None or any((family, t) in nft_tables for t in XT_TABLES)
    try:
        with open(f"/proc/net/{family}_tables_names") as f:
            return bool(f.read().strip())
    except FileNotFoundError:
        return False
    except OSError:  # not readable (not root): let the tool say why
        return True


def _iptables(unread: list[str], nft_tables: set[tuple[str, str]] | None
              ) -> tuple[list[C.MarkWrite], set[tuple[str, str]]]:
    """Mark and label writes of both flavours, and the nft (family, table)s iptables-nft manages
    (the nft listing skips them: iptables-nft-save shows them in the user's own words).
    `nft_tables`: the (family, name) of every nft table (None: not listed)."""
    writes: list[C.MarkWrite] = []
    managed: set[tuple[str, str]] = set()
    names: dict[str, int] | None = None
    for flavour in ("nft", "legacy"):
        for family, base in (("ip", "iptables"), ("ip6", "ip6tables")):
            exe = f"{base}-{flavour}-save"
            if not tools.exists(exe) or not _shows_anything(flavour, family, nft_tables):
                continue
            rc, out, err = _run([exe])
            if rc != 0:
                unread.append(f"{base}-{flavour}-save: {_oneline(err) or f'exit {rc}'}")
                continue
            if names is None and "connlabel" in out:
                names = _label_names()
            writes += C.iptables_writes(out, f"iptables-{flavour}", family, names)
            if flavour == "nft":
                managed |= {(family, t) for t in C.iptables_tables(out)}
    return writes, managed


#: Where iptables (libnetfilter_conntrack) finds names for conntrack label bits.
CONNLABEL_CONF = "/etc/xtables/connlabel.conf"


def _label_names() -> dict[str, int]:
    """The label names iptables-save prints instead of bit numbers (none without the file)."""
    try:
        with open(CONNLABEL_CONF) as f:
            return C.label_names(f.read())
    except OSError:
        return {}


def _ruleset(unread: list[str]) -> dict | None:
    """`nft -j list ruleset`, parsed (None: no nft tool, or unreadable: named in `unread`)."""
    if not nftool.available():
        return None
    rc, out, err = _run(["nft", "-j", "list", "ruleset"])
    if rc != 0:
        unread.append(f"nft list ruleset: {_oneline(err) or f'exit {rc}'}")
        return None
    try:
        return json.loads(out or "{}")
    except ValueError:
        unread.append("nft list ruleset: unreadable JSON")
        return None


def _tables(doc: dict | None) -> set[tuple[str, str]] | None:
    if doc is None:
        return None
    return {(o["table"].get("family"), o["table"].get("name")) for o in doc.get("nftables", [])
            if isinstance(o, dict) and isinstance(o.get("table"), dict)}


def _nft(config: Config, doc: dict | None, skip: set[tuple[str, str]], owned: str | None
         ) -> tuple[list[C.MarkWrite], str | None, tuple[str, ...]]:
    """nft mark writes, the comment of `table inet <nft_table>` (None: no such table), and the
    inet tables that carry connpin's comment."""
    if doc is None:
        return [], None, ()
    writes = C.nft_writes(doc, skip)
    inet = [o["table"]["name"] for o in doc.get("nftables", []) if isinstance(o, dict) and
            o.get("table", {}).get("family") == "inet"]
    # nft 1.0.6 leaves table comments out of its JSON: read each inet table's own listing,
    # but that of the table the state file says connpin created (conflicts trusts the state for
    # it: _owns_table; one nft process less on every hook call)
    comments = {name: C.OWNER_COMMENT if name == owned else table_comment(name)
                for name in inet}
    own = tuple(n for n, c in comments.items() if c == C.OWNER_COMMENT)
    return writes, comments.get(config.pinning.nft_table), own


def table_comment(name: str) -> str:
    """The comment of `table inet <name>` ("" when it has none)."""
    rc, text, err = _run(["nft", "list", "table", "inet", name])
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("comment "):
            return line[len("comment "):].strip().strip('"')
        if line.startswith(("chain ", "map ", "set ")):
            break
    return ""


def foreign_table(config: Config) -> bool:
    """Whether `table inet <nft_table>` exists and is not connpin's (cheap on the usual path:
    the state file names the table connpin created)."""
    name = config.pinning.nft_table
    try:
        if state.load().get("slice", {}).get("nft_table") == name:
            return False
    except OSError:
        pass
    if not nftool.available() or nftool.listing("inet", name) is None:
        return False
    return table_comment(name) != C.OWNER_COMMENT


def _rules_routes(config: Config) -> tuple[list[C.IpRule], list[C.IpRoute]]:
    from pyroute2.iproute import IPRoute

    tables = C.table_range(config)
    rules: list[C.IpRule] = []
    routes: list[C.IpRoute] = []
    families = (4, 6) if os.path.isdir("/proc/sys/net/ipv6") else (4,)
    with IPRoute(strict_check=True) as ipr:
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        for f in families:
            for r in ipr.get_rules(family=_AF[f]):
                mask = r.get_attr("FRA_FWMASK")
                mark = r.get_attr("FRA_FWMARK")
                if mask is not None and mark is None:
                    mark = 0
                if mark is not None and mask is None:
                    mask = C.ALL
                action = _ACTIONS.get(r["action"], f"action{r['action']}")
                rules.append(C.IpRule(
                    family=f, priority=r.get_attr("FRA_PRIORITY") or 0, action=action,
                    table=(r.get_attr("FRA_TABLE") or r["table"]) if action == "lookup" else None,
                    fwmark=mark, fwmask=mask, invert=bool(r["flags"] & FIB_RULE_INVERT),
                    protocol=r.get_attr("FRA_PROTOCOL") or 0))
            for rt in _range_routes(ipr, f, tables):
                table = rt.get_attr("RTA_TABLE") or rt["table"]
                if table not in tables:
                    continue
                dst = rt.get_attr("RTA_DST")
                routes.append(C.IpRoute(
                    family=f, table=table,
                    dst="default" if not rt["dst_len"] else f"{dst}/{rt['dst_len']}",
                    oif=names.get(rt.get_attr("RTA_OIF")), protocol=rt["proto"]))
    return rules, routes


#: Widest table range read one table id at a time (~7 us an id and family, kernel/tableroutes;
#: a mask of up to 12 bits). Wider, one full dump: its cost grows with others' routes.
PER_TABLE_MAX = 4096


def _range_routes(ipr, family: int, tables: range) -> list:
    """Routes in connpin's table range, read one table at a time with the kernel filtering
    (a full dump costs seconds with a BGP table or a mesh VPN's routes loaded elsewhere): the
    cost grows with the range (one request per table id), not with others' routes. A range
    wider than PER_TABLE_MAX ids is read in one full dump."""
    if len(tables) > PER_TABLE_MAX:
        return list(ipr.route("dump", family=_AF[family], dump_filter={}))
    from connpin.kernel import tableroutes

    return tableroutes.read(_AF[family], tables)


def take(config: Config) -> C.Inventory:
    """Everything conflicts() needs, listed from this namespace."""
    unread: list[str] = []
    try:
        owned = state.load().get("slice", {}).get("nft_table")
    except OSError:  # not root: the state directory is private
        owned = None
    doc = _ruleset(unread)
    ipt_writes, managed = _iptables(unread, _tables(doc))
    nft_writes, comment, own = _nft(config, doc, managed, owned)
    rules, routes = _rules_routes(config)
    return C.Inventory(tuple(nft_writes + ipt_writes), tuple(rules), tuple(routes), comment,
                       owned, own, tuple(unread))
