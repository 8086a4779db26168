"""The starter config `connpin init` writes: what was found on the machine (default routes of the
main table, pppd peer files) -> the uplinks to propose -> commented TOML that loads. Pure.

Uplinks come in the order of their default routes' metrics (lowest first), so the default
`priority` (the position in the file) agrees with the main table about which uplink is the
preferred one. A pppd peer becomes an uplink on the interface its `ifname`/`unit` option names,
or, without one, on the ppp<N> pppd would give it if the peers started in name order (the
comment says so and how to make it fixed).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from connpin import alloc, model

PEERS_DIR = "/etc/ppp/peers"


@dataclass(frozen=True)
class DefaultRoute:
    """A default route of the main table: where it leaves, its metric and gateway."""

    interface: str
    family: int  # 4 | 6
    metric: int
    gateway: str | None  # None: a `dev` route (point-to-point: PPP, tunnels)


@dataclass(frozen=True)
class Peer:
    """A pppd peer file (/etc/ppp/peers/NAME) and the interface its options name."""

    name: str
    interface: str | None  # from `ifname NAME` or `unit N` (pppN); None: pppd picks


@dataclass(frozen=True)
class Candidate:
    """One [[uplink]] to write, and what it was found from (for its comments and --json)."""

    name: str
    interface: str
    gateway: str | None  # the IPv4 default route's gateway (Ethernet-like), None: dev route
    metric: int | None  # the best default route's metric; None: no default route now
    ipv6: bool  # main has an IPv6 default route on it
    peer: str | None = None  # the pppd peer it stands for
    guessed: bool = False  # the peer names no interface: ppp<N> in start order is a guess
    mark: int | None = None  # set only where its name's mark collides with an earlier uplink's

    def as_dict(self) -> dict:
        return {"name": self.name, "interface": self.interface, "gateway": self.gateway,
                "metric": self.metric, "ipv6": self.ipv6, "ppp_peer": self.peer,
                "interface_guessed": self.guessed,
                "mark": None if self.mark is None else f"{self.mark:#010x}"}


def peer_interface(text: str) -> str | None:
    """The interface a pppd options file names: `ifname NAME` (pppd >= 2.4.8) over `unit N`
    (pppN); the last of each wins, as in pppd. None when it names none (or an invalid one)."""
    unit = ifname = None
    for raw in text.splitlines():
        try:
            words = shlex.split(raw, comments=True)  # pppd's words: quotes, # comments
        except ValueError:
            continue
        if len(words) >= 2 and words[0] == "unit" and words[1].isdigit():
            unit = int(words[1])
        elif len(words) >= 2 and words[0] == "ifname":
            ifname = words[1]
    if ifname is not None and model.valid_ifname(ifname):
        return ifname
    if unit is not None and model.valid_ifname(f"ppp{unit}"):
        return f"ppp{unit}"
    return None


def peers(files: Mapping[str, str]) -> list[Peer]:
    """Peer file name -> text, as Peers in name order (editor backups and dotfiles skipped)."""
    return [Peer(n, peer_interface(t)) for n, t in sorted(files.items())
            if not n.startswith(".") and not n.endswith(("~", ".bak", ".orig", ".dpkg-old",
                                                          ".dpkg-dist", ".dpkg-new"))]


def uplink_name(text: str) -> str:
    """A valid uplink name made from an interface or peer name ("Telekom.DSL" -> telekom-dsl)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:32].rstrip("-_")
    return name or "uplink"


def candidates(routes: Iterable[DefaultRoute], found_peers: Iterable[Peer],
               mask: int = model.DEFAULT_MARK_MASK) -> list[Candidate]:
    """The uplinks to propose: every interface with a default route (best metric first; IPv4's
    metric decides, IPv6's where it has no IPv4 one), then the peers without one, by name."""
    v4: dict[str, DefaultRoute] = {}
    v6: dict[str, DefaultRoute] = {}
    for r in routes:
        best = v4 if r.family == 4 else v6
        if r.interface != "lo" and model.valid_ifname(r.interface) and (
                r.interface not in best or r.metric < best[r.interface].metric):
            best[r.interface] = r
    routed = sorted(set(v4) | set(v6),
                    key=lambda i: (i not in v4, (v4.get(i) or v6[i]).metric, i))
    plist = list(found_peers)
    named = {p.interface for p in plist if p.interface}
    free = (f"ppp{n}" for n in range(1000) if f"ppp{n}" not in named)
    on: dict[str, tuple[Peer, bool]] = {}  # interface -> (peer, guessed)
    for p in plist:
        iface = p.interface or next(free)
        on.setdefault(iface, (p, p.interface is None))
    out: list[Candidate] = []
    for iface in routed:
        peer, guessed = on.pop(iface, (None, False))
        r = v4.get(iface) or v6[iface]
        out.append(Candidate(uplink_name(peer.name if peer else iface), iface,
                             v4[iface].gateway if iface in v4 else None, r.metric,
                             iface in v6, peer.name if peer else None, guessed))
    for iface, (peer, guessed) in sorted(on.items(), key=lambda kv: kv[1][0].name):
        out.append(Candidate(uplink_name(peer.name), iface, None, None, False, peer.name,
                             guessed))
    return _distinct(out, mask)


