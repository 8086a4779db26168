"""Dead uplinks on the real kernel (issue 14): the selection leaves a dead uplink in one update of
map and set elements (the nft table itself is kept: its handle does not change), and
on_down = "reset" resets the connections pinned to an uplink that is dead or whose link went
down: the LAN host's TCP socket sees ECONNRESET, its connected UDP socket EHOSTUNREACH, and the
router's own TCP connection is reset too; connections on an uplink with on_down = "keep" stay.

In the lab ISP 1 is the best tier (priority 1) and has on_down = "reset"; ISP 2 is the next tier
and keeps its connections. Deadlines, not sleeps: every wait polls a condition.
"""

from __future__ import annotations

import errno
import re
import socket
import threading
import time

from helpers import KERNEL, holds, wait_for
from test_health_watch import wait_health
from test_watch import watching

from connpin.kernel import counters as kc
from connpin.kernel import netns
from connpin.lab import Lab, faults
from connpin.lab.echo import open_connection

pytestmark = KERNEL

UDP_PORT = 9999


def config(lab: Lab, check: bool = False) -> str:
    """isp1: priority 1, on_down = "reset"; isp2: priority 2, keep (both chosen by weight)."""
    text = lab.default_config(masquerade=True)
    probes = f'check = ["icmp:{Lab.SERVER}", "tcp:{Lab.SERVER}:443"]\n' if check else ""
    for k, extra in ((1, 'on_down = "reset"\n'), (2, "")):
        text = text.replace(f'name = "isp{k}"\n',
                            f'name = "isp{k}"\npriority = {k}\nweight = 1\n{probes}{extra}')
    return text


def handle(lab: Lab) -> int:
    """The kernel's handle of connpin's table: a new one whenever the table is replaced."""
    out = lab.exec("router", ["nft", "-a", "list", "table", "inet", "connpin"]).stdout
    m = re.search(r"^table inet connpin \{ # handle (\d+)$", out, re.M)
    assert m, out
    return int(m.group(1))


def dead_marks(lab: Lab) -> str:
    """The marks in the dead set (`family . mark`): here always dead in both families."""
    out = lab.exec("router", ["nft", "list", "set", "inet", "connpin", "dead_marks"]).stdout
    pairs = re.findall(r"(ipv[46]) \. (0x[0-9a-f]+)", out)
    marks = sorted({m for _, m in pairs})
    assert sorted(pairs) == sorted((f, m) for m in marks for f in ("ipv4", "ipv6")), out
    return ", ".join(marks)


def mark_of(lab: Lab, k: int) -> str:
    out = lab.exec("router", ["nft", "list", "map", "inet", "connpin", "uplink_by_iface"]).stdout
    m = re.search(rf'"{lab.iface(k)}" : jump pin_(\d+)', out)
    assert m, out
    pin = lab.exec("router", ["nft", "list", "chain", "inet", "connpin", f"pin_{m[1]}"]).stdout
    found = re.search(r"(?:or|\|) (0x[0-9a-f]{8})$", pin, re.M)
    assert found, pin
    return found[1]


def resets(lab: Lab) -> dict[str, int]:
    """Resets sent per uplink, from connpin's nft counters (values.Counters.resets)."""
    return {n: c.resets for n, c in kc.read(lab.ns("router"), "connpin").items()}


