"""The HA lab: two routers behind one LAN gateway address (keepalived, VRRP), their conntrack
tables synced by conntrackd over a dedicated link, two ISPs and an internet host, all in
network namespaces; keepalived and conntrackd run for real, one instance per router, and
connpin is applied on both routers with the same config.

This module owns the `HaLab` (build, the daemons, a router's crash, destroy). Its address plan
and the routers' connpin configs are `ha_plan.HaPlan`; keepalived.conf, the program keepalived's
notify runs and the routers' own nft table come from `ha_conf`; conntrackd.conf and the notify
lines from connpin itself (`connpin ha conntrackd-conf`, `ha keepalived-notify`); namespaces,
state files and the removal of what a killed process left behind from `cleanup`, like the
single-router `Lab`.

Topology "shared" (a): both routers sit on each ISP's Ethernet segment (a bridge in the ISP's
namespace); the ISP's gateway sees ONE virtual address per uplink, which moves with the master,
and the routers SNAT to it::

                  lan0 10.77.0.252 [r1] wan1 198.51.100.19 ----+
    lan 10.77.0.2 br0              sync0 10.78.0.1             br0 .17 [isp1] up0 ---+
    (gateway: VIP 10.77.0.1)         |  (conntrackd, FTFW)     |  (VIP .18)          [net]
                  lan0 10.77.0.253 [r2] wan1 198.51.100.20 ----+                     |
                                   sync0 10.78.0.2        wan2: 198.51.100.32/28 ----+
                                                           gateway .33, VIP .34, r1 .35, r2 .36

Topology "own" (b): each router has its own PPP-like sessions (router rN: 100.64.k.(N+1), peer
100.64.k.1 in ISP k); only the LAN gateway address is virtual. A connection NATed to r1's
address cannot continue from r2's: it must fail fast (reset), not hang.

net: 203.0.113.10 and 203.0.113.11 on its loopback, echo servers on port 7 (see `echo`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns

from connpin.const import IFF_UP
from connpin.kernel import tools
from connpin.lab import cleanup, ha_conf
from connpin.lab.addressing import ppp_mac
from connpin.lab.commands import LabError, _ip_binary, exec_ns, run
from connpin.lab.echo import EchoServers, Probe, connect_once, open_connection
from connpin.lab.ha_plan import KS, ROUTERS, HaPlan
from connpin.lab.topology import IFF_NOARP, Topology

PRIORITY = {"r1": 200, "r2": 100}
RTPROT_STATIC = 4


class HaLab(HaPlan):
    """Build on enter, destroy on exit; every namespace and process goes, even on failure."""

    def __init__(self, topology: str = "shared", *, advert_int: float = 1.0, sync: bool = True):
        """topology "shared" (a) or "own" (b); advert_int: keepalived's advertisement interval
        (s; VRRPv3 takes hundredths); sync=False: no conntrackd (the control)."""
        super().__init__(cleanup.PREFIX + secrets.token_hex(3), topology)
        self.advert_int = advert_int
        self.sync = sync
        self.workdir = Path(tempfile.gettempdir()) / f"{self.prefix}-work"
        self._net = Topology(self, ipv6=False)  # type: ignore[arg-type]  # duck-typed plan
        self._servers: EchoServers | None = None
        self._probes: list[Probe] = []
        self._died: dict[int, float] = {}
        self._daemons: dict[str, list[subprocess.Popen[bytes]]] = {r: [] for r in ROUTERS}
        self._logs: list[Any] = []
        self._built = self._destroyed = self._owns_prefix = False
        self._pid = os.getpid()

    def __enter__(self) -> HaLab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<HaLab {self.prefix} {self.topology}>"

    # -- build / destroy --------------------------------------------------------------------------
    def build(self) -> None:
        """Namespaces, links, addresses, servers, connpin on both routers, then the daemons
        (conntrackd, keepalived); r1 is master and r2 backup when this returns."""
        if self._built:
            raise LabError("this lab was already built")
        self._built = True
        cleanup.register(self)
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _build(self) -> None:
        for tool in ("nft", "keepalived", "conntrackd"):
            if not tools.exists(tool):
                raise LabError(f"`{tool}` is not installed (apt-get install nftables keepalived "
                               "conntrackd)")
        taken = [n for n in pnetns.listnetns() if n.startswith(self.prefix + "-")]
        if taken or self.workdir.exists():
            raise LabError(f"lab prefix {self.prefix} is in use")
        self._owns_prefix = True
        self.workdir.mkdir(mode=0o700)
        self._net.create_hosts()
        cleanup.write_state(self.prefix, self.state())
        self._net.prepare_hosts()
        for r in ROUTERS:
            self._net.sysctls(r, {"net.ipv4.ip_forward": 1})
            if self.topology == "shared":  # docs/ha.md: between the takeover and the commit
                self._net.sysctls(r, {"net.netfilter.nf_conntrack_tcp_loose": 0})
        self._build_lan()
        self._build_sync()
        net = self._ipr("net")
        for s in self.SERVERS:
            net.addr("add", index=self._net.idx("net", "lo"), address=s, prefixlen=32)
        for k in KS:
            self._build_isp(k)
        for r in ROUTERS:
            snat = {self.iface(k): self.vip(k) for k in KS} if self.topology == "shared" else {}
            exec_ns(self.ns(r), ["nft", "-f", "-"], input=ha_conf.router_ruleset(
                snat, lan="10.77.0.0/24", drop_invalid=self.topology == "shared"))
        self.prefer(1)
        self._servers = EchoServers()
        self._servers.listen(self.ns("net"), self.ECHO_PORT)
        self._servers.start()
        self._net.wait_operstate([("lan", "br0"), *((r, "lan0") for r in ROUTERS),
                                  *((r, "sync0") for r in ROUTERS),
                                  *((r, self.iface(k)) for r in ROUTERS for k in KS)])
        for r in ROUTERS:
            self.config(r).write_text(self.connpin_config(r, self.workdir))
        for r in ROUTERS:
            self.connpin(r, "apply")
        if self.sync:
            for r in ROUTERS:
                self._start_conntrackd(r)
        # r1 first: r2 starting at the same time could claim the addresses before r1's
        # first advert arrives
        self._start_keepalived("r1")
        self.wait_role("r1", "promote", 30 + 4 * self.advert_int)
        self._start_keepalived("r2")
        self.wait_role("r2", "demote", 30 + 4 * self.advert_int)

    def _ipr(self, host: str) -> IPRoute:
        return self._net._ipr[host]  # noqa: SLF001 - the lab's own topology helper

    def _veth(self, a: str, a_if: str, b: str, b_if: str, mac: str | None = None) -> None:
        """A veth pair from host a to host b (`mac`: the same MAC on both ends)."""
        same = {"address": mac} if mac else {}
        self._ipr(a).link("add", ifname=a_if, kind="veth",
                          peer={"ifname": b_if, "net_ns_fd": self.ns(b), **same}, **same)

    def _bridge(self, host: str, ports: Iterable[str]) -> None:
        ipr = self._ipr(host)
        ipr.link("add", ifname="br0", kind="bridge", br_forward_delay=0, br_stp_state=0)
        br = self._net.idx(host, "br0")
        for port in ports:
            ipr.link("set", index=self._net.idx(host, port), master=br, state="up")

    def _build_lan(self) -> None:
        for r in ROUTERS:
            self._veth(r, "lan0", "lan", r)
            self._net.up_addr(r, "lan0", self.lan_address(r), 24)
        self._bridge("lan", ROUTERS)
        self._net.up_addr("lan", "br0", self.LAN_HOST, 24)
        self._ipr("lan").route("add", dst="0.0.0.0/0", gateway=self.LAN_VIP)

    def _build_sync(self) -> None:
        self._veth("r1", "sync0", "r2", "sync0")
        for r in ROUTERS:
            self._net.up_addr(r, "sync0", self.sync_address(r), 30)

    def _build_isp(self, k: int) -> None:
        isp = f"isp{k}"
        up_ip, net_ip = self.isp_link(k)
        self._veth(isp, "up0", "net", isp)
        self._net.up_addr(isp, "up0", up_ip, 30)
        self._net.up_addr("net", isp, net_ip, 30)
        self._ipr(isp).route("add", dst="0.0.0.0/0", gateway=net_ip)
        self._ipr("net").route("add", dst=str(self.customer_range(k)), gateway=up_ip,
                               prefsrc=self.SERVERS[0])
        self._net.sysctls(isp, {"net.ipv4.ip_forward": 1})
        if self.topology == "shared":
            for r in ROUTERS:
                self._veth(r, self.iface(k), isp, r)
                self._net.up_addr(r, self.iface(k), self.address(r, k), 28)
            self._bridge(isp, ROUTERS)
            self._net.up_addr(isp, "br0", self.gateway(k), 28)
            self._net.sysctls(isp, {"net.ipv4.conf.br0.rp_filter": 1})
            return
        for r in ROUTERS:  # a PPP-like session per router (see topology.py)
            self._veth(r, self.iface(k), isp, r, ppp_mac(k, secrets.token_bytes(3)))
            self._net.sysctls(isp, {f"net.ipv4.conf.{r}.rp_filter": 1})
            for host, ifname, local, peer in ((isp, r, self.gateway(k), self.address(r, k)),
                                              (r, self.iface(k), self.address(r, k),
                                               self.gateway(k))):
                ipr, idx = self._ipr(host), self._net.idx(host, ifname)
                ipr.link("set", index=idx, flags=IFF_UP | IFF_NOARP,
                         change=IFF_UP | IFF_NOARP)
                ipr.addr("add", index=idx, local=local, address=peer, prefixlen=32)

    def prefer(self, k: int, routers: Sequence[str] = ROUTERS) -> None:
        """Main's default route on the routers: uplink k preferred (metric 10), the other 20 (a
        DHCP client / pppd would set these)."""
        for r in routers:
            ipr = self._ipr(r)
            for j in KS:  # (destination, metric) is the key: replace swaps the two
                idx = self._net.idx(r, self.iface(j))
                gw = {"gateway": self.gateway(j)} if self.topology == "shared" else {"scope": 253}
                ipr.route("replace", dst="0.0.0.0/0", oif=idx, priority=10 if j == k else 20,
                          proto=RTPROT_STATIC, **gw)

    def pinned_pair(self) -> tuple[Probe, Probe]:
        """One flowing connection per uplink, (a, b): `b` opened while uplink 2 was preferred
        (pinned to it against the current choice), `a` after uplink 1 became preferred again.
        The story the failover tests, the demo and bench/ha.py start from; LabError if it does
        not hold."""
        self.prefer(2)
        b = self.probe(self.SERVERS[1], name="b")
        if not b.wait_rounds(3, 10):
            raise LabError("no round trip over uplink 2")
        self.prefer(1)
        a = self.probe(self.SERVERS[0], name="a")
        if not a.wait_rounds(3, 10):
            raise LabError("no round trip over uplink 1")
        if (self.uplink_of(a.peer), self.uplink_of(b.peer)) != (1, 2):
            raise LabError(f"connections not one per uplink: a {a.peer}, b {b.peer}")
        if not b.wait_rounds(3, 10):
            raise LabError("b stopped after the choice changed")
        if self.uplink_of(b.peer) != 2:
            raise LabError("b moved on the master: no pinning")
        return a, b

    # -- daemons ----------------------------------------------------------------------------------
    def path(self, router: str, name: str) -> Path:
        """A router's per-instance file: keepalived.conf, conntrackd.conf, .sock, .lock, ..."""
        return self.workdir / f"{router}-{name}"

    def _spawn(self, router: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.path(router, log), "ab")  # noqa: SIM115 - closed in destroy
        self._logs.append(out)
        proc = subprocess.Popen([_ip_binary(), "netns", "exec", self.ns(router), *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        self._daemons[router].append(proc)
        return proc

    def ctd(self, router: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `conntrackd -C <router's config> ARGS` in the router (e.g. "-e": external cache)."""
        return exec_ns(self.ns(router), ["conntrackd", "-C",
                                         str(self.path(router, "conntrackd.conf")), *args],
                       check=check, timeout=30)

    def _start_conntrackd(self, router: str) -> None:
        conf = self.path(router, "conntrackd.conf")
        self.connpin(router, "ha", "conntrackd-conf", "--write")
        proc = self._spawn(router, ["conntrackd", "-C", str(conf)], "conntrackd.out")
        deadline = time.monotonic() + 15
        while self.ctd(router, "-s", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"conntrackd did not start in {router}: "
                               f"{self._tail(router, 'conntrackd.out', 'conntrackd.log')}")
            time.sleep(0.05)

    def _start_keepalived(self, router: str) -> None:
        wrapper = self.path(router, "connpin")
        wrapper.write_text(ha_conf.program(python=sys.executable,
                                           log=str(self.path(router, "roles.log"))))
        wrapper.chmod(0o700)
        instances = [ha_conf.Vrrp("lan", "lan0", 77, self.LAN_VIP, 24)]
        if self.topology == "shared":
            instances += [ha_conf.Vrrp(f"wan{k}", self.iface(k), 70 + k, self.vip(k), 28)
                          for k in KS]
        notify = self.connpin(router, "ha", "keepalived-notify", "--program", str(wrapper),
                              *(a for v in instances for a in ("--instance", v.name))).stdout
        conf = self.path(router, "keepalived.conf")
        conf.write_text(ha_conf.keepalived_conf(
            f"{self.prefix}-{router}", instances, priority=PRIORITY[router],
            master=router == "r1", advert_int=self.advert_int, notify=notify))
        self._spawn(router, ["keepalived", "-n", "-l", "-D", "-P", "-f", str(conf),
                             "-p", str(self.path(router, "keepalived.pid")),
                             "-r", str(self.path(router, "vrrp.pid"))], "keepalived.out")

    def _tail(self, router: str, *logs: str) -> str:
        text = []
        for name in logs:
            with contextlib.suppress(OSError):
                text.append(self.path(router, name).read_text()[-1500:])
        return "\n".join(text).strip() or "(no output)"

    def roles(self, router: str) -> list[tuple[float, str]]:
        """A router's role changes as keepalived's notify ran them: (unix time, "promote" |
        "demote" | "fault") when `connpin ha ROLE` started, (time, "ROLE-done") when it ended."""
        out = []
        with contextlib.suppress(OSError):
            for line in self.path(router, "roles.log").read_text().splitlines():
                t, _, state = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out.append((float(t), state.split()[0]))
        return out

    def wait_role(self, router: str, state: str, timeout: float, since: float = 0.0) -> float:
        """Wait until `connpin ha STATE` ended in the router (started at or after `since`, unix
        time); returns when it started (unix time)."""
        deadline = time.monotonic() + timeout
        while True:
            roles = [(t, s) for t, s in self.roles(router) if t >= since]
            began = [t for t, s in roles if s == state]
            if began and any(s == f"{state}-done" and t >= began[0] for t, s in roles):
                return began[0]
            if time.monotonic() > deadline:
                raise LabError(f"no `connpin ha {state}` in {router} after {timeout:.0f}s "
                               f"(roles {self.roles(router)}): "
                               f"{self._tail(router, 'keepalived.out', 'roles.log.out')}")
            time.sleep(0.05)

    def crash(self, router: str = "r1") -> float:
        """The router dies: keepalived and conntrackd killed (SIGKILL: no goodbye advert), then
        every link of it down. Returns the time (unix) it died."""
        t = time.time()
        self._kill_daemons(router)
        ipr = self._ipr(router)
        for link in ipr.get_links():
            if link.get_attr("IFLA_IFNAME") != "lo":
                ipr.link("set", index=link["index"], state="down")
        return t

    def _kill_daemons(self, router: str) -> None:
        for proc in self._daemons[router]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self._daemons[router]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._daemons[router].clear()

    # -- commands and traffic -------------------------------------------------------------------
    def set_sysctl(self, host: str, key: str, value: object) -> None:
        """Set a sysctl inside a host, e.g. ("r2", "net.netfilter.nf_conntrack_tcp_loose", 0)."""
        self._net.sysctls(host, {key: value})

    def exec(self, host: str, argv: list[str], check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return exec_ns(self.ns(host), list(argv), check=check, timeout=timeout)

    def config(self, router: str) -> Path:
        """A router's connpin config (the same uplinks on both; [ha] differs)."""
        return self.workdir / f"{router}.toml"

    def connpin(self, router: str, *args: str, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        """This checkout's connpin in a router, with its config."""
        argv = [sys.executable, "-m", "connpin", "--netns", self.ns(router),
                "-c", str(self.config(router)), *args]
        return run(argv, check=check, timeout=60)

    def probe(self, dst: str | None = None, *, name: str | None = None,
              interval: float = 0.1) -> Probe:
        """A long-lived TCP conversation from the LAN host to an internet server."""
        dst = dst or self.SERVERS[0]
        try:
            sock = open_connection(self.ns("lan"), dst, self.ECHO_PORT, 3.0)
        except OSError as e:
            raise LabError(f"probe lan -> {dst} could not connect: {e}") from e
        p = Probe(sock, name=name or f"lan->{dst}", interval=interval, on_event=self._event)
        self._probes.append(p)
        return p

    def _event(self, event: str, p: Probe) -> None:
        if event == "error":
            self._died.setdefault(id(p), time.time())

    def died_at(self, p: Probe) -> float | None:
        """When a probe's connection died (unix time; reset or other error), or None."""
        return self._died.get(id(p))

    def connect(self, dst: str | None = None, timeout: float = 2.0) -> str | None:
        """One short connection from the LAN host: the address the server saw, or None."""
        return connect_once(self.ns("lan"), dst or self.SERVERS[0], self.ECHO_PORT, timeout)

    def conntrack(self, router: str) -> str:
        """The router's conntrack table (`conntrack -L`, marks in hex)."""
        return self.exec(router, ["conntrack", "-L", "-o", "id"], check=False).stdout

    # -- state / removal --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "kind": "ha", "topology": self.topology,
                "uplinks": ["eth" if self.topology == "shared" else "ppp"] * len(KS),
                "namespaces": {h: self.ns(h) for h in self.hosts},
                "workdir": str(self.workdir), "config_path": str(self.config("r1")),
                "pid": os.getpid()}

    def destroy(self) -> None:
        """Kill every daemon (process groups), stop probes and servers, remove every namespace
        (and what still runs inside), the work directory and the state file. Idempotent."""
        if os.getpid() != self._pid or self._destroyed:
            return
        self._destroyed = True
        with cleanup.signals_deferred():
            for r in ROUTERS:
                with contextlib.suppress(Exception):
                    self._kill_daemons(r)
            for p in self._probes:
                with contextlib.suppress(Exception):
                    p.close()
            self._probes.clear()
            if self._servers is not None:
                with contextlib.suppress(Exception):
                    self._servers.close()
                self._servers = None
            for f in self._logs:
                with contextlib.suppress(Exception):
                    f.close()
            self._net.close()
            if self._owns_prefix:
                cleanup.remove_namespaces(self.prefix, self._net.created)
                shutil.rmtree(self.workdir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    cleanup.state_file(self.prefix).unlink()
            cleanup.unregister(self)
