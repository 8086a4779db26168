"""What on this machine collides with connpin's slice, and why: the one decision behind `check`,
`apply`'s refusal and `status`.

Pure: the kernel side (kernel/inventory.py) only lists what is there; this module reads those
listings (nft JSON, iptables-save text, rules and routes as values) and decides. What connpin
owns is recognised by the marks it leaves in the kernel: `comment "connpin"` on its nft table,
routing protocol OWNER_PROTO on its ip rules and routes, chains named CONNPIN-*.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from connpin import alloc
from connpin.health import passive
from connpin.model import Config

ALL = 0xFFFFFFFF
#: Routing protocol on connpin's ip rules and routes (`proto 201`), like routing daemons do;
#: outside the values the kernel and iproute2 reserve or routing daemons use.
OWNER_PROTO = 201
#: Comment on connpin's nft table.
OWNER_COMMENT = "connpin"
#: Conflicts `pinning.allow_shared_bits` can allow (overlapping mark bits); the others cannot.
SHAREABLE = ("write", "match")


@dataclass(frozen=True)
class MarkWrite:
    """A rule that writes a packet mark ("meta mark") or conntrack mark ("ct mark")."""

    source: str  # nft | iptables-nft | iptables-legacy
    family: str  # nft family (ip, ip6, inet, ...) or ip / ip6 for iptables
    table: str
    chain: str
    target: str  # "meta mark" | "ct mark"
    bits: int  # the bits it may change; ALL when it writes the whole mark
    rule: str  # how to find it: nft handle or iptables-save line
    label: int | None = None  # `ct label set N` (target "ct label", bits 0): the label bit

    @property
    def where(self) -> str:
        if self.source == "nft":
            return f"nft table {self.family} {self.table} chain {self.chain} {self.rule}"
        return f"{self.source} {self.family} table {self.table}: {self.rule}"


@dataclass(frozen=True)
class IpRule:
    family: int
    priority: int
    action: str = "lookup"
    table: int | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    invert: bool = False
    protocol: int = 0

    def __str__(self) -> str:
        ip = "ip -6" if self.family == 6 else "ip"
        out = f"{ip} rule {self.priority}"
        if self.fwmark is not None:
            out += f"{' not' if self.invert else ''} fwmark {self.fwmark:#x}/{self.fwmask:#x}"
        out += f" lookup {self.table}" if self.action == "lookup" else f" {self.action}"
        return out + f" (proto {self.protocol})"


@dataclass(frozen=True)
class IpRoute:
    family: int
    table: int
    dst: str
    oif: str | None = None
    protocol: int = 0

    def __str__(self) -> str:
        ip = "ip -6" if self.family == 6 else "ip"
        dev = f" dev {self.oif}" if self.oif else ""
        return f"{ip} route {self.dst}{dev} table {self.table} (proto {self.protocol})"


@dataclass(frozen=True)
class Inventory:
    """What kernel/inventory.py listed. `unread`: parts it could not list (and why)."""

    writes: tuple[MarkWrite, ...] = ()
    rules: tuple[IpRule, ...] = ()
    routes: tuple[IpRoute, ...] = ()
    # inet table named pinning.nft_table: None absent, else its comment ("" when none)
    nft_table_comment: str | None = None
    owned_table: str | None = None  # the table the state file says connpin created
    own_tables: tuple[str, ...] = ()  # inet tables carrying comment "connpin" (any name)
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conflict:
    kind: str  # write | match | band | range | lookup | table | label
    where: str
    message: str
    bits: int = 0
    allowed: bool = False  # inside pinning.allow_shared_bits

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + (" (allowed by allow_shared_bits)"
                                                  if self.allowed else "")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "where": self.where, "bits": f"{self.bits:#010x}",
                "message": self.message, "allowed": self.allowed}


# -- reading listings (pure parsing) ---------------------------------------------------------
def _bits(expr: object, key: dict) -> int:
    """The bits of the mark `key` (the expression being written) an nft value may change."""
    if expr == key:
        return 0
    if isinstance(expr, dict) and len(expr) == 1:
        op, args = next(iter(expr.items()))
        if op in ("&", "|", "^") and isinstance(args, list) and len(args) == 2 and \
                isinstance(args[1], int):
            inner = _bits(args[0], key)
            return inner | (~args[1] & ALL if op == "&" else args[1])
    return ALL  # a constant, another mark, a map: the whole mark is replaced


def nft_writes(doc: dict, skip_tables: Iterable[tuple[str, str]] = ()) -> list[MarkWrite]:
    """Mark writes in `nft -j list ruleset` output, except in the (family, table)s given."""
    skip = set(skip_tables)
    out = []
    for obj in doc.get("nftables", []):
        rule = obj.get("rule") if isinstance(obj, dict) else None
        if not rule or (rule.get("family"), rule.get("table")) in skip:
            continue
        for stmt in _walk(rule.get("expr", [])):
            mangle = stmt.get("mangle")
            if not isinstance(mangle, dict):
                continue
            key = mangle.get("key")
            target = next((t for t in ("meta", "ct") if isinstance(key, dict) and
                           key.get(t, {}).get("key") == "mark"), None)
            if target is None:
                value = mangle.get("value")
                if isinstance(key, dict) and key.get("ct", {}).get("key") == "label" and \
                        isinstance(value, int):
                    out.append(MarkWrite("nft", rule["family"], rule["table"], rule["chain"],
                                         "ct label", 0, f"handle {rule.get('handle')}", value))
                continue
            out.append(MarkWrite("nft", rule["family"], rule["table"], rule["chain"],
                                 f"{target} mark", _bits(mangle.get("value"), key),
                                 f"handle {rule.get('handle')}"))
    return out


def _walk(exprs: list) -> Iterable[dict]:
    for e in exprs:
        if isinstance(e, dict):
            yield e


def _num(text: str) -> int:
    return int(text, 0)


def _pair(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return _num(value), _num(mask) if mask else ALL


def iptables_writes(text: str, source: str, family: str,
                    label_names: dict[str, int] | None = None) -> list[MarkWrite]:
    """Mark writes in iptables-save output (which spells every MARK/CONNMARK in its long form:
    `--set-xmark V/M`, `--save-mark --nfmask N --ctmask C`, `--restore-mark ...`), and
    conntrack label writes: the connlabel *match* with `--set` (`-m connlabel --label "127"
    --set`; iptables has no CONNLABEL target) sets its bit on every packet reaching it, negated or
    not. `label_names`: /etc/xtables/connlabel.conf's names, which iptables-save prints instead
    of the bit when the file names it."""
    out, table = [], ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if not line.startswith("-A "):
            continue
        words = line.split()
        chain = words[1]
        if "connlabel" in words:
            out += [MarkWrite(source, family, table, chain, "ct label", 0, line, bit)
                    for bit in _label_sets(line, label_names or {})]
        if "-j" not in words:
            continue
        j = words.index("-j")
        target, args = words[j + 1] if j + 1 < len(words) else "", words[j + 2:]
        if target not in ("MARK", "CONNMARK"):
            continue
        opts = {args[i]: args[i + 1] if i + 1 < len(args) else "" for i in range(len(args))
                if args[i].startswith("--")}
        what, bits = ("meta mark" if target == "MARK" else "ct mark"), ALL
        if "--set-xmark" in opts or "--set-mark" in opts:
            value, mask = _pair(opts.get("--set-xmark") or opts["--set-mark"])
            bits = (value | mask) & ALL
        elif "--save-mark" in opts:  # ctmark = (ctmark & ~ctmask) ^ (nfmark & nfmask)
            bits = _num(opts.get("--ctmask") or opts.get("--mask") or "0xffffffff")
        elif "--restore-mark" in opts:  # nfmark = (nfmark & ~nfmask) ^ (ctmark & ctmask)
            what = "meta mark"
            bits = _num(opts.get("--nfmask") or opts.get("--mask") or "0xffffffff")
        elif "--and-mark" in opts:
            bits = ~_num(opts["--and-mark"]) & ALL
        elif "--or-mark" in opts or "--xor-mark" in opts:
            bits = _num(opts.get("--or-mark") or opts["--xor-mark"])
        out.append(MarkWrite(source, family, table, chain, what, bits, line))
    return out


def _label_sets(line: str, names: dict[str, int]) -> list[int]:
    """The label bits the `-m connlabel ... --set` matches of one iptables-save line set (a
    name not in `names` cannot be a bit number: left out)."""
    import shlex

    try:
        words = shlex.split(line)  # `--label "127"`: iptables-save quotes the label
    except ValueError:
        words = line.split()
    out: list[int] = []
    for i, w in enumerate(words):
        if w != "-m" or i + 1 >= len(words) or words[i + 1] != "connlabel":
            continue
        label, is_set = None, False
        for j in range(i + 2, len(words)):  # this match's options, up to the next -m/-j/-g
            if words[j] in ("-m", "-j", "-g"):
                break
            if words[j] == "--set":
                is_set = True
            elif words[j] == "--label" and j + 1 < len(words):
                label = words[j + 1]
        if not is_set or label is None:
            continue
        bit = int(label) if label.isdigit() else names.get(label)
        if bit is not None:
            out.append(bit)
    return out


def label_names(text: str) -> dict[str, int]:
    """connlabel.conf (lines `BIT NAME`, `#` comments) as name -> bit."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0].isdigit():
            out.setdefault(parts[1], int(parts[0]))
    return out