class Sender:
    """One long-lived connection that sends a line every `interval` s without waiting for the
    answers (TCP: the echo server's answers are read as they come): records the first socket
    error and when it came."""

    def __init__(self, lab: Lab, src: str = "lan", udp: bool = False,
                 interval: float = 0.1, dst: str = Lab.SERVER) -> None:
        self.peer: str | None = None
        self.sent = 0
        self.error: OSError | None = None
        self.at: float | None = None
        if udp:
            self.sock = netns.socket_in(lab.ns(src), socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect((dst, UDP_PORT))
        else:
            self.sock = open_connection(lab.ns(src), dst, 7, 5.0)
            self.sock.sendall(b"hello\n")
            line = b""
            while not line.endswith(b"\n"):
                chunk = self.sock.recv(200)
                assert chunk, "the echo server closed"
                line += chunk
            self.peer = line.split()[-1].decode()
        self.sock.settimeout(interval)
        self.udp, self.interval = udp, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.send(b"x\n")
                self.sent += 1
                if self.udp:
                    self._stop.wait(self.interval)
                    continue
                try:
                    if not self.sock.recv(4096):
                        raise OSError(errno.EPIPE, "closed by the peer")
                except TimeoutError:
                    pass
            except OSError as e:
                if not self._stop.is_set():
                    self.at, self.error = time.monotonic(), e
                return

    def wait_sent(self, n: int, timeout: float = 5.0) -> None:
        target = self.sent + n
        wait_for(lambda: self.sent >= target or self.error, timeout, f"{n} more sends")
        assert self.error is None, self.error

    def wait_error(self, timeout: float) -> OSError:
        wait_for(lambda: self.error is not None, timeout, "the connection to be reset")
        assert self.error is not None
        return self.error

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def udp_sink(lab: Lab) -> socket.socket:
    """A UDP socket on the internet host that takes the datagrams (no port unreachable)."""
    s = netns.socket_in(lab.ns("net"), socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((Lab.SERVER, UDP_PORT))
    return s


def test_taken_dead_or_link_down_resets_in_one_update_of_elements() -> None:
    """CLI-driven (CONNPIN_DEAD stands in for the daemon's verdict): the element update resets
    the LAN's TCP and UDP connections and the router's own TCP connection on isp1 at their next
    packet; isp2's connection stays; the table is never replaced, until a config change does."""
    with Lab(("ppp", "ppp")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        lab.write_config(config(lab))
        lab.connpin("apply", env={"CONNPIN_DEAD": ""})
        table, isp1 = handle(lab), mark_of(lab, 1)
        sink = udp_sink(lab)
        senders: list[Sender] = []
        try:
            tcp, mine, udp = (Sender(lab), Sender(lab, src="router"), Sender(lab, udp=True))
            senders += [tcp, mine, udp]
            assert lab.uplink_of(tcp.peer) == 1 and lab.uplink_of(mine.peer) == 1
            for s in senders:
                s.wait_sent(3)

            started = time.monotonic()
            lab.connpin("apply", env={"CONNPIN_DEAD": "isp1"})
            applied = time.monotonic() - started
            assert tcp.wait_error(5).errno == errno.ECONNRESET, tcp.error
            assert mine.wait_error(5).errno == errno.ECONNRESET, mine.error
            assert udp.wait_error(5).errno == errno.EHOSTUNREACH, udp.error
            print(f"\napply (dead isp1) {applied:.2f} s; reset after "
                  + ", ".join(f"{n} {s.at - started:.2f} s" for n, s in
                              (("lan tcp", tcp), ("router tcp", mine), ("lan udp", udp))))
            assert handle(lab) == table, "the table was replaced"
            assert dead_marks(lab) == isp1
            # each reset is counted on isp1's counter (no [metrics] needed); isp2 has none
            assert set(resets(lab)) == {"isp1"} and resets(lab)["isp1"] >= 3, resets(lab)
            counted = resets(lab)["isp1"]
            assert lab.uplink_of(lab.connect(timeout=5.0)) == 2, "new connections by isp2"
            keep = Sender(lab)
            senders.append(keep)
            assert lab.uplink_of(keep.peer) == 2
            holds(lambda: keep.error is None, 1.0, "isp2's connection (on_down = keep) lives")

            lab.connpin("apply", env={"CONNPIN_DEAD": ""})  # isp1 alive again
            assert handle(lab) == table and dead_marks(lab) == ""
            assert lab.uplink_of(lab.connect(timeout=5.0)) == 1, "new connections back on isp1"
            again = Sender(lab)
            senders.append(again)
            assert lab.uplink_of(again.peer) == 1
            keep.wait_sent(3)  # failback = keep: isp2's connection stays

            # the link goes down (pppd gone): reset too, still one update of elements
            lab.uplink_down(1)
            lab.connpin("apply")
            assert again.wait_error(5).errno == errno.ECONNRESET, again.error
            assert handle(lab) == table and dead_marks(lab) == isp1
            assert resets(lab)["isp1"] > counted, "the link-down reset counted too"
            keep.wait_sent(3)

            # the control: a change beyond elements replaces the table (a new handle)
            lab.write_config(config(lab).replace('on_down = "reset"\n', ""))
            lab.connpin("apply")
            assert handle(lab) != table
        finally:
            for s in senders:
                s.close()
            sink.close()


def test_watch_resets_connections_of_an_uplink_that_died_beyond_its_first_hop() -> None:
    """The daemon: ISP 1 blackholes everything beyond its first hop (link up). The LAN host's
    connection on it, sending every 100 ms, sees ECONNRESET soon after the daemon declares isp1
    dead; a new connection leaves by isp2; the table was updated in place. When ISP 1 recovers
    its mark leaves the dead set and new connections return to it."""
    with Lab(("ppp", "eth")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        lab.write_config(config(lab, check=True))
        with watching(lab) as daemon:
            wait_health(lab, {"isp1": "alive", "isp2": "alive"}, daemon, 15)
            table, isp1 = handle(lab), mark_of(lab, 1)
            tcp = Sender(lab)
            try:
                assert lab.uplink_of(tcp.peer) == 1
                tcp.wait_sent(3)
                n_lines = len(daemon.lines)
                started = time.monotonic()
                faults.blackhole(lab, 1)
                err = tcp.wait_error(15)
                reset = (tcp.at or 0) - started
                assert err.errno == errno.ECONNRESET, err
                line = daemon.wait_log(r"health: isp1 alive -> dead", after=n_lines)
                dead = daemon.times[daemon.lines.index(line)] - started
                update = daemon.wait_log(r"nft update elements of .*set dead_marks",
                                         after=n_lines)
                print(f"\nblackhole -> isp1 dead {dead:.2f} s -> ECONNRESET {reset:.2f} s; "
                      f"{update.split(': ', 1)[-1][:60]}")
                assert lab.uplink_of(lab.connect(timeout=5.0)) == 2, "new connections by isp2"
                assert handle(lab) == table and dead_marks(lab) == isp1
            finally:
                tcp.close()

            faults.clear(lab, 1)
            wait_health(lab, {"isp1": "alive"}, daemon, 15)
            wait_for(lambda: dead_marks(lab) == "", 10, "isp1's mark to leave the dead set")
            wait_for(lambda: lab.uplink_of(lab.connect(timeout=5.0)) == 1, 10,
                     "new connections back on isp1")
            assert handle(lab) == table


def test_a_shared_tier_and_ipv6_update_in_place_and_reset() -> None:
    """Both uplinks in one tier (1:1, maps of two slices): isp1 dying and reviving are element
    updates of multi-slice maps; an IPv6 TCP connection pinned to isp1 is reset too."""
    with Lab(("ppp", "ppp"), ipv6=True) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        text = config(lab).replace("priority = 2\n", "priority = 1\n")
        lab.write_config(text)
        lab.connpin("apply", env={"CONNPIN_DEAD": ""})
        table = handle(lab)
        senders: list[Sender] = []
        try:
            for _ in range(40):  # a random half of new connections take isp1
                s = Sender(lab, dst=Lab.SERVER6)
                senders.append(s)
                if lab.uplink_of(s.peer) == 1:
                    break
            on1 = senders[-1]
            assert lab.uplink_of(on1.peer) == 1, [s.peer for s in senders]
            lab.connpin("apply", env={"CONNPIN_DEAD": "isp1"})
            assert on1.wait_error(5).errno == errno.ECONNRESET, on1.error
            assert handle(lab) == table and dead_marks(lab) == mark_of(lab, 1)
            assert {lab.uplink_of(lab.connect(dst=Lab.SERVER6, timeout=5.0))
                    for _ in range(10)} == {2}
            lab.connpin("apply", env={"CONNPIN_DEAD": ""})
            assert handle(lab) == table and dead_marks(lab) == ""
            wait_for(lambda: lab.uplink_of(lab.connect(timeout=5.0)) == 1, 10,
                     "a new connection by isp1 again (a random half)")
            assert all(s.error is None for s in senders if s is not on1)
        finally:
            for s in senders:
                s.close()
