"""The lab: a multi-uplink router, its LAN, N ISPs and an internet host, in network namespaces.

One lab serves both the integration tests and `connpin lab demo`. Everything lives in namespaces
named after a random prefix, so several labs can run at once and nothing touches the host's own
networking. A lab is removed on exit, on exceptions, on Ctrl-C/SIGTERM and when its setup fails
halfway; `down_all()` removes what a killed process left behind.

Topology (addresses are part of the contract with the tests)::

    lan 10.77.0.2 --- 10.77.0.1 lan0 [router] ppp0/wan1 --- cust0 [isp1] up0 --- isp1 [net]
                                              ppp1/wan2 --- cust0 [isp2] up0 --- isp2 [net]
                                                                     net: 203.0.113.10 on lo

With `ipv6=True` every link also carries IPv6 (documentation space): ISP k delegates
2001:db8:k::/48 (the uplink link is 2001:db8:k::/64, the router's address 2001:db8:k::2; an
Ethernet-like ISP's gateway is fe80::1, a PPP-like uplink routes `default dev`), the LAN is
fd00:77::/64 (the router fd00:77::1, the host fd00:77::2), the internet host is 2001:db8:ff::10.
ISPs drop IPv6 packets from their customer whose source is outside the delegated prefix (nft
counter `spoofed` in table ip6 isp). NAT66 (masquerade) or NPTv6 to 2001:db8:k:77::/64 is up to
the connpin config.

A PPP-like uplink is a veth pair with ARP off and the SAME MAC on both ends: a NOARP device sends
every frame to its own address, and the peer accepts it as its own. That gives a working
point-to-point link (`default dev ppp0`) without ppp/tun drivers.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from socket import AF_INET6
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import config as pconfig
from pyroute2 import netns as pnetns

from connpin.const import IFF_UP
from connpin.kernel import netns
from connpin.lab.echo import EchoServers, EventHook, Probe, connect_once, open_connection

PREFIX = "cpl-"
STATE_DIR = Path("/run/connpin-lab")
KINDS = ("ppp", "eth")
MAX_UPLINKS = 15  # eth customer subnets are 198.51.100.(16k)/28

# pyroute2 creates namespaces (and sockets in them) from a forked child and gives it 2 s to
# answer; a new namespace waits for the kernel to finish tearing down old ones, which on a busy
# 2-core machine running several labs can take longer. Wait instead of failing the build.
pconfig.default_communicate_timeout = 30
pconfig.default_create_socket_timeout = 30

IFF_NOARP = 0x80
RTPROT_BOOT = 3  # pppd's defaultroute (ioctl SIOCADDRT) shows up as proto boot
RTPROT_DHCP = 16  # what NetworkManager uses for DHCP routes
RTPROT_RA = 9  # IPv6 default routes learned from router advertisements
IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253

#: The environment pppd and NetworkManager give their hook scripts: almost nothing.
HOOK_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
#: run-parts (Debian's /etc/ppp/ip-up) silently skips names outside this set.
_RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class LabError(Exception):
    """The lab could not be built or driven as asked."""


class HookError(LabError):
    """A hook script failed; the message carries its stderr."""


class CommandError(subprocess.CalledProcessError):
    """A command in the lab failed; unlike CalledProcessError, str() shows its output."""

    def __str__(self) -> str:
        out = []
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text and str(text).strip():
                out.append(f"--- {name}:\n{str(text).rstrip()}")
        return "\n".join([super().__str__(), *out])


def _ip_binary() -> str:
    for cand in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise LabError("iproute2's `ip` is not installed")


def _with_sbin(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment for a command: ours (or `env`), with the sbin directories on PATH."""
    out = dict(os.environ if env is None else env)
    path = [p for p in out.get("PATH", "").split(":") if p]
    out["PATH"] = ":".join(path + [p for p in HOOK_PATH.split(":") if p not in path])
    return out


def _run(argv: list[str], *, check: bool, env: Mapping[str, str] | None = None,
         timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, env=_with_sbin(env), capture_output=True, text=True, timeout=timeout,
                         input=input)
    if check and res.returncode != 0:
        raise CommandError(res.returncode, argv, res.stdout, res.stderr)
    return res


# -- cleanup of every live lab: atexit and signals ------------------------------------------------

_live: set[Lab] = set()
_live_lock = threading.Lock()
_handlers_installed = False
_prev_handlers: dict[int, Any] = {}
_owner_pid = os.getpid()
#: Server processes of labs kept by this process, to reap them when they are stopped here.
_kept_children: dict[int, subprocess.Popen[bytes]] = {}


