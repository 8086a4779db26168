"""The conntrackd.conf of one router of an HA pair, from its [ha] table (pure, golden-tested).

What matters for pinning (docs/ha.md):
- `Sync`: mode FTFW (reliable: lost, reordered or corrupt messages are resent) over UDP on the
  dedicated link, this router's address to the peer's. The external cache stays on
  (DisableExternalCache no): the backup keeps the peer's connections in conntrackd's memory and
  injects them into its kernel only when `connpin ha promote` commits them, so a backup's kernel
  holds no stale entries that would clash with its own traffic.
- The mark: conntrackd replicates each entry with its conntrack mark, so a committed connection
  keeps connpin's pin (both routers must compute the same marks: `connpin check --peer`).
- `Filter`: conntrackd 1.4.7 filters by protocol, address and TCP state only, not by mark
  (conntrackd.conf(5)), so every forwarded TCP/UDP/SCTP/DCCP connection is replicated, pinned or
  not; connections of the router itself (loopback, the sync link, `ha.ignore`) are not.
- `General`: the control socket and lock file come from [ha], so two conntrackd instances can run
  on one machine (the lab's two routers); netlink event buffers sized for a busy router.
"""

from __future__ import annotations

import ipaddress

from connpin.ha.settings import HA

#: Protocols replicated: those whose connections connpin pins and that conntrackd can replicate.
PROTOCOLS = ("TCP", "UDP", "SCTP", "DCCP")
#: conntrackd's internal hash: buckets, and entries at most (twice nf_conntrack_max is advised)
HASH_SIZE, HASH_LIMIT = 32768, 524288
#: netlink event socket: start, and the most conntrackd may double it to on overruns
NETLINK_BUFFER, NETLINK_BUFFER_MAX = 2 * 1024 * 1024, 8 * 1024 * 1024
SOCKET_BUFFER = 1249280  # the sync link's UDP socket buffers (the man page's advice)


def _addr_line(net: str) -> str:
    n = ipaddress.ip_network(net)
    text = str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
    return f"IPv{n.version}_address {text}"


def render(ha: HA, source: str = "") -> str:
    """conntrackd.conf text for this router. `source`: the connpin config it came from (shown
    in the header comment only)."""
    v = ha.family
    ignored = ["127.0.0.0/8", "::1/128", ha.local, ha.peer, *ha.ignore]
    seen: set[str] = set()
    ignore_lines = []
    for net in ignored:
        line = _addr_line(str(ipaddress.ip_network(net)))
        if line not in seen:
            seen.add(line)
            ignore_lines.append(f"            {line}")
    head = (f"# conntrackd.conf for one router of a connpin HA pair (docs/ha.md).\n"
            f"# Written by `connpin ha conntrackd-conf`{' from ' + source if source else ''}: "
            "change [ha] there, not here.\n")
    return head + f"""Sync {{
    Mode FTFW {{
        # keep the peer's connections in conntrackd until `connpin ha promote` commits them
        DisableExternalCache no
        # a router that starts asks the other one for its whole table
        StartupResync yes
        # after a demotion (`conntrackd -t`), the stale kernel entries are flushed this late
        PurgeTimeout 60
    }}
    UDP Default {{
        IPv{v}_address {ha.local}
        IPv{v}_Destination_Address {ha.peer}
        Port {ha.port}
        Interface {ha.sync_interface}
        SndSocketBuffer {SOCKET_BUFFER}
        RcvSocketBuffer {SOCKET_BUFFER}
        Checksum on
    }}
    Options {{
        # a resumed connection's sequence numbers are not checked against stale windows
        TCPWindowTracking no
    }}
}}
General {{
    HashSize {HASH_SIZE}
    HashLimit {HASH_LIMIT}
    LogFile off
    Syslog on
    LockFile {ha.conntrackd_lockfile}
    UNIX {{
        Path {ha.conntrackd_socket}
    }}
    NetlinkBufferSize {NETLINK_BUFFER}
    NetlinkBufferSizeMaxGrowth {NETLINK_BUFFER_MAX}
    NetlinkOverrunResync on
    NetlinkEventsReliable off
    EventIterationLimit 100
    # No mark filter exists in conntrackd: every forwarded connection is replicated, with its
    # conntrack mark (connpin's pin); the router's own connections are not.
    Filter From Userspace {{
        Protocol Accept {{
{chr(10).join(f"            {p}" for p in PROTOCOLS)}
        }}
        Address Ignore {{
{chr(10).join(ignore_lines)}
        }}
    }}
}}
"""
