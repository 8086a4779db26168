"""The lab: a multi-uplink router, its LAN, N ISPs and an internet host, in network namespaces.

This module owns the `Lab` object and its life cycle (build, destroy, keep), the uplinks' state
(up/down, current and past addresses) and what tests drive through it: commands, connpin runs,
configs, probes. The pieces live beside it: `addressing` (the address plan, pure), `topology`
(netlink: namespaces, veth pairs, PPP-like links), `hookrunner` (pppd/NetworkManager hook
calls), `config` (config and ruleset text, pure), `cleanup` (process-wide registry, signals,
state files, `down_all`), `commands` (`ip netns exec` and the errors).

One lab serves both the integration tests and `connpin lab demo`. Everything lives in namespaces
named after a random prefix, so several labs can run at once and nothing touches the host's own
networking. A lab is removed on exit, on exceptions, on Ctrl-C/SIGTERM and when its setup fails
halfway; `down_all()` removes what a killed process left behind.

Topology (addresses are part of the contract with the tests, see `addressing`)::

    lan 10.77.0.2 --- 10.77.0.1 lan0 [router] ppp0/wan1 --- cust0 [isp1] up0 --- isp1 [net]
                                              ppp1/wan2 --- cust0 [isp2] up0 --- isp2 [net]
                                                                     net: 203.0.113.10 on lo

With `ipv6=True` every link also carries IPv6 (documentation space): ISP k delegates
2001:db8:k::/48 (an Ethernet-like ISP's gateway is fe80::1, a PPP-like uplink routes
`default dev`), the LAN is fd00:77::/64. ISPs drop IPv6 packets from their customer whose
source is outside the delegated prefix (nft counter `spoofed` in table ip6 isp). NAT66
(masquerade) or NPTv6 to 2001:db8:k:77::/64 is up to the connpin config.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pyroute2 import netns as pnetns

from connpin.kernel import tools
from connpin.lab import cleanup, config, hookrunner
from connpin.lab.addressing import Addressing
from connpin.lab.cleanup import PREFIX
from connpin.lab.commands import LabError, exec_ns, run
from connpin.lab.echo import EchoServers, EventHook, Probe, connect_once, open_connection
from connpin.lab.serve import lab_servers
from connpin.lab.topology import Topology


class Lab(Addressing):
    """A lab of namespaces: build on enter, destroy on exit (see module docstring)."""

    #: pinning.backend written by default_config ("iptables": the flavour is $CONNPIN_IPTABLES)
    backend = "nftables"

    def __init__(self, uplinks: Iterable[str] = ("ppp", "ppp"), *, lab_masquerade: bool = False,
                 ipv6: bool = False):
        super().__init__(uplinks, PREFIX + secrets.token_hex(3))
        # Without IPv6 the lab is silent: no router solicitations, MLD reports or DAD probes
        # arriving at random times to move counters and conntrack under a test's feet.
        self.ipv6 = ipv6
        self.lab_masquerade = lab_masquerade
        self.workdir = Path(tempfile.gettempdir()) / f"{self.prefix}-work"
        self.config_path = self.workdir / "connpin.toml"
        self.hooks_root = self.workdir / "root"
        self._net = Topology(self, ipv6)
        self._servers: EchoServers | None = None
        self._probes: list[Probe] = []
        self._up: set[int] = set()
        self._addr: dict[int, str] = {k: self.default_address(k) for k in self.ks}
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

    def address(self, k: int) -> str:
        """The router's public address on uplink k (while down: the one it had or will get)."""
        return self._addr[self._check_k(k)]

    def is_up(self, k: int) -> bool:
        return self._check_k(k) in self._up

    def uplink_of(self, ip: str | None) -> int | None:
        """Which ISP a public source address belongs to (None for anything else)."""
        return self.owner(ip, {k: self._seen[k] | {self._addr[k]} for k in self.ks})

    # -- build / destroy --------------------------------------------------------------------------
    def build(self) -> None:
        """Create everything; on any failure (or Ctrl-C) remove what was created, then re-raise."""
        if self._built:
            raise LabError("this lab was already built")
        self._built = True
        self._pid = os.getpid()
        cleanup.register(self)
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _build(self) -> None:
        if not tools.exists("nft"):
            raise LabError("nft is not installed")
        taken = [n for n in pnetns.listnetns() if n.startswith(self.prefix + "-")]
        if taken or self.workdir.exists() or cleanup.state_file(self.prefix).exists():
            raise LabError(f"lab prefix {self.prefix} is in use ({', '.join(taken) or 'files'}); "
                           f"`connpin lab down {self.prefix}` removes a leftover")
        self._owns_prefix = True  # from here on, everything named after the prefix is ours
        self.workdir.mkdir(mode=0o700)
        self.hooks_root.mkdir()
        self._net.create_hosts()
        self._write_state()
        self._net.prepare_hosts()
        self._net.build_lan()
        self._net.build_server()
        for k in self.ks:
            self._build_isp(k)
        self._net.load_router_ruleset(self.lab_masquerade)
        self._servers = lab_servers({h: self.ns(h) for h in self.hosts}, self.ipv6)
        self._net.wait_fixed_links()

    def _build_isp(self, k: int) -> None:
        self._net.build_isp(k)

    def destroy(self) -> None:
        """Stop threads, remove every namespace and the work directory (idempotent)."""
        if os.getpid() != self._pid:
            return  # never from a forked child: the lab belongs to the process that built it
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        with cleanup.signals_deferred():
            for p in self._probes:
                with contextlib.suppress(Exception):
                    p.close()
            self._probes.clear()
            if self._servers is not None:
                with contextlib.suppress(Exception):
                    self._servers.close()
                self._servers = None
            self._net.close()
            if not self._kept and self._owns_prefix:
                cleanup.remove_namespaces(self.prefix, self._net.created)
                shutil.rmtree(self.workdir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    cleanup.state_file(self.prefix).unlink()
            cleanup.unregister(self)

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
            cleanup.keep_child(proc)
            self._kept = True
            state = self._write_state(server_pid=proc.pid)
        self.destroy()  # releases this process's handles; namespaces stay
        return state

    # -- state file -------------------------------------------------------------------------------
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
        return cleanup.write_state(self.prefix, {**self.state(), **extra})

    # -- inspection -------------------------------------------------------------------------------
    def set_sysctl(self, host: str, key: str, value: object) -> None:
        """Set a sysctl inside a host, e.g. ("router", "net.ipv4.conf.all.rp_filter", 1)."""
        self._net.sysctls(host, {key: value})

    def get_sysctl(self, host: str, key: str) -> str:
        return self._net.get_sysctl(host, key)

    def netstat(self, host: str) -> dict[str, int]:
        """A host's /proc/net/netstat and snmp counters, e.g. "TcpExt.IPReversePathFilter"."""
        return self._net.netstat(host)

    def iptables_save(self, family: int = 4) -> str:
        """The router's `iptables-save` (flavour: $CONNPIN_IPTABLES), comments dropped and
        counters zeroed, for before/after comparisons."""
        flavour = os.environ.get("CONNPIN_IPTABLES") or "iptables"
        if family == 6:
            flavour = flavour.replace("iptables", "ip6tables", 1)
        out = exec_ns(self.ns("router"), [f"{flavour}-save"]).stdout
        return "".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                       for line in out.splitlines(keepends=True) if not line.startswith("#"))

    def spoofed6(self, k: int) -> int:
        """IPv6 packets ISP k dropped because their source was not the customer's prefix."""
        argv = ["nft", "list", "counter", "ip6", "isp", "spoofed"]
        out = exec_ns(self.ns(f"isp{k}"), argv).stdout
        m = re.search(r"packets (\d+)", out)
        return int(m.group(1)) if m else 0

    # -- uplinks ----------------------------------------------------------------------------------
    def uplink_up(self, k: int, address: str | None = None) -> None:
        """Connect uplink k like pppd / a DHCP client would, then run the up hooks.

        Already up: nothing happens, unless `address` differs from the current one, which is
        a reconnect (down hooks, teardown, then up with the new address).
        """
        with self._lock:
            self._check_k(k)
            addr = str(ipaddress.IPv4Address(address or self.default_address(k)))
            if k in self._up:
                if address is None or addr == self._addr[k]:
                    return
                self.uplink_down(k)
            if self.kind(k) == "ppp":
                self._net.ppp_up(k, addr)
            else:
                self._net.eth_up(k, addr)
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
                self._net.ppp_down(k)
            else:
                self._net.eth_down(k)
            self._up.discard(k)
            self._write_state()

    def add_spare_uplinks(self, count: int) -> list[str]:
        """Add `count` cheap uplink-like interfaces to the router: `spare0`.. as port-less bridges,
        admin up with a /32 address from 100.100.0.0/16, and nothing behind them.

        For configs with many uplinks (benchmarks, the mark tree): connpin counts them up and
        installs their rules and routes, but no traffic can leave through them. Returns the
        interface names; they go away with the lab.
        """
        if not 0 <= count <= 4000:
            raise ValueError("count must be 0..4000")
        return self._net.add_spares(count, "spare")

    def _run_hooks(self, k: int, action: str, family: int = 4) -> list[str]:
        """Run the hook scripts installed under hooks_root, as pppd / NetworkManager would
        (family 6: pppd's separate ipv6-up/ipv6-down scripts)."""
        call = hookrunner.hook_call(self.hooks_root, self.kind(k), k, self.iface(k), action,
                                    self._addr[k], self.gateway(k), family)

        def in_router(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
            return exec_ns(self.ns("router"), argv, **kw)

        return hookrunner.run_hooks(call, in_router)

    # -- commands ---------------------------------------------------------------------------------
    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(os.environ)
        out.setdefault("CONNPIN_CONFIG", str(self.config_path))
        out.update(env or {})
        return out

    def exec(self, host: str, argv: list[str], check: bool = True,
             env: Mapping[str, str] | None = None, *, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run argv inside a host's namespace (env is added to ours; CONNPIN_CONFIG is set)."""
        return exec_ns(self.ns(host), list(argv), check=check, env=self._env(env), input=input,
                       timeout=timeout)

    def connpin(self, *args: str, check: bool = True, env: Mapping[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run this checkout's connpin against the router with the lab's config."""
        argv = [sys.executable, "-m", "connpin", "--netns", self.ns("router"),
                "-c", str(self.config_path), *map(str, args)]
        return run(argv, check=check, env=self._env(env), timeout=timeout)

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
        return config.connpin_config(self, backend=self.backend, masquerade=masquerade,
                                     nat6=nat6, pinning=pinning)

    # -- traffic ----------------------------------------------------------------------------------
    def probe(self, src: str = "lan", dst: str | None = None, port: int = 7,
              interval: float = 0.2, *, on_event: EventHook | None = None,
              name: str | None = None, device: str | None = None) -> Probe:
        """A long-lived TCP conversation from `src`; raises LabError if it cannot connect."""
        dst = dst or self.SERVER
        try:
            sock = open_connection(self.ns(src), dst, port, 2.0, device=device)
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
                timeout: float = 2.0, *, device: str | None = None) -> str | None:
        """One short connection: the peer address the server saw, or None if it failed."""
        return connect_once(self.ns(src), dst or self.SERVER, port, timeout, device=device)