def _destroy_live() -> None:
    if os.getpid() != _owner_pid:
        return  # a forked child (pyroute2 forks for IPRoute(netns=...)) owns no lab
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.destroy()


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind like Ctrl-C does, so `with Lab()` blocks clean up.

    A forked child inherits this handler and the parent's whole stack: unwinding there would
    run the parent's `with Lab()` exits and delete the parent's namespaces. pyroute2 forks a
    child for every IPRoute(netns=...) and SIGTERMs it, so the child must just die.
    """
    if os.getpid() != _owner_pid:
        os._exit(128 + signum)
    prev = _prev_handlers.get(signum)
    if callable(prev):
        _destroy_live()
        prev(signum, frame)
        return
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _handlers_installed, _owner_pid
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _owner_pid = os.getpid()
    atexit.register(_destroy_live)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        prev = signal.getsignal(sig)
        if prev is signal.SIG_IGN:
            continue
        _prev_handlers[sig] = prev
        signal.signal(sig, _on_signal)
    _handlers_installed = True


@contextlib.contextmanager
def _signals_deferred() -> Any:
    """Hold Ctrl-C/SIGTERM while tearing down, so a second signal cannot leave half a lab."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        if saved[s] is not signal.SIG_IGN:
            signal.signal(s, lambda n, f: pending.append(n))
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if pending:
            signal.raise_signal(pending[0])


# -- leftovers ------------------------------------------------------------------------------------

def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(netns.path(name)).st_ino
    except OSError:
        return None


def _kill_inside(names: Iterable[str], grace: float = 1.0) -> None:
    """Terminate processes living in these namespaces (a daemon a hook started, a kept server)."""
    inodes = {i for i in map(_ns_inode, names) if i is not None}
    if not inodes:
        return
    me = os.getpid()

    def pids() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    found.append(int(entry))
            except OSError:
                pass
        return found

    victims = pids()
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        time.sleep(0.02)
        victims = [p for p in victims if os.path.exists(f"/proc/{p}")
                   and _state_of(p) not in ("Z", "X")]
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _state_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _kill_server_process(state: Mapping[str, Any]) -> None:
    """Stop the background echo server of a kept lab, if it is still ours."""
    pid = state.get("server_pid")
    if not isinstance(pid, int):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return
    if b"connpin.lab.serve" not in cmdline or state.get("prefix", "").encode() not in cmdline:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    child = _kept_children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=2)
        return
    deadline = time.monotonic() + 2
    while _state_of(pid) not in ("Z", "X") and time.monotonic() < deadline:
        time.sleep(0.02)


def read_state(prefix: str) -> dict[str, Any] | None:
    """The state file of a lab (kept or running), or None."""
    try:
        return json.loads((STATE_DIR / f"{prefix}.json").read_text())
    except (OSError, ValueError):
        return None


def list_labs(prefix: str = PREFIX) -> list[str]:
    """Prefixes of the labs present: from state files and from namespace names."""
    found = set()
    with contextlib.suppress(OSError):
        for f in STATE_DIR.glob(f"{prefix}*.json"):
            found.add(f.stem)
    for name in pnetns.listnetns():
        if name.startswith(prefix) and "-" in name[len(PREFIX):]:
            found.add(name.rsplit("-", 1)[0])
    return sorted(found)


def down_all(prefix: str = PREFIX) -> list[str]:
    """Remove leftover lab namespaces whose name starts with `prefix`; returns their names.

    Also stops a kept lab's background servers and removes its work directory and state file.
    """
    states = []
    with contextlib.suppress(OSError):
        for f in STATE_DIR.glob("*.json"):
            if f.stem.startswith(prefix):
                st = read_state(f.stem)
                if st is not None:
                    states.append((f, st))
    for _, st in states:
        _kill_server_process(st)
    names = sorted(n for n in pnetns.listnetns() if n.startswith(prefix))
    _kill_inside(names)
    removed = []
    for name in names:
        try:
            pnetns.remove(name)
            removed.append(name)
        except OSError:
            pass
    for f, st in states:
        _remove_workdir(st.get("workdir"), st.get("prefix", ""))
        with contextlib.suppress(OSError):
            f.unlink()
    return removed


def _remove_workdir(path: str | None, prefix: str) -> None:
    """Remove a lab's work directory, but only one that is clearly a lab's."""
    if not path or not prefix:
        return
    p = Path(path)
    if p.name.startswith(prefix) and p.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(p, ignore_errors=True)


# -- the lab --------------------------------------------------------------------------------------

