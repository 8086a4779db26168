"""Reading connpin's per-uplink nft counters ([metrics]; rendered by render/nft.py): one
nf_tables netlink dump of the table's counter objects (what `nft -j list counters table inet T`
asks the kernel, without starting a process: well under a millisecond), whose cost does not
depend on the number of connections (no conntrack dump). `read_raw_nft` is that nft command, for
comparison. Counter names are `new_I_U`, `out_I_U`, `in_I_U` (slot index I, uplink U): the uplink
comes from the name itself, so no comment and no desired state is needed. `reset_I_U`: resets
sent for connections pinned to a dead uplink with on_down = "reset" (there without [metrics]).

The request is a few fixed bytes and the replies are walked header by header, like
kernel/conntrack.py (pyroute2 has no message class for nf_tables objects).

The counters count since connpin's table was last loaded (an apply that changes the ruleset
replaces the table and starts them at zero); the daemon's metrics carry totals across that.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from dataclasses import replace

from connpin.kernel import netns as ns
from connpin.kernel import nft, nlmsg
from connpin.values import Counters, split_counter

KINDS = ("new", "out", "in", "reset")

NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES = 12, 10
NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ = 18, 19
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO_INET = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NLA_TYPE_MASK = 0x3FFF
_HDR = nlmsg.HDR
_NLA = struct.Struct("=HH")
_BE64 = struct.Struct(">Q")


def _nla(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _attrs(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) between start and end."""
    out = {}
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(buf, start)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


class Interrupted(Exception):
    """The ruleset changed during the dump (NLM_F_DUMP_INTR): read again."""


def _dump(sock: socket.socket, table: str) -> dict[str, tuple[int, int]]:
    request = (struct.pack("=BBH", NFPROTO_INET, 0, 0)
               + _nla(NFTA_OBJ_TABLE, table.encode() + b"\0")
               + _nla(NFTA_OBJ_TYPE, struct.pack(">I", NFT_OBJECT_COUNTER)))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ
    sock.send(_HDR.pack(16 + len(request), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
    out: dict[str, tuple[int, int]] = {}
    interrupted = False
    while True:
        buf = sock.recv(1 << 16)
        for mtype, flags, _, off, end in nlmsg.walk(buf):
            if mtype == NLMSG_DONE:
                if interrupted:
                    raise Interrupted
                return out
            if mtype == NLMSG_ERROR:
                err = -struct.unpack_from("=i", buf, off + 16)[0]
                if err == errno.ENOENT:
                    return {}
                if err:
                    raise OSError(err, os.strerror(err))
            elif mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ:
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                a = _attrs(buf, off + 20, end)  # after nlmsghdr and nfgenmsg
                if NFTA_OBJ_NAME in a and NFTA_OBJ_DATA in a:
                    name = bytes(buf[slice(*a[NFTA_OBJ_NAME])]).rstrip(b"\0").decode()
                    data = _attrs(buf, *a[NFTA_OBJ_DATA])
                    values = [_BE64.unpack_from(buf, data[k][0])[0] if k in data else 0
                              for k in (NFTA_COUNTER_PACKETS, NFTA_COUNTER_BYTES)]
                    out[name] = (values[0], values[1])


def read_raw(netns: str | None, table: str) -> dict[str, tuple[int, int]]:
    """Every named counter of connpin's table: name -> (packets, bytes); {} when the table does
    not exist (nothing applied yet, or backend = "iptables"). One netlink dump. Raises OSError."""
    with ns.inside(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    try:
        sock.settimeout(5)
        sock.bind((0, 0))
        for _ in range(3):
            try:
                return _dump(sock, table)
            except Interrupted:
                continue
        return _dump(sock, table)  # a ruleset changing this often: its last word
    finally:
        sock.close()


def read_raw_nft(netns: str | None, table: str) -> dict[str, tuple[int, int]]:
    """The same through `nft -j list counters table inet T` (a process). Raises
    nft.NftFailure."""
    with ns.inside(netns):
        p = nft._nft(["-j", "list", "counters", "table", "inet", table])
    if p.returncode != 0:
        if "No such file" in p.stderr:
            return {}
        raise nft.NftFailure(p.stderr.strip() or f"nft exited with {p.returncode}")
    out: dict[str, tuple[int, int]] = {}
    for item in json.loads(p.stdout or "{}").get("nftables", []):
        c = item.get("counter") if isinstance(item, dict) else None
        if c and c.get("table") == table and c.get("family") == "inet":
            out[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return out


def split(name: str) -> tuple[str, int, str] | None:
    """`out_236_fibre` -> ("out", 236, "fibre"); None for a name that is not connpin's."""
    return split_counter(name, KINDS)


def per_uplink(raw: dict[str, tuple[int, int]]) -> dict[str, Counters]:
    """Counters by uplink name, the interfaces of a pattern uplink summed."""
    out: dict[str, Counters] = {}
    for name, (packets, nbytes) in raw.items():
        parts = split(name)
        if parts is None:
            continue
        kind, _, uplink = parts
        c = out.get(uplink, Counters())
        if kind == "new":
            c = replace(c, new=c.new + packets)
        elif kind == "reset":
            c = replace(c, resets=c.resets + packets)
        elif kind == "out":
            c = replace(c, packets_out=c.packets_out + packets, bytes_out=c.bytes_out + nbytes)
        else:
            c = replace(c, packets_in=c.packets_in + packets, bytes_in=c.bytes_in + nbytes)
        out[uplink] = c
    return out


def read(netns: str | None, table: str) -> dict[str, Counters]:
    """connpin's counters in namespace `netns` (None: this one), by uplink name; {} when the
    table or its counters do not exist ([metrics] absent). Raises nft.NftFailure."""
    return per_uplink(read_raw(netns, table))
