"""The real machine behind reconcile: observe the slice connpin owns, execute one step at a time.
All in the network namespace the process is in (the CLI enters `--netns` first)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from connpin import desired as D
from connpin.kernel import iptables as ipt
from connpin.kernel import nft as nftool
from connpin.kernel import state, sysctl
from connpin.kernel.netlink import Netlink
from connpin.model import Config
from connpin.reconcile import Installed, Step, sha
from connpin.render import nft


class Kernel:
    """Observes and changes this namespace's kernel; remembers sysctl originals in /run."""

    def __init__(self) -> None:
        self.netlink = Netlink()
        self.generation = nftool.Generation()
        self.state = state.load()
        self._table = "connpin"
        self._backend = "nftables"
        self._families: tuple[int, ...] = (4, 6)
        self._links: dict = {}
        self._held: dict | None = None  # links kept for verify (see verifying)
        # the last `nft list` of connpin's table: ((generation, table), text)
        self._listed: tuple[tuple[int, str] | None, str | None] = (None, None)

    def close(self) -> None:
        self.netlink.close()
        self.generation.close()

    @contextmanager
    def verifying(self) -> Iterator[None]:
        """While verifying an apply, observe the links as the apply did: verify checks that this
        apply's plan landed (rules, routes, ruleset and sysctls are read back anew), and a link
        that changed meanwhile is the next converge's business (its hook or event). Saves the
        link and address dumps, the largest part of observing (~50 ms at 256 links)."""
        self._held = self._links
        try:
            yield
        finally:
            self._held = None

    def _listing(self) -> str | None:
        """connpin's table as `nft list` shows it; from the state when the generation says the
        ruleset has not changed since it was recorded (no process start on the common path)."""
        nst = self.state.get("nft", {})
        gen = self.generation.read()
        if gen is not None and nst.get("gen") == gen and nst.get("table") == self._table and (
                "text" in nst):
            return nst["text"]
        # Read in this process at this generation (verify's read, then committed's): ~13 ms a
        # listing at 256 uplinks. Any nft commit since, by anyone, bumps the generation.
        if gen is not None and self._listed[0] == (gen, self._table):
            return self._listed[1]
        text = nftool.listing("inet", self._table)
        if gen is not None:
            self._listed = ((gen, self._table), text)
        return text

    def observe(self, config: Config) -> tuple[D.Observed, Installed]:
        # Re-read what connpin remembers here, under the lock: a long-lived Kernel (the daemon's)
        # then sees what a `connpin up/down` beside it recorded in between.
        self.state = state.load()
        self._table = config.pinning.nft_table
        links = self._held if self._held is not None else self.netlink.links()
        self._links = links
        keys = ["conf/all/rp_filter"]
        for name in links:
            if config.match(name) is not None:
                keys += [f"conf/{name}/rp_filter", f"conf/{name}/src_valid_mark"]
        keys += list(self.state.get("sysctls", {}))
        values = {k: v for k in keys if (v := sysctl.read(k)) is not None}
        dump = self.netlink.route_dump()
        ipv6 = os.path.isdir("/proc/sys/net/ipv6")
        dump6 = self.netlink.route_dump(6) if ipv6 else []
        auto = nftool.auto_backend(config.pinning.backend)
        observed = D.Observed(links, self.netlink.main_gateways(dump), values,
                              gateways6=self.netlink.main_gateways6(dump6) if ipv6 else {},
                              ipv6=ipv6, backend=auto,
                              inside=self.netlink.inside(
                                  [dump, dump6], lambda n: config.match(n) is not None))
        families = (4, 6) if ipv6 else (4,)
        self._backend, self._families = D.backend(config, observed), families
        rule_range, table_range = D.owned(config)
        # After a change of pinning.* ranges or table name, what connpin installed under the old
        # ones is still its own: observe it too, so the diff removes it.
        old = self.state.get("slice", {})
        rule_ranges, table_ranges = [rule_range], [table_range]
        if old.get("rules") and range(*old["rules"]) != rule_range:
            rule_ranges.append(range(*old["rules"]))
        if old.get("tables") and range(*old["tables"]) != table_range:
            table_ranges.append(range(*old["tables"]))
        stale: tuple[tuple[str, str], ...] = ()
        stale_ipt = None
        former = old.get("nft_table")
        was = old.get("backend", "nftables") if old else None
        if self._backend == "iptables":
            # switched from nftables: connpin's nft table goes
            if was == "nftables" and former and nftool.available() and (
                    gone := nftool.listing("inet", former)) is not None:
                stale = ((former, gone),)
            listing = ipt.listing(families)
        else:
            if former not in (None, self._table) and (
                    gone := nftool.listing("inet", former)) is not None:
                stale = ((former, gone),)
            if was == "iptables":  # switched from iptables: its chains go
                stale_ipt = ipt.listing(families)
            listing = self._listing()
        nst = self.state.get("nft", {})
        in_place = nst.get("ruleset") if listing is not None and sha(listing) == nst.get(
            "listing") else None
        installed = Installed(
            rules=tuple(self.netlink.rules(*rule_ranges, families=families)),
            routes=tuple(self.netlink.routes(*table_ranges, dump=dump, dump6=dump6,
                                             families=families)),
            nft_listing=listing,
            nft_in_place=in_place,
            saved_sysctls=dict(self.state.get("sysctls", {})),
            stale_nft=stale,
            stale_iptables=stale_ipt,
            up=tuple(self.state["up"]) if "up" in self.state else None,
        )
        return observed, installed

    def execute(self, step: Step) -> None:
        if step.kind == "nft":
            nftool.run(nft.transaction(step.op, step.obj))
            self.state["nft"] = {}  # re-recorded by committed()
        elif step.kind == "iptables":
            from connpin.kernel import ipt_tables  # tables connpin created (iptables-nft)

            if step.obj is not None and "ipt_created" not in self.state:
                self.state["ipt_created"] = ipt_tables.absent(self._families)
            ipt.apply(step.obj, self._families)
            if step.obj is None:
                ipt_tables.drop_empty(self.state.pop("ipt_created", []))
            self.state["nft"] = {}
        elif step.kind == "rule":
            self.netlink.rule(step.op, step.obj)
        elif step.kind == "route":
            self.netlink.route(step.op, step.obj)
        elif step.kind == "sysctl":
            key, value = step.obj
            saved = self.state.setdefault("sysctls", {})
            if step.op == "set" and key not in saved and step.prev is not None:
                saved[key] = step.prev
            sysctl.write(key, value)
            if step.op == "restore":
                saved.pop(key, None)
        else:
            raise ValueError(step.kind)

    def committed(self, config: Config, want: D.Desired) -> None:
        """Remember what was verified to be in place, and forget sysctls of vanished links."""
        if self._backend == "iptables":  # (iptables-legacy commits bump no nft generation)
            gen, listing = None, ipt.listing(self._families)
        else:
            gen = self.generation.read()  # before listing: a later commit makes it stale, not wrong
            listing = self._listing()
        if want.ruleset is not None and listing is not None:
            self.state["nft"] = {"ruleset": sha(want.ruleset), "listing": sha(listing)}
            if gen is not None:
                self.state["nft"].update(gen=gen, table=self._table, text=listing)
            self.state["slice"] = {
                "rules": [want.rule_range.start, want.rule_range.stop],
                "tables": [want.table_range.start, want.table_range.stop],
                "nft_table": want.nft_table,
                "backend": self._backend,
            }
            self.state["up"] = sorted(s.interface for s in want.uplinks if s.up)
        else:
            self.state.pop("nft", None)
            self.state.pop("slice", None)
            self.state.pop("up", None)
        saved = self.state.get("sysctls", {})
        for key in list(saved):
            if sysctl.read(key) is None:
                saved.pop(key)
        if want.ruleset is None and not saved:
            self.state = {}
        state.save(self.state)