def iptables_tables(text: str) -> list[str]:
    """The tables an iptables-save output lists (`*mangle` ...)."""
    return [ln[1:].strip() for ln in text.splitlines() if ln.startswith("*")]


# -- deciding ---------------------------------------------------------------------------------
def table_range(config: Config) -> range:
    pin = config.pinning
    return range(pin.table_base, pin.table_base + alloc.capacity(pin.mark_mask))


def _own_write(w: MarkWrite, config: Config, inv: Inventory) -> bool:
    if w.source == "nft":  # also a former table, after pinning.nft_table changed
        return w.family == "inet" and (w.table in inv.own_tables or w.table == inv.owned_table)
    return w.chain.startswith("CONNPIN-")


def _owns_table(config: Config, inv: Inventory) -> bool:
    return inv.nft_table_comment == OWNER_COMMENT or inv.owned_table == config.pinning.nft_table


def conflicts(config: Config, inv: Inventory) -> list[Conflict]:
    """Everything in `inv` that collides with connpin's slice under `config`, in a stable order."""
    pin = config.pinning
    mask, allow = pin.mark_mask, pin.allow_shared_bits
    band, tables = pin.rule_range, table_range(config)
    out: list[Conflict] = []

    def shared(kind: str, where: str, message: str, bits: int) -> None:
        out.append(Conflict(kind, where, message, bits, allowed=bits & ~allow == 0))

    if inv.nft_table_comment is not None and not _owns_table(config, inv):
        out.append(Conflict(
            "table", f"nft table inet {pin.nft_table}",
            "exists and was not created by connpin (no comment \"connpin\"); connpin never "
            "replaces it: choose another pinning.nft_table"))
    for w in inv.writes:
        if _own_write(w, config, inv) or not w.bits & mask:
            continue
        how = "the whole mark (unmasked)" if w.bits == ALL else f"bits {w.bits:#010x}"
        shared("write", w.where, f"writes {w.target}: {how}; overlaps mark_mask {mask:#010x} "
               f"in {w.bits & mask:#010x}", w.bits & mask)
    out += _labels(config, inv)
    for r in inv.rules:
        if r.protocol == OWNER_PROTO:
            continue
        if r.priority in band:  # one line per rule: the first reason
            out.append(Conflict("band", str(r), f"inside connpin's rule priorities "
                                f"{band.start}..{band.stop - 1}, not installed by connpin"))
            continue
        n = len(out)
        if r.fwmark is not None and r.fwmask is not None and r.fwmask & mask:
            overlap = r.fwmask & mask
            # An exact-value rule (`fwmark 0xca6c`, full mask) looking for a value without
            # connpin's bits is another tool's own value: not reported (docs/coexistence.md).
            if r.fwmark & mask or (r.fwmask != ALL and r.priority < band.start):
                why = ("looks for bits connpin writes" if r.fwmark & mask else
                       "comes before connpin's rules, and connpin's bits change whether it "
                       "matches")
                shared("match", str(r), f"matches mark bits {overlap:#010x} of mark_mask "
                       f"{mask:#010x}: {why}", overlap)
        if len(out) == n and r.action == "lookup" and r.table in tables:
            out.append(Conflict("lookup", str(r), f"uses table {r.table}, inside connpin's "
                                f"table range {tables.start}..{tables.stop - 1}"))
    for rt in inv.routes:
        if rt.protocol != OWNER_PROTO and rt.table in tables:
            out.append(Conflict("range", str(rt), f"in table {rt.table}, inside connpin's "
                                f"table range {tables.start}..{tables.stop - 1}, not installed "
                                "by connpin"))
    return out


