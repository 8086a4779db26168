"""The daemon's event classifier: which netlink messages can concern an uplink, and what they say.

Pure. Three levels, cheapest first:
- `route_filter()`: a classic BPF program attached to the rtnetlink socket, so the kernel drops
  route changes that cannot concern an uplink (anything but a default route in main) before they
  reach the socket buffer: a routing daemon loading a full table costs the daemon nothing.
- `worth_decoding()`: a header-level look (struct, no decoding) at one raw message: route
  messages as above, address messages only for interfaces that are not known to be foreign.
- `Classifier`: the decoded message -> (interface, what happened), keeping the ifindex -> name
  map from link events; nf_tables messages -> what happened to connpin's own table.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable
from typing import Any

from connpin.const import IFF_UP, MAIN_TABLE
from connpin.watch.schedule import UNKNOWN

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RT_TABLE_COMPAT = 252  # rtm_table of a table >= 256 (the real id is in RTA_TABLE)
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_ALIGN = 4
# offsets after the 16-byte nlmsghdr
RTM_DST_LEN, RTM_TABLE = 17, 20  # struct rtmsg: family, dst_len, src_len, tos, table, ...
IF_INDEX = 20  # struct ifaddrmsg: family, prefixlen, flags, scope, index (u32)
# ifinfomsg: family, pad, type (u16), index (i32) -> also at 20

NFPROTO_INET = 1
NFT_VERBS = {0: "table added", 2: "table deleted", 3: "chain added", 5: "chain deleted",
             6: "rule added", 8: "rule deleted", 9: "set added", 11: "set deleted",
             12: "element added", 14: "element deleted"}
NFT_TABLE_ATTRS = ("NFTA_TABLE_NAME", "NFTA_CHAIN_TABLE", "NFTA_RULE_TABLE", "NFTA_SET_TABLE",
                   "NFTA_SET_ELEM_LIST_TABLE")

# classic BPF opcodes (linux/filter.h)
_LDH_ABS, _LDB_ABS, _JEQ_K, _RET_K = 0x28, 0x30, 0x15, 0x06
_ACCEPT = 0xFFFFFFFF
_SOCK_FILTER = struct.Struct("=HBBI")


def _as_loaded(value: int) -> int:
    """A host-order u16 as BPF's `ldh` (network order) reads it."""
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


def route_filter() -> bytes:
    """struct sock_filter[] for SO_ATTACH_FILTER: route messages pass only for a default route
    (dst_len 0) in main (or a table >= 256, whose id the header cannot hold); all else passes."""
    prog = [
        (_LDH_ABS, 0, 0, 4),                              # 0: nlmsg_type
        (_JEQ_K, 2, 0, _as_loaded(RTM_NEWROUTE)),         # 1: -> 4
        (_JEQ_K, 1, 0, _as_loaded(RTM_DELROUTE)),         # 2: -> 4
        (_RET_K, 0, 0, _ACCEPT),                          # 3: not a route: keep
        (_LDB_ABS, 0, 0, RTM_DST_LEN),                    # 4
        (_JEQ_K, 0, 4, 0),                                # 5: dst_len 0 -> 6, else drop
        (_LDB_ABS, 0, 0, RTM_TABLE),                      # 6
        (_JEQ_K, 1, 0, MAIN_TABLE),                       # 7: -> 9
        (_JEQ_K, 0, 1, RT_TABLE_COMPAT),                  # 8: -> 9, else drop
        (_RET_K, 0, 0, _ACCEPT),                          # 9
        (_RET_K, 0, 0, 0),                                # 10: drop
    ]
    return b"".join(_SOCK_FILTER.pack(*ins) for ins in prog)