class Lab:
    """A lab of namespaces: build on enter, destroy on exit (see module docstring)."""

    SERVER = "203.0.113.10"
    ECHO_PORT = 7
    FORWARD_PORT = 8080
    LAN_HOST = "10.77.0.2"
    LAN_GATEWAY = "10.77.0.1"
    SERVER6 = "2001:db8:ff::10"
    LAN_HOST6 = "fd00:77::2"
    LAN_GATEWAY6 = "fd00:77::1"
    LAN_PREFIX6 = "fd00:77::/64"
    #: Extra environment for hook scripts (added to pppd's/NetworkManager's minimal one).
    hook_env: dict[str, str]
    #: pinning.backend written by default_config ("iptables": the flavour is $CONNPIN_IPTABLES)
    backend = "nftables"

    def __init__(self, uplinks: Iterable[str] = ("ppp", "ppp"), *, lab_masquerade: bool = False,
                 prefix: str | None = None, ipv6: bool = False):
        self.uplinks = tuple(uplinks)
        # Without IPv6 the lab is silent: no router solicitations, MLD reports or DAD probes
        # arriving at random times to move counters and conntrack under a test's feet.
        self.ipv6 = ipv6
        if not 1 <= len(self.uplinks) <= MAX_UPLINKS:
            raise ValueError(f"a lab has 1..{MAX_UPLINKS} uplinks, not {len(self.uplinks)}")
        for kind in self.uplinks:
            if kind not in KINDS:
                raise ValueError(f"unknown uplink kind {kind!r} (use {' or '.join(KINDS)})")
        self.lab_masquerade = lab_masquerade
        self.prefix = prefix or PREFIX + secrets.token_hex(3)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", self.prefix):
            raise ValueError(f"bad lab prefix {self.prefix!r}")
        self.hosts = ("lan", "router", "net", *(f"isp{k}" for k in self.ks))
        self.workdir = Path(tempfile.gettempdir()) / f"{self.prefix}-work"
        self.config_path = self.workdir / "connpin.toml"
        self.hooks_root = self.workdir / "root"
        self.hook_env = {}
        self._ipr: dict[str, IPRoute] = {}
        self._created: list[str] = []
        self._servers: EchoServers | None = None
        self._probes: list[Probe] = []
        self._up: set[int] = set()
        self._addr: dict[int, str] = {k: self._default_address(k) for k in self.ks}
        self._extra_routes: dict[int, str] = {}  # k -> /32 routed by net outside the range
        self._seen: dict[int, set[str]] = {k: set() for k in self.ks}
        self._lock = threading.RLock()
        self._built = False
        self._destroyed = False
        self._kept = False
        self._owns_prefix = False
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} uplinks={','.join(self.uplinks)} up={sorted(self._up)}>"

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- names and addresses ----------------------------------------------------------------------
    @property
    def ks(self) -> range:
        """The ISP numbers, 1-based."""
        return range(1, len(self.uplinks) + 1)

    def ns(self, host: str) -> str:
        """The namespace name of a host: "lan", "router", "net", "isp1".."ispN"."""
        if host not in self.hosts:
            raise ValueError(f"no host {host!r} in this lab (hosts: {', '.join(self.hosts)})")
        return f"{self.prefix}-{host}"

    def kind(self, k: int) -> str:
        return self.uplinks[self._check_k(k) - 1]

    def _check_k(self, k: int) -> int:
        if k not in self.ks:
            raise ValueError(f"no uplink {k} (this lab has {len(self.uplinks)})")
        return k

    def iface(self, k: int) -> str:
        """The router's interface of uplink k: ppp{k-1} (PPP-like) or wan{k} (Ethernet-like)."""
        return f"ppp{k - 1}" if self.kind(k) == "ppp" else f"wan{k}"

    def _default_address(self, k: int) -> str:
        return f"100.64.{k}.2" if self.uplinks[k - 1] == "ppp" else f"198.51.100.{16 * k + 2}"

    def gateway(self, k: int) -> str:
        """The ISP's end: the PPP peer or the Ethernet gateway."""
        return f"100.64.{k}.1" if self.kind(k) == "ppp" else f"198.51.100.{16 * k + 1}"

    def customer_range(self, k: int) -> ipaddress.IPv4Network:
        if self.kind(k) == "ppp":
            return ipaddress.IPv4Network(f"100.64.{k}.0/24")
        return ipaddress.IPv4Network(f"198.51.100.{16 * k}/28")

    def address(self, k: int) -> str:
        """The router's public address on uplink k (while down: the one it had or will get)."""
        return self._addr[self._check_k(k)]

    # IPv6 (ipv6=True): fixed addresses per uplink
    def delegated(self, k: int) -> ipaddress.IPv6Network:
        """The prefix ISP k delegates to the router (its IPv6 customer range)."""
        return ipaddress.IPv6Network(f"2001:db8:{self._check_k(k)}::/48")

    def address6(self, k: int) -> str:
        """The router's IPv6 address on uplink k."""
        return f"2001:db8:{self._check_k(k)}::2"

    def gateway6(self, k: int) -> str:
        """ISP k's IPv6 end: the link-local gateway of an Ethernet-like uplink, else its address."""
        return "fe80::1" if self.kind(k) == "eth" else f"2001:db8:{k}::1"

    def npt_prefix(self, k: int) -> str:
        """Where NPTv6 maps the LAN's fd00:77::/64 on uplink k."""
        return f"2001:db8:{self._check_k(k)}:77::/64"

    def is_up(self, k: int) -> bool:
        return self._check_k(k) in self._up

    def uplink_of(self, ip: str | None) -> int | None:
        """Which ISP a public source address belongs to (None for anything else)."""
        if not ip:
            return None
        try:
            a6 = ipaddress.IPv6Address(ip)
        except ValueError:
            pass
        else:
            return next((k for k in self.ks if a6 in self.delegated(k)), None)
        try:
            a = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        for k in self.ks:
            if a in self.customer_range(k) or ip in self._seen[k] or ip == self._addr[k]:
                return k
        return None

    # -- build / destroy --------------------------------------------------------------------------
    def build(self) -> None:
        """Create everything; on any failure (or Ctrl-C) remove what was created, then re-raise."""
        if self._built:
            raise LabError("this lab was already built")
        self._built = True
        self._pid = os.getpid()
        with _live_lock:
            _live.add(self)
        _install_handlers()
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _build(self) -> None:
        if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
            raise LabError("nft is not installed")
        taken = [n for n in pnetns.listnetns() if n.startswith(self.prefix + "-")]
        if taken or self.workdir.exists() or self._state_file.exists():
            raise LabError(f"lab prefix {self.prefix} is in use ({', '.join(taken) or 'files'}); "
                           f"`connpin lab down {self.prefix}` removes a leftover")
        self._owns_prefix = True  # from here on, everything named after the prefix is ours
        self.workdir.mkdir(mode=0o700)
        self.hooks_root.mkdir()
        for host in self.hosts:
            name = self.ns(host)
            self._created.append(name)
            pnetns.create(name)
            self._ipr[host] = IPRoute(netns=name, flags=0)
        self._write_state()
        for host in self.hosts:
            forward = host == "router" or host.startswith("isp")
            self._sysctls(host, {
                "net.ipv4.ip_forward": int(forward),
                # a new namespace may inherit rp_filter from the host: make it explicit
                "net.ipv4.conf.all.rp_filter": 1 if host.startswith("isp") else 0,
                "net.ipv4.conf.default.rp_filter": 1 if host.startswith("isp") else 0,
                "net.ipv6.conf.all.disable_ipv6": int(not self.ipv6),
                "net.ipv6.conf.default.disable_ipv6": int(not self.ipv6),
            })
            if self.ipv6:  # quiet IPv6: no DAD waits, no router solicitations/advertisements
                self._sysctls(host, {
                    "net.ipv6.conf.all.forwarding": int(forward),
                    **{f"net.ipv6.conf.{c}.{key}": 0 for c in ("all", "default")
                       for key in ("accept_dad", "router_solicitations", "accept_ra")},
                })
            ipr = self._ipr[host]
            ipr.link("set", index=self._idx(host, "lo"), state="up")
        self._build_lan()
        self._ipr["net"].addr("add", index=self._idx("net", "lo"), address=self.SERVER,
                              prefixlen=32)
        if self.ipv6:
            self._ipr["net"].addr("add", index=self._idx("net", "lo"), address=self.SERVER6,
                                  prefixlen=128)
        for k in self.ks:
            self._build_isp(k)
        self._load_nft()
        self._servers = EchoServers()
        self._servers.listen(self.ns("router"), self.ECHO_PORT)
        self._servers.listen(self.ns("lan"), self.FORWARD_PORT)
        self._servers.listen(self.ns("net"), self.ECHO_PORT)
        if self.ipv6:
            self._servers.listen(self.ns("router"), self.ECHO_PORT, "::")
            self._servers.listen(self.ns("lan"), self.FORWARD_PORT, "::")
            self._servers.listen(self.ns("net"), self.ECHO_PORT, "::")
        self._servers.start()
        waits = [("lan", "eth0"), ("router", "lan0")]
        waits += [(f"isp{k}", "up0") for k in self.ks] + [("net", f"isp{k}") for k in self.ks]
        self._wait_operstate(waits)

    def _build_lan(self) -> None:
        r, lan = self._ipr["router"], self._ipr["lan"]
        r.link("add", ifname="lan0", kind="veth", peer={"ifname": "eth0",
                                                         "net_ns_fd": self.ns("lan")})
        self._up_addr("router", "lan0", self.LAN_GATEWAY, 24)
        self._up_addr("lan", "eth0", self.LAN_HOST, 24)
        lan.route("add", dst="0.0.0.0/0", gateway=self.LAN_GATEWAY)
        if self.ipv6:
            self._addr6("router", "lan0", self.LAN_GATEWAY6, 64)
            self._addr6("lan", "eth0", self.LAN_HOST6, 64)
            lan.route("add", dst="::/0", gateway=self.LAN_GATEWAY6, family=AF_INET6)

    def _build_isp(self, k: int) -> None:
        isp, net = f"isp{k}", self._ipr["net"]
        up_ip, net_ip = f"192.0.2.{4 * k + 1}", f"192.0.2.{4 * k + 2}"
        self._ipr[isp].link("add", ifname="up0", kind="veth",
                            peer={"ifname": isp, "net_ns_fd": self.ns("net")})
        self._up_addr(isp, "up0", up_ip, 30)
        self._up_addr("net", isp, net_ip, 30)
        self._ipr[isp].route("add", dst="0.0.0.0/0", gateway=net_ip)
        # Replies from the internet host come from its public address, whatever the ISP.
        net.route("add", dst=str(self.customer_range(k)), gateway=up_ip, prefsrc=self.SERVER)
        if self.kind(k) == "eth":
            self._ipr["router"].link("add", ifname=self.iface(k), kind="veth",
                                     peer={"ifname": "cust0", "net_ns_fd": self.ns(isp)})
            self._up_addr(isp, "cust0", self.gateway(k), 28)
            self.set_sysctl(isp, "net.ipv4.conf.cust0.rp_filter", 1)
        if self.ipv6:
            self._build_isp6(k)

    def _build_isp6(self, k: int) -> None:
        isp, net = f"isp{k}", self._ipr["net"]
        up_ip, net_ip = f"2001:db8:f0:{k}::1", f"2001:db8:f0:{k}::2"
        self._addr6(isp, "up0", up_ip, 64)
        self._addr6("net", isp, net_ip, 64)
        self._ipr[isp].route("add", dst="::/0", gateway=net_ip, family=AF_INET6)
        net.route("add", dst=str(self.delegated(k)), gateway=up_ip, prefsrc=self.SERVER6,
                  family=AF_INET6)
        if self.kind(k) == "eth":
            self._addr6(isp, "cust0", f"2001:db8:{k}::1", 64)
            self._addr6(isp, "cust0", "fe80::1", 64)
            self._ipr[isp].route("add", dst=str(self.delegated(k)), gateway=self.address6(k),
                                 family=AF_INET6)
        # IPv6 has no rp_filter: the ISP drops foreign sources from its customer in nft
        self._exec_ns(isp, ["nft", "-f", "-"], input=(
            "table ip6 isp {\n  counter spoofed { }\n  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f'    iifname "cust0" ip6 saddr != {self.delegated(k)} counter name spoofed drop\n'
            "  }\n}\n"))

    def _addr6(self, host: str, ifname: str, address: str, prefixlen: int) -> None:
        ipr = self._ipr[host]
        idx = self._idx(host, ifname)
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen, family=AF_INET6,
                 flags=IFA_F_NODAD)

    def iptables_save(self, family: int = 4) -> str:
        """The router's `iptables-save` (flavour: $CONNPIN_IPTABLES), comments dropped and
        counters zeroed, for before/after comparisons."""
        flavour = os.environ.get("CONNPIN_IPTABLES") or "iptables"
        if family == 6:
            flavour = flavour.replace("iptables", "ip6tables", 1)
        out = self._exec_ns("router", [f"{flavour}-save"]).stdout
        return "".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                       for line in out.splitlines(keepends=True) if not line.startswith("#"))

    def spoofed6(self, k: int) -> int:
        """IPv6 packets ISP k dropped because their source was not the customer's prefix."""
        out = self._exec_ns(f"isp{k}", ["nft", "list", "counter", "ip6", "isp", "spoofed"]).stdout
        m = re.search(r"packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def _load_nft(self) -> None:
        masq = '    oifname { "ppp*", "wan*" } masquerade\n' if self.lab_masquerade else ""
        ruleset = (
            "table inet lab {\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname {{ "ppp*", "wan*" }} tcp dport {self.FORWARD_PORT} '
            f"dnat ip to {self.LAN_HOST}:{self.FORWARD_PORT}\n"
            + (f'    iifname {{ "ppp*", "wan*" }} tcp dport {self.FORWARD_PORT} '
               f"dnat ip6 to [{self.LAN_HOST6}]:{self.FORWARD_PORT}\n" if self.ipv6 else "") +
            "  }\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"{masq}"
            "  }\n"
            "}\n"
        )
        self._exec_ns("router", ["nft", "-f", "-"], input=ruleset)

    def destroy(self) -> None:
        """Stop threads, remove every namespace and the work directory (idempotent)."""
        if os.getpid() != self._pid:
            return  # never from a forked child: the lab belongs to the process that built it
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        with _signals_deferred():
            for p in self._probes:
                with contextlib.suppress(Exception):
                    p.close()
            self._probes.clear()
            if self._servers is not None:
                with contextlib.suppress(Exception):
                    self._servers.close()
                self._servers = None
            for ipr in self._ipr.values():
                with contextlib.suppress(Exception):
                    ipr.close()
            self._ipr.clear()
            if not self._kept and self._owns_prefix:
                mine = set(self._created)
                with contextlib.suppress(OSError):
                    mine |= {n for n in pnetns.listnetns() if n.startswith(self.prefix + "-")}
                _kill_inside(mine)
                for name in sorted(mine):
                    with contextlib.suppress(OSError):
                        pnetns.remove(name)
                shutil.rmtree(self.workdir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self._state_file.unlink()
            with _live_lock:
                _live.discard(self)

    def keep(self) -> dict[str, Any]:
        """Leave the lab running after this process: servers move to a background process.

        Returns the state written to /run/connpin-lab/<prefix>.json; `down_all(prefix)` or
        `connpin lab down` removes the lab later.
        """
        with self._lock:
            for p in self._probes:
                p.close()
            self._probes.clear()
            if self._servers is not None:
                self._servers.close()
                self._servers = None
            log = open(self.workdir / "servers.log", "ab")  # noqa: SIM115 - handed to the child
            with log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "connpin.lab.serve", self.prefix],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                )
            _kept_children[proc.pid] = proc
            self._kept = True
            state = self._write_state(server_pid=proc.pid)
        self.destroy()  # releases this process's handles; namespaces stay
        return state

    # -- state file -------------------------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return STATE_DIR / f"{self.prefix}.json"

    def state(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "uplinks": list(self.uplinks),
            "lab_masquerade": self.lab_masquerade,
            "ipv6": self.ipv6,
            "namespaces": {h: self.ns(h) for h in self.hosts},
            "workdir": str(self.workdir),
            "config_path": str(self.config_path),
            "hooks_root": str(self.hooks_root),
            "up": sorted(self._up),
            "addresses": {str(k): self._addr[k] for k in self.ks},
            "interfaces": {str(k): self.iface(k) for k in self.ks},
            "server": self.SERVER,
            "pid": os.getpid(),
        }

    def _write_state(self, **extra: Any) -> dict[str, Any]:
        state = {**self.state(), **extra}
        old = read_state(self.prefix) or {}
        if "server_pid" in old and "server_pid" not in extra:
            state["server_pid"] = old["server_pid"]
        STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)
        return state

    # -- netlink helpers --------------------------------------------------------------------------
    def _idx(self, host: str, ifname: str) -> int:
        found = self._ipr[host].link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"no interface {ifname} in {host}")
        return found[0]

    def _up_addr(self, host: str, ifname: str, address: str, prefixlen: int) -> None:
        ipr = self._ipr[host]
        idx = self._idx(host, ifname)
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)

    def _wait_operstate(self, pairs: Iterable[tuple[str, str]], timeout: float = 3.0) -> None:
        """Wait until links are operationally up: before that a veth drops what it is given."""
        todo = list(pairs)
        deadline = time.monotonic() + timeout
        while todo:
            todo = [(h, i) for h, i in todo
                    if self._ipr[h].get_links(self._idx(h, i))[0].get("operstate") != "UP"]
            if not todo:
                return
            if time.monotonic() > deadline:
                raise LabError(f"links not up after {timeout}s: {todo}")
            time.sleep(0.005)

    def _sysctls(self, host: str, values: Mapping[str, object]) -> None:
        with netns.inside(self.ns(host)):
            for key, value in values.items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(f"{value}\n")

    def set_sysctl(self, host: str, key: str, value: object) -> None:
        """Set a sysctl inside a host, e.g. ("router", "net.ipv4.conf.all.rp_filter", 1)."""
        self._sysctls(host, {key: value})

    def get_sysctl(self, host: str, key: str) -> str:
        with netns.inside(self.ns(host)), open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()

    def netstat(self, host: str) -> dict[str, int]:
        """A host's /proc/net/netstat and snmp counters, e.g. "TcpExt.IPReversePathFilter"."""
        out: dict[str, int] = {}
        with netns.inside(self.ns(host)):
            for name in ("netstat", "snmp"):
                with open(f"/proc/thread-self/net/{name}") as f:
                    lines = f.read().splitlines()
                for head, vals in zip(lines[::2], lines[1::2], strict=False):
                    sect, _, keys = head.partition(":")
                    for key, val in zip(keys.split(), vals.partition(":")[2].split(),
                                        strict=False):
                        with contextlib.suppress(ValueError):
                            out[f"{sect}.{key}"] = int(val)
        return out

    # -- uplinks ----------------------------------------------------------------------------------
    def uplink_up(self, k: int, address: str | None = None) -> None:
        """Connect uplink k like pppd / a DHCP client would, then run the up hooks.

        Already up: nothing happens, unless `address` differs from the current one, which is
        a reconnect (down hooks, teardown, then up with the new address).
        """
        with self._lock:
            self._check_k(k)
            addr = str(ipaddress.IPv4Address(address or self._default_address(k)))
            if k in self._up:
                if address is None or addr == self._addr[k]:
                    return
                self.uplink_down(k)
            if self.kind(k) == "ppp":
                self._ppp_up(k, addr)
            else:
                self._eth_up(k, addr)
            self._addr[k] = addr
            self._seen[k].add(addr)
            self._up.add(k)
            self._write_state()
        self._run_hooks(k, "up")
        if self.ipv6 and self.kind(k) == "ppp":
            self._run_hooks(k, "up", 6)

    def uplink_down(self, k: int) -> None:
        """Disconnect uplink k: down hooks first (the interface still exists), then tear down.

        Already down: nothing happens.
        """
        self._check_k(k)
        if k not in self._up:
            return
        if self.ipv6 and self.kind(k) == "ppp":
            self._run_hooks(k, "down", 6)
        self._run_hooks(k, "down")
        with self._lock:
            if self.kind(k) == "ppp":
                r = self._ipr["router"]
                r.link("del", index=self._idx("router", self.iface(k)))
                extra = self._extra_routes.pop(k, None)
                if extra:
                    with contextlib.suppress(Exception):
                        self._ipr["net"].route("del", dst=f"{extra}/32")
            else:
                self._eth_down(k)
            self._up.discard(k)
            self._write_state()

    def add_spare_uplinks(self, count: int, prefix: str = "spare") -> list[str]:
        """Add `count` cheap uplink-like interfaces to the router: `spare0`.. as port-less bridges,
        admin up with a /32 address from 100.100.0.0/16, and nothing behind them.

        For configs with many uplinks (benchmarks, the mark tree): connpin counts them up and
        installs their rules and routes, but no traffic can leave through them. Returns the
        interface names; they go away with the lab.
        """
        if not 0 <= count <= 4000 or not re.fullmatch(r"[a-z]{1,8}", prefix):
            raise ValueError("count must be 0..4000 and prefix 1-8 lowercase letters")
        r, names = self._ipr["router"], []
        for i in range(count):
            name = f"{prefix}{i}"
            r.link("add", ifname=name, kind="bridge")
            self._up_addr("router", name, f"100.100.{i // 250}.{i % 250 + 1}", 32)
            names.append(name)
        return names

    def _ppp_up(self, k: int, addr: str) -> None:
        r, isp, ifname = self._ipr["router"], self._ipr[f"isp{k}"], self.iface(k)
        peer = self.gateway(k)
        # Same MAC on both ends: see the module docstring.
        mac = ":".join(f"{b:02x}" for b in (0x02, 0xCB, k, *secrets.token_bytes(3)))
        r.link("add", ifname=ifname, kind="veth", address=mac,
               peer={"ifname": "cust0", "net_ns_fd": self.ns(f"isp{k}"), "address": mac})
        ridx, iidx = self._idx("router", ifname), self._idx(f"isp{k}", "cust0")
        self.set_sysctl(f"isp{k}", "net.ipv4.conf.cust0.rp_filter", 1)
        isp.link("set", index=iidx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
        isp.addr("add", index=iidx, local=peer, address=addr, prefixlen=32)
        r.link("set", index=ridx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
        r.addr("add", index=ridx, local=addr, address=peer, prefixlen=32)
        if ipaddress.IPv4Address(addr) not in self.customer_range(k):
            self._ipr["net"].route("replace", dst=f"{addr}/32", gateway=f"192.0.2.{4 * k + 1}",
                                   prefsrc=self.SERVER)
            self._extra_routes[k] = addr
        self._wait_operstate([("router", ifname), (f"isp{k}", "cust0")])
        r.route("add", dst="0.0.0.0/0", oif=ridx, priority=10 * k, proto=RTPROT_BOOT,
                scope=RT_SCOPE_LINK)
        if self.ipv6:
            self._addr6(f"isp{k}", "cust0", f"2001:db8:{k}::1", 64)
            isp.route("add", dst=str(self.delegated(k)), oif=iidx, family=AF_INET6)
            self._addr6("router", ifname, self.address6(k), 64)
            r.route("add", dst="::/0", oif=ridx, priority=10 * k, proto=RTPROT_BOOT,
                    family=AF_INET6)

    def _eth_up(self, k: int, addr: str) -> None:
        if ipaddress.IPv4Address(addr) not in self.customer_range(k):
            raise LabError(f"uplink {k} is Ethernet-like: its address must be inside "
                           f"{self.customer_range(k)}, not {addr}")
        r, ifname = self._ipr["router"], self.iface(k)
        self._up_addr("router", ifname, addr, 28)
        self._wait_operstate([("router", ifname), (f"isp{k}", "cust0")])
        r.route("add", dst="0.0.0.0/0", gateway=self.gateway(k), oif=self._idx("router", ifname),
                priority=10 * k, proto=RTPROT_DHCP)
        if self.ipv6:
            self._addr6("router", ifname, self.address6(k), 64)
            r.route("add", dst="::/0", gateway=self.gateway6(k), oif=self._idx("router", ifname),
                    priority=10 * k, proto=RTPROT_RA, family=AF_INET6)

    def _eth_down(self, k: int) -> None:
        r, ifname = self._ipr["router"], self.iface(k)
        idx = self._idx("router", ifname)
        with contextlib.suppress(Exception):
            r.route("del", dst="0.0.0.0/0", gateway=self.gateway(k), oif=idx, priority=10 * k)
        if self.ipv6:
            with contextlib.suppress(Exception):
                r.route("del", dst="::/0", gateway=self.gateway6(k), oif=idx, priority=10 * k,
                        family=AF_INET6)
        r.flush_addr(index=idx)
        r.link("set", index=idx, state="down")

    # -- hooks ------------------------------------------------------------------------------------
    def _hook_call(self, k: int, action: str,
                   family: int = 4) -> tuple[Path, list[str], dict[str, str], bool]:
        ifname, addr, peer = self.iface(k), self._addr[k], self.gateway(k)
        env = {"PATH": HOOK_PATH}
        if self.kind(k) == "ppp" and family == 6:
            # pppd's ipv6-up: iface tty speed local-link-local remote-link-local ipparam
            d = self.hooks_root / "etc/ppp" / f"ipv6-{action}.d"
            addr, peer = "fe80::2", "fe80::1"
        elif self.kind(k) == "ppp":
            d = self.hooks_root / "etc/ppp" / f"ip-{action}.d"
            # pppd's ip-up: iface tty speed local remote ipparam (Debian exports PPP_*)
            args = [ifname, "/dev/pts/lab", "115200", addr, peer, ""]
            env |= {"PPP_IFACE": ifname, "PPP_TTY": "/dev/pts/lab", "PPP_SPEED": "115200",
                    "PPP_LOCAL": addr, "PPP_REMOTE": peer, "PPP_IPPARAM": "",
                    "IFNAME": ifname, "IPLOCAL": addr, "IPREMOTE": peer}
            return d, args, env, True
        d = self.hooks_root / "etc/NetworkManager/dispatcher.d"
        env |= {"DEVICE_IFACE": ifname, "DEVICE_IP_IFACE": ifname,
                "NM_DISPATCHER_ACTION": action, "CONNECTION_ID": f"isp{k}"}
        if action == "up":
            env |= {"IP4_NUM_ADDRESSES": "1", "IP4_ADDRESS_0": f"{addr}/28 {peer}",
                    "IP4_GATEWAY": peer}
        return d, [ifname, action], env, False

    def _run_hooks(self, k: int, action: str, family: int = 4) -> list[str]:
        """Run the hook scripts installed under hooks_root, as pppd / NetworkManager would
        (family 6: pppd's separate ipv6-up/ipv6-down scripts)."""
        d, args, env, run_parts = self._hook_call(k, action, family)
        if not d.is_dir():
            return []
        env |= {key: v for key, v in os.environ.items() if key.startswith("CONNPIN_")}
        env |= self.hook_env
        ran = []
        for name in sorted(os.listdir(d)):
            path = d / name
            if not path.is_file() or not os.access(path, os.X_OK):
                continue
            if run_parts and not _RUN_PARTS_NAME.match(name):
                raise HookError(f"{path}: run-parts (pppd's ip-up) would silently skip this name")
            if not run_parts:
                st = path.stat()
                if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    raise HookError(f"{path}: NetworkManager ignores scripts not owned by root "
                                    "or writable by group/others")
            res = self._exec_ns("router", [str(path), *args], env=env, check=False)
            if res.returncode != 0:
                raise HookError(f"hook {path} {' '.join(args)} exited {res.returncode}:\n"
                                f"{res.stderr.strip() or res.stdout.strip()}")
            ran.append(str(path))
        return ran

    # -- commands ---------------------------------------------------------------------------------
    def _exec_ns(self, host: str, argv: list[str], *, check: bool = True,
                 env: Mapping[str, str] | None = None, input: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run([_ip_binary(), "netns", "exec", self.ns(host), *argv], check=check, env=env,
                    input=input, timeout=timeout)

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(os.environ)
        out.setdefault("CONNPIN_CONFIG", str(self.config_path))
        out.update(env or {})
        return out

    def exec(self, host: str, argv: list[str], check: bool = True,
             env: Mapping[str, str] | None = None, *, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run argv inside a host's namespace (env is added to ours; CONNPIN_CONFIG is set)."""
        return self._exec_ns(host, list(argv), check=check, env=self._env(env), input=input,
                             timeout=timeout)

    def connpin(self, *args: str, check: bool = True, env: Mapping[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run this checkout's connpin against the router with the lab's config."""
        argv = [sys.executable, "-m", "connpin", "--netns", self.ns("router"),
                "-c", str(self.config_path), *map(str, args)]
        return _run(argv, check=check, env=self._env(env), timeout=timeout)

    # -- config -----------------------------------------------------------------------------------
    def write_config(self, text: str) -> Path:
        self.config_path.write_text(text)
        return self.config_path

    def default_config(self, masquerade: bool = True, nat6: str | None = None,
                       **pinning: object) -> str:
        """A connpin config for this lab's uplinks: isp1..ispN on their interfaces.

        nat6 (IPv6 labs): "masquerade" (the default when `masquerade`), "nptv6" (fd00:77::/64 to
        each ISP's 2001:db8:k:77::/64) or "none".
        """
        if nat6 is None:
            nat6 = "masquerade" if masquerade and self.ipv6 else "none"
        lines = ["[pinning]"]
        if self.backend != "nftables" and "backend" not in pinning:
            lines.append(f'backend = "{self.backend}"')
        for key, value in pinning.items():
            lines.append(f"{key} = {_toml_value(key, value)}")
        for k in self.ks:
            lines += ["", "[[uplink]]", f'name = "isp{k}"', f'interface = "{self.iface(k)}"']
            if self.kind(k) == "eth":
                lines.append('gateway = "auto"')
            lines.append(f"masquerade = {'true' if masquerade else 'false'}")
            if nat6 == "masquerade":
                lines.append("masquerade6 = true")
            elif nat6 == "nptv6":
                lines.append(f'nptv6 = {{ "{self.LAN_PREFIX6}" = "{self.npt_prefix(k)}" }}')
        return "\n".join(lines) + "\n"

    # -- traffic ----------------------------------------------------------------------------------
    def probe(self, src: str = "lan", dst: str | None = None, port: int = 7,
              interval: float = 0.2, *, on_event: EventHook | None = None,
              connect_timeout: float = 2.0, name: str | None = None,
              source: str | None = None, device: str | None = None) -> Probe:
        """A long-lived TCP conversation from `src`; raises LabError if it cannot connect."""
        dst = dst or self.SERVER
        try:
            sock = open_connection(self.ns(src), dst, port, connect_timeout, source=source,
                                   device=device)
        except OSError as e:
            raise LabError(f"probe {src} -> {dst}:{port} could not connect: {e}") from e
        p = Probe(sock, name=name or f"{src}->{dst}:{port}", interval=interval, on_event=on_event)
        with self._lock:
            if self._destroyed:
                p.close()
                raise LabError("the lab is gone")
            self._probes.append(p)
        return p

    def connect(self, src: str = "lan", dst: str | None = None, port: int = 7,
                timeout: float = 2.0, *, source: str | None = None,
                device: str | None = None) -> str | None:
        """One short connection: the peer address the server saw, or None if it failed."""
        return connect_once(self.ns(src), dst or self.SERVER, port, timeout, source=source,
                            device=device)


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:08x}" if ("mask" in key or "mark" in key) and value >= 0 else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise TypeError(f"cannot write {key}={value!r} as TOML")