def _labels(config: Config, inv: Inventory) -> list[Conflict]:
    """Other rules setting the conntrack label bits of the passive health signal (rendered
    with `check` and [health] passive: bits passive_label - 1 and passive_label)."""
    if not passive.rendered(config):
        return []
    p = config.passive
    return [Conflict("label", w.where, f"sets conntrack label bit {w.label}, which connpin's "
                     f"passive health signal uses (bits {p.label - 1} and {p.label}): set "
                     "health.passive_label to free bits, or health.passive = false")
            for w in inv.writes if w.label in (p.label - 1, p.label)
            and not _own_write(w, config, inv)]


def blocking(found: list[Conflict]) -> list[Conflict]:
    """The conflicts that stop `apply`: all but the allowed ones."""
    return [c for c in found if not c.allowed]


def used_bits(config: Config, inv: Inventory) -> int:
    """Mark bits others on this machine write or match (unmasked writes excluded: no mask
    avoids them)."""
    used = 0
    for w in inv.writes:
        if not _own_write(w, config, inv) and w.bits != ALL:
            used |= w.bits
    for r in inv.rules:
        if r.protocol != OWNER_PROTO and r.fwmark is not None and r.fwmask is not None and \
                r.fwmask != ALL:
            used |= r.fwmask
    return used