def _distinct(cands: list[Candidate], mask: int) -> list[Candidate]:
    """Unique names (a suffix -2, -3.. on repeats) and marks (an explicit free `mark` where a
    name hashes onto an earlier uplink's mark)."""
    names: set[str] = set()
    taken: set[int] = set()
    out = []
    for c in cands:
        name, n = c.name, 1
        while name in names:
            n += 1
            name = f"{c.name[:29]}-{n}"
        names.add(name)
        index, mark = alloc.home(name, mask), None
        if index in taken:
            index = next(i for i in range(1, alloc.capacity(mask) + 1) if i not in taken
                         and i not in {alloc.home(x.name, mask) for x in cands})
            mark = alloc.deposit(index, mask)
        taken.add(index)
        out.append(Candidate(name, c.interface, c.gateway, c.metric, c.ipv6, c.peer,
                             c.guessed, mark))
    return out


_HEAD = """\
# connpin config: a starter written by `connpin init` from what it found:
#   default routes: the main table{netns}
#   pppd peers:     {peers_dir}
# Review it (every key is explained; the commented ones show their defaults), then:
#   connpin check -c FILE     what on this machine collides with connpin's marks, rules, tables
#   connpin plan -c FILE      the complete ruleset, rules and routes it would install
#   connpin apply -c FILE     install (then hooks or the daemon: `connpin hooks install ...`)
# Reference: connpin.toml(5), or the "Config reference" in connpin's README.

[pinning]
# The slice of the machine connpin owns; the defaults stay clear of mwan3, Tailscale,
# kube-proxy and WireGuard. `connpin check` suggests another mask when something uses these bits.
# mark_mask = 0xff000000   # the packet and conntrack mark bits connpin owns
# table_base = 1000        # first routing table id connpin may use
# rule_priority = 10000    # first ip rule priority connpin may use (a band of 1024)
# backend = "nftables"     # "nftables", "iptables", or "auto" (iptables when nft is missing)
# sysctl = true            # rp_filter loose and src_valid_mark on uplinks (false: leave alone)
# failback = "keep"        # when a preferred uplink returns, what happens to connections pinned
#                          # to the others: "keep", "flush" or "flush-idle"
"""


def _uplink(c: Candidate, position: int) -> list[str]:
    lines = ["", "[[uplink]]"]
    if c.metric is not None:
        via = f"via {c.gateway} " if c.gateway else ""
        lines.append(f"# found: default route {via}dev {c.interface}, metric {c.metric}"
                     + (" (and an IPv6 one)" if c.ipv6 else ""))
    if c.peer is not None:
        lines.append(f"# found: pppd peer {c.peer!r}"
                     + (f" (`pppd call {c.peer}`)" if c.metric is None else ""))
        if c.guessed:
            lines += ["# its peer file names no interface and pppd numbers links as they "
                      f"start: to make it {c.interface},",
                      f"# add `unit {c.interface[3:]}` (or `ifname {c.interface}`) to "
                      f"/etc/ppp/peers/{c.peer}"]
    lines.append(f"name = {_q(c.name)}".ljust(27) + "# how status, logs and commands call it")
    lines.append(f"interface = {_q(c.interface)}".ljust(27)
                 + "# exact name, or a pattern like \"ppp*\"")
    if c.mark is not None:
        lines.append(f"mark = {c.mark:#010x}".ljust(27)
                     + "# set: its name's mark would collide with an earlier uplink's")
    if c.gateway:
        lines.append('gateway = "auto"'.ljust(27)
                     + "# Ethernet-like: follow main's default route on it (DHCP)")
    lines.append("masquerade = false".ljust(27)
                 + "# true: connpin NATs what leaves here (false: your firewall does)")
    lines.append(f"# priority = {position}".ljust(27)
                 + "# lower is preferred; default: the position in this file")
    lines.append('# on_down = "keep"'.ljust(27)
                 + '# "flush": drop its pinned connections when it goes down')
    if c.ipv6:
        lines.append("# masquerade6 = false".ljust(27)
                     + "# main has an IPv6 default route here: IPv6 is pinned too")
    lines.append('# check = ["icmp:9.9.9.9", "icmp:1.1.1.1"]   # health probes through it '
                 "(`connpin watch`,")
    lines.append("#" + " " * 26 + "# docs/health.md); IP addresses only, no host names")
    return lines


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_NONE = """
# No uplink found: no default route in the main table and no pppd peer. Describe each uplink:
# [[uplink]]
# name = "isp-a"
# interface = "ppp0"
# masquerade = false
"""


def render(cands: list[Candidate], netns: str | None = None, peers_dir: str = PEERS_DIR
           ) -> str:
    """The commented TOML. `model.loads` takes it (tests hold that for every shape)."""
    where = f" of network namespace {netns}" if netns else ""
    lines = _HEAD.format(netns=where, peers_dir=peers_dir).rstrip("\n").splitlines()
    for pos, c in enumerate(cands, 1):
        lines += _uplink(c, pos)
    text = "\n".join(lines) + "\n"
    return text + (_NONE if not cands else "")