def run_filter(program: bytes, packet: bytes) -> bool:
    """Interpret `route_filter()`'s subset of classic BPF (for unit tests of the program)."""
    ins = [_SOCK_FILTER.unpack_from(program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = ins[pc]
        if code == _LDH_ABS:
            acc = int.from_bytes(packet[k:k + 2], "big")
        elif code == _LDB_ABS:
            acc = packet[k]
        elif code == _JEQ_K:
            pc += jt if acc == k else jf
        elif code == _RET_K:
            return k != 0
        pc += 1


def messages(data: bytes | memoryview) -> list[tuple[int, int, int]]:
    """(type, offset, length) of each netlink message in one datagram, from the headers only."""
    out, off, n = [], 0, len(data)
    while off + NLMSGHDR.size <= n:
        length, kind = NLMSGHDR.unpack_from(data, off)[:2]
        if length < NLMSGHDR.size or off + length > n:
            break
        out.append((kind, off, length))
        off += (length + NLMSG_ALIGN - 1) & ~(NLMSG_ALIGN - 1)
    return out


def worth_decoding(data: bytes | memoryview, off: int, kind: int,
                   foreign: Callable[[int], bool]) -> bool:
    """Whether the rtnetlink message at `off` may concern an uplink (header fields only).
    `foreign(index)`: the interface is known and is not an uplink's."""
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        if len(data) < off + RTM_TABLE + 1:
            return False
        return data[off + RTM_DST_LEN] == 0 and data[off + RTM_TABLE] in (MAIN_TABLE,
                                                                         RT_TABLE_COMPAT)
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        if len(data) < off + IF_INDEX + 4:
            return False
        return not foreign(struct.unpack_from("=I", data, off + IF_INDEX)[0])
    return kind in (RTM_NEWLINK, RTM_DELLINK)


class Classifier:
    """Decoded messages -> (interface, what happened) for the ones that may concern an uplink.

    An interface not known yet (an event racing its link message) is kept: converging for
    nothing costs little, missing an uplink costs a connection."""

    def __init__(self, relevant: Callable[[str], bool], nft_table: str) -> None:
        self.relevant = relevant  # the config matches this interface name
        self.nft_table = nft_table
        self.names: dict[int, str] = {}  # ifindex -> name, from observations and link events

    def learn(self, names: dict[int, str]) -> None:
        self.names.update(names)

    def foreign(self, index: int) -> bool:
        name = self.names.get(index)
        return name is not None and not self.relevant(name)

    def _name(self, index: int) -> str:
        return self.names.get(index, UNKNOWN)

    def _wanted(self, name: str) -> bool:
        return name == UNKNOWN or self.relevant(name)

    def classify(self, msg: Any) -> list[tuple[str, str]]:
        """(interface, what) pairs (a rename concerns both names) that may concern an uplink."""
        return [(n, w) for n, w in self._classify(msg) if n and self._wanted(n)]

    def _classify(self, msg: Any) -> list[tuple[str, str]]:
        kind = msg["header"]["type"]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            name = msg.get_attr("IFLA_IFNAME")
            index = msg["index"]
            if kind == RTM_DELLINK:
                self.names.pop(index, None)
                return [(name, "gone")]
            old = self.names.get(index)
            if name:
                self.names[index] = name
            what = "up" if msg["flags"] & IFF_UP else "down"
            if old is None:
                return [(name, f"appeared ({what})")]
            if old != name:
                # the old name may be the uplink: it is gone as far as connpin is concerned
                return [(name, f"renamed from {old} ({what})"), (old, f"renamed to {name}")]
            return [(name, what)]
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            verb = "added" if kind == RTM_NEWADDR else "removed"
            return [(self._name(msg["index"]), f"address {addr} {verb}")]
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if table != MAIN_TABLE or msg["dst_len"] != 0:
                return []  # only default routes in main say where an uplink's gateway is
            oif = msg.get_attr("RTA_OIF")
            if oif is None:  # multipath: concerns whichever uplink is a nexthop
                return [(UNKNOWN, "multipath default route changed")]
            name = self._name(oif)
            gw = msg.get_attr("RTA_GATEWAY")
            route = f"default {'via ' + gw + ' ' if gw else ''}dev {name}"
            return [(name, f"{route} {'added' if kind == RTM_NEWROUTE else 'removed'}")]
        return []

    def foreign_nft(self, msg: Any) -> bool:
        """An nf_tables change (any family) to a table other than connpin's: another program
        edited the ruleset (the daemon then looks for conflicts)."""
        if msg["header"]["type"] & 0xFF not in NFT_VERBS:
            return False
        for attr in NFT_TABLE_ATTRS:
            with contextlib.suppress(Exception):
                table = msg.get_attr(attr)
                if table is not None:
                    return table != self.nft_table or msg.get("nfgen_family") != NFPROTO_INET
        return False

    def classify_nft(self, msg: Any) -> str | None:
        """What happened to connpin's nft table (deleted, flushed, edited), else None."""
        kind = msg["header"]["type"] & 0xFF
        if kind not in NFT_VERBS or msg.get("nfgen_family") != NFPROTO_INET:
            return None
        for attr in NFT_TABLE_ATTRS:
            with contextlib.suppress(Exception):
                table = msg.get_attr(attr)
                if table is not None:
                    break
        else:
            return None
        if table != self.nft_table:
            return None
        return f"nft table inet {table}: {NFT_VERBS[kind]}"
