"""`connpin watch`: follow the kernel's rtnetlink events and converge when an uplink changes, so no
hook script is needed whatever brings uplinks up (pppd, a DHCP client, NetworkManager, `ip`).

Events are hints, never the state: each one names an interface, and when that interface belongs
to a configured uplink the daemon runs the same `engine.converge` as `apply`/`up`/`down`, which
re-reads the kernel. nf_tables events about connpin's own table (another program flushing or
editing it, e.g. a firewall reload) trigger the same converge. A lone event is handled at once;
a burst is coalesced into one converge at most every `GAP` seconds. The whole kernel is re-read
at start, after an event socket overflowed (ENOBUFS: events were lost) and every `resync`
seconds, so a lost event costs at most one period.

Signals: SIGHUP reloads the config (a bad one is reported and the running one kept), SIGTERM and
SIGINT stop cleanly and leave the pinning installed (`connpin remove` uninstalls).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from connpin import engine, model
from connpin.const import IFF_UP, MAIN_TABLE

#: Least time between two converges: events arriving meanwhile are coalesced into the next one.
GAP = 0.02
#: Default period of the full resync (seconds).
RESYNC = 60.0
#: After a failed converge, retry this soon (doubling up to the resync period).
RETRY = 1.0
#: failback = "flush-idle": least time between two looks for connections gone idle.
SWEEP = 1.0
#: Consecutive failed converges taken for races with the kernel (retried at once, not logged).
RACES = 2
#: Test knob: a tiny SO_RCVBUF for the event socket, to force overflows.
RCVBUF_ENV = "CONNPIN_WATCH_RCVBUF"

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
UNKNOWN = "?"  # an interface index not seen yet
NFT_KEY = "nft"  # pending key of nf_tables events
NFPROTO_INET = 1
NFT_VERBS = {0: "table added", 2: "table deleted", 3: "chain added", 5: "chain deleted",
             6: "rule added", 8: "rule deleted", 9: "set added", 11: "set deleted",
             12: "element added", 14: "element deleted"}
NFT_TABLE_ATTRS = ("NFTA_TABLE_NAME", "NFTA_CHAIN_TABLE", "NFTA_RULE_TABLE", "NFTA_SET_TABLE",
                   "NFTA_SET_ELEM_LIST_TABLE")


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (nothing when unset)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


class Events:
    """A netlink socket bound to link, address and route multicast groups, read without blocking.

    Messages are decoded by pyroute2; the reads are our own so that an overflow (ENOBUFS) is
    seen exactly where the kernel reports it and no message waits in a hidden queue.
    """

    def __init__(self, rcvbuf: int | None = None, nftables: bool = False) -> None:
        if nftables:  # nf_tables changes: another program flushing or editing connpin's table
            from pyroute2.netlink.nfnetlink import NFNLGRP_NFTABLES
            from pyroute2.netlink.nfnetlink.nftsocket import NFTSocket

            self.ipr: Any = NFTSocket()
            groups = 1 << (NFNLGRP_NFTABLES - 1)
        else:
            from pyroute2.iproute import IPRoute
            from pyroute2.netlink import rtnl

            self.ipr = IPRoute()
            groups = (rtnl.RTMGRP_LINK | rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV4_ROUTE
                      | rtnl.RTMGRP_IPV6_IFADDR | rtnl.RTMGRP_IPV6_ROUTE)
        if rcvbuf:
            self.ipr.asyncore.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.ipr.bind(groups=groups)
        self.sock = self.ipr.asyncore.socket
        self.sock.setblocking(False)
        self._buf = bytearray(1 << 18)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> tuple[list[Any], bool]:
        """Every message queued now, and whether the kernel dropped some (overflow)."""
        out: list[Any] = []
        overflow = False
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                return out, overflow
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    overflow = True
                    continue
                raise
            if n == 0:
                return out, overflow
            out.extend(self.ipr.marshal.parse(bytes(self._buf[:n])))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ipr.close()


class Watcher:
    """The daemon's loop: events, timers and signals in, converges and log lines out."""

    def __init__(self, config_path: str, config: model.Config, *, verbose: bool = False,
                 resync: float = RESYNC, log: Callable[[str], None] | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.verbose = verbose
        self.resync = resync
        self.log = log or (lambda line: print(f"connpin watch: {line}", file=sys.stderr,
                                              flush=True))
        self.names: dict[int, str] = {}  # ifindex -> name, from observations and link events
        self.pending: dict[str, list[str]] = {}  # interface -> what happened to it
        self.renamed: list[tuple[str, str]] = []  # old names of renamed links, for take()
        self.overflowed = False
        self.last_end = 0.0
        self.next_resync = 0.0
        self.retry_at: float | None = None
        self.retry_delay = RETRY
        self.troubles = 0  # consecutive converges that failed or did not verify
        self.previous: dict[str, tuple] = {}  # interface -> (up, reason, route) last seen
        self.sweep_at: float | None = None  # failback = "flush-idle": next look for idle ones
        self._stop = False
        self._hup = False
        self.machine: Any = None

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True

    # -- events -----------------------------------------------------------------------------------
    def _name(self, index: int) -> str:
        return self.names.get(index, UNKNOWN)

    def classify(self, msg: Any) -> tuple[str, str] | None:
        """(interface, what happened) for an event that may concern an uplink, else None.

        An interface not known yet (an event racing its link message) is kept: converging for
        nothing costs little, missing an uplink costs a connection."""
        kind = msg["header"]["type"]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            name = msg.get_attr("IFLA_IFNAME")
            index = msg["index"]
            if kind == RTM_DELLINK:
                self.names.pop(index, None)
                what = "gone"
            else:
                old = self.names.get(index)
                self.names[index] = name
                what = "up" if msg["flags"] & IFF_UP else "down"
                if old is None:
                    what = f"appeared ({what})"
                elif old != name:
                    # the old name may be the uplink: it is gone as far as connpin is concerned
                    self.renamed.append((old, f"renamed to {name}"))
                    what = f"renamed from {old} ({what})"
            return (name, what) if name else None
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            index = msg["index"]
            name = self._name(index)
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            verb = "added" if kind == RTM_NEWADDR else "removed"
            return name, f"address {addr} {verb}"
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if table != MAIN_TABLE or msg["dst_len"] != 0:
                return None  # only default routes in main say where an uplink's gateway is
            oif = msg.get_attr("RTA_OIF")
            if oif is None:  # multipath: concerns whichever uplink is a nexthop
                return UNKNOWN, "multipath default route changed"
            name = self._name(oif)
            gw = msg.get_attr("RTA_GATEWAY")
            route = f"default {'via ' + gw + ' ' if gw else ''}dev {name}"
            return name, f"{route} {'added' if kind == RTM_NEWROUTE else 'removed'}"
        return None

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
        mine = {self.config.pinning.nft_table}
        if table not in mine:
            return None
        return f"nft table inet {table}: {NFT_VERBS[kind]}"

    def take_nft(self, messages: list[Any]) -> None:
        for msg in messages:
            what = self.classify_nft(msg)
            if what is None:
                continue
            if self.verbose:
                self.log(f"event: {what}")
            self.pending.setdefault(NFT_KEY, []).append(what)
            self.troubles = 0

    def relevant(self, name: str) -> bool:
        if name == UNKNOWN:
            return True  # cannot be ruled out
        return self.config.match(name) is not None

    def take(self, messages: list[Any]) -> None:
        for msg in messages:
            got = [self.classify(msg), *self.renamed]
            self.renamed.clear()
            for name, what in filter(None, got):
                if not self.relevant(name):
                    continue
                if self.verbose:
                    self.log(f"event: {name}: {what}")
                self.pending.setdefault(name, []).append(what)
                self.troubles = 0  # the kernel moved: a failure before it was likely a race

    # -- converging -------------------------------------------------------------------------------
    def converge(self, why: str) -> None:
        """One engine.converge; log one line per uplink whose state changed."""
        events, self.pending = self.pending, {}
        error: Exception | None = None
        try:
            out = engine.converge(self.config, machine=self.machine)
        except Exception as e:  # noqa: BLE001 - the daemon stays up and retries
            error = e
        # every converge re-reads the whole kernel: the next full resync is due a period later
        self.last_end = time.monotonic()
        self.next_resync = self.last_end + self.resync
        if error is not None:
            # Often the kernel changed under the converge (an interface vanished between
            # observing and applying): the next attempt sees that. Only a repeat is a failure.
            self._trouble(f"{why}: failed: {error}")
            for iface, whats in events.items():  # keep them for the next attempt's log line
                self.pending[iface] = whats + self.pending.get(iface, [])
            return
        self._remember(out.result)
        if out.left:
            # Usually the kernel moved on between applying and verifying (the next event is on
            # its way): converge again at once, and only call it a failure if it persists.
            self._trouble(f"{why}: kernel still differs after applying: "
                          + "; ".join(map(str, out.left)))
        else:
            self.troubles = 0
            self.retry_at, self.retry_delay = None, RETRY
        self._report(out, why, events)

    def _trouble(self, line: str) -> None:
        """A converge that failed or did not verify: retry at once the first times (a race with
        the kernel: an interface vanished between reading and applying), then log it and back
        off (up to the resync period). Any relevant event resets the count: only a failure that
        repeats while the kernel stands still is reported."""
        self.troubles += 1
        if self.troubles <= RACES:
            if self.verbose:
                self.log(f"{line} (retrying)")
            self.retry_at = self.last_end + GAP
            return
        self.log(line)
        self.retry_at = self.last_end + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, max(self.resync, RETRY))

    def _remember(self, result: Any) -> None:
        for link in result.observed.links.values():
            self.names[link.index] = link.name

    def _report(self, out: engine.Outcome, why: str, events: dict[str, list[str]]) -> None:
        now = {s.interface: (s.up, s.reason, s) for s in out.result.desired.uplinks}
        changed = [iface for iface, (up, reason, st) in now.items()
                   if self.previous.get(iface) != (up, reason, st.route)]
        changed += [iface for iface in self.previous if iface not in now]
        n = len(out.result.steps)
        cost = f"{n} change{'s' if n != 1 else ''} in {out.ms:.1f} ms"
        for iface in changed:
            if iface in now:
                up, reason, st = now[iface]
                state = f"up, {st.route}" if up else f"down ({reason})"
                name = st.uplink
            else:
                state, name = "no longer an uplink interface", "-"
            seen = "; ".join(events.get(iface, [])) or why
            self.log(f"{name} {iface}: {state} [{seen}] {cost}")
        if n and not changed:
            seen = "; ".join(w for ws in events.values() for w in ws) or why
            self.log(f"repaired {cost}: " + "; ".join(map(str, out.result.steps)) + f" [{seen}]")
        elif self.verbose and not changed:
            self.log(f"{why}: nothing to change ({out.ms:.1f} ms)")
        for note in out.notes:
            self.log(note)
        if out.notes and self.sweep_at is None and engine.pending():
            self.sweep_at = time.monotonic() + SWEEP
        self.previous = {iface: (up, reason, st.route) for iface, (up, reason, st) in now.items()}

    def sweep(self) -> None:
        """failback = "flush-idle": flush the busy connections that went idle meanwhile (what
        `connpin sweep --follow` does for hooks), then come back when the next may be due."""
        from connpin import pins
        from connpin.kernel import state

        try:
            with state.locked():
                n, wait = pins.sweep(self.config)
        except Exception as e:  # noqa: BLE001 - keep watching; try again later
            self.log(f"sweep failed: {e}")
            n, wait = 0, self.resync
        if n:
            self.log(f"sweep: {n} idle connection(s) flushed")
        self.sweep_at = None if wait is None else time.monotonic() + min(max(wait, SWEEP), 30.0)

    def reload(self) -> None:
        """SIGHUP: the new config replaces the running one only if it loads."""
        try:
            config = model.load(self.config_path)
        except model.ConfigError as e:
            self.log(f"{e}; keeping the running config")
            return
        self.config = config
        self.log(f"config reloaded from {self.config_path}")
        self.converge("config reloaded")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        from connpin.kernel.machine import Kernel

        rcvbuf = int(os.environ.get(RCVBUF_ENV) or 0) or None
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        events = Events(rcvbuf)  # bound before the first converge: nothing falls in between
        nft_events = Events(rcvbuf, nftables=True)
        self.machine = Kernel()
        try:
            self.converge("start")
            if engine.pending():  # a restart picks up busy connections still waiting
                self.sweep_at = time.monotonic() + SWEEP
            uplinks = ", ".join(f"{u.name}={u.interface}" for u in self.config.uplinks)
            self.log(f"watching {uplinks or 'no uplinks'} (resync every {self.resync:g} s)")
            notify("READY=1\nSTATUS=watching")
            self._loop(events, nft_events, wake_r)
        finally:
            notify("STOPPING=1")
            events.close()
            nft_events.close()
            self.machine.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
        self.log("stopped; pinning left installed (`connpin remove` uninstalls)")
        return 0

    def _due(self) -> float:
        """When the next converge is due (may be in the past), or the resync time."""
        due = self.next_resync
        if (self.pending or self.overflowed) and self.troubles <= RACES:  # not while backing off
            due = min(due, self.last_end + GAP)
        if self.retry_at is not None:
            due = min(due, self.retry_at)
        if self.sweep_at is not None:
            due = min(due, self.sweep_at)
        return due

    def _loop(self, events: Events, nft_events: Events, wake_r: int) -> None:
        while not self._stop:
            timeout = max(0.0, self._due() - time.monotonic())
            if not self._hup:
                readable, _, _ = select.select([events, nft_events, wake_r], [], [], timeout)
                if wake_r in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
            if self._stop:
                break
            messages, overflow = events.read()
            self.take(messages)
            nft_messages, nft_overflow = nft_events.read()
            self.take_nft(nft_messages)
            overflow = overflow or nft_overflow
            if overflow:
                self.log("event socket overflowed (events lost): full resync")
                self.overflowed = True
            if self._hup:
                self._hup = False
                notify("RELOADING=1")
                self.reload()
                notify("READY=1")
                continue
            now = time.monotonic()
            if now < self._due():
                continue
            if self.sweep_at is not None and now >= self.sweep_at:
                self.sweep()
                if now < self._due():
                    continue
            if self.overflowed:
                self.overflowed = False
                self.converge("resync after overflow")
            elif self.pending:
                self.converge("event")
            elif self.retry_at is not None and now >= self.retry_at:
                self.converge("retry")
            else:
                if self.verbose:
                    self.log("periodic resync")
                self.converge("periodic resync")


def run(config_path: str, config: model.Config, *, verbose: bool = False,
        resync: float = RESYNC) -> int:
    """The CLI's entry: watch until SIGTERM/SIGINT; 0 on a clean stop."""
    return Watcher(config_path, config, verbose=verbose, resync=resync).run()