def suggest_mask(config: Config, inv: Inventory) -> int | None:
    """A mask with as many bits as pinning.mark_mask that nothing listed uses, preferring
    contiguous bits at the top; None when too few bits are free."""
    width = bin(config.pinning.mark_mask).count("1")
    used = used_bits(config, inv)
    for low in range(32 - width, -1, -1):
        candidate = ((1 << width) - 1) << low
        if not candidate & used:
            return candidate
    free = [b for b in range(31, -1, -1) if not used >> b & 1][:width]
    return sum(1 << b for b in free) if len(free) == width else None


@dataclass
class Report:
    found: list[Conflict] = field(default_factory=list)
    suggested: int | None = None
    unread: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"conflicts": [c.as_dict() for c in self.found],
                "suggested_mask": None if self.suggested is None else f"{self.suggested:#010x}",
                "unread": list(self.unread)}

    def lines(self) -> list[str]:
        out = [f"conflict: {c}" for c in self.found]
        if any(c.kind in SHAREABLE and not c.allowed for c in self.found):
            out.append(f"suggested mark_mask = {self.suggested:#010x} (no other rule on this "
                       "machine uses these bits)" if self.suggested is not None else
                       "no mask of the same width is free of the other mark users")
        out += [f"not checked: {u}" for u in self.unread]
        return out


def report(config: Config, inv: Inventory) -> Report:
    return Report(conflicts(config, inv), suggest_mask(config, inv), inv.unread)
