"""The real machine behind reconcile: report what the kernel holds, execute one step at a time.

It reads and writes; it decides nothing: which backend and which former slices to read come
from reconcile.scope. All in the network namespace the process is in (the CLI enters `--netns`
first)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from connpin import desired as D
from connpin import reconcile as R
from connpin.kernel import faults, state, sysctl
from connpin.kernel import iptables as ipt
from connpin.kernel import nft as nftool
from connpin.kernel.netlink import Netlink
from connpin.model import Config
from connpin.render import nft
from connpin.values import Recorded


class Kernel:
    """Observes and changes this namespace's kernel; remembers sysctl originals in /run."""

    def __init__(self) -> None:
        self.netlink = Netlink()
        self.generation = nftool.Generation()
        self.state = state.load()
        self._table = "connpin"
        self._families: tuple[int, ...] = (4, 6)
        self._dumps: tuple[list, list] = ([], [])
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
        link and address dumps, the largest part of observing when there are many links."""
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
        # Read in this process at this generation (verify's read, then committed's): a listing
        # grows with the uplinks. Any nft commit since, by anyone, bumps the generation.
        if gen is not None and self._listed[0] == (gen, self._table):
            return self._listed[1]
        text = nftool.listing("inet", self._table)
        if gen is not None:
            self._listed = ((gen, self._table), text)
        return text

    def observe(self, config: Config) -> D.Observed:
        """The facts desired and reconcile decide on: links, main's default routes, sysctls,
        IPv6, whether the nft tool is there, and the slice connpin recorded at its last apply."""
        # Re-read what connpin remembers here, under the lock: a long-lived Kernel (the daemon's)
        # then sees what a `connpin up/down` beside it recorded in between.
        self.state = state.load()
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
        self._dumps = (dump, dump6)  # for installed(): connpin's routes are in the same dumps
        return D.Observed(links, self.netlink.main_gateways(dump), values,
                          gateways6=self.netlink.main_gateways6(dump6) if ipv6 else {},
                          ipv6=ipv6, nft=nftool.available(),
                          inside=self.netlink.inside(
                              [dump, dump6], lambda n: config.match(n) is not None),
                          recorded=self._recorded())

    def _recorded(self) -> Recorded | None:
        old = self.state.get("slice")
        if not old:
            return None
        return Recorded(
            rules=range(*old["rules"]) if old.get("rules") else None,
            tables=range(*old["tables"]) if old.get("tables") else None,
            nft_table=old.get("nft_table"),
            backend=old.get("backend", "nftables"),  # recorded before iptables existed
        )

    def installed(self, scope: R.Scope) -> R.Installed:
        """What of connpin's slice (and of the former slices `scope` names) the kernel holds."""
        self._table, self._families = scope.nft_table, scope.families
        dump, dump6 = self._dumps
        stale: tuple[tuple[str, str], ...] = ()
        if scope.stale_table is not None and (
                gone := nftool.listing("inet", scope.stale_table)) is not None:
            stale = ((scope.stale_table, gone),)
        stale_chains = ipt.listing(scope.families) if scope.stale_chains else None
        listing = ipt.listing(scope.families) if scope.backend == "iptables" else self._listing()
        nst = self.state.get("nft", {})
        in_place = nst.get("ruleset") if listing is not None and R.sha(listing) == nst.get(
            "listing") else None
        rendered = nst.get("rendered") if in_place is not None else None
        return R.Installed(
            rules=tuple(self.netlink.rules(*scope.rule_ranges, families=scope.families)),
            routes=tuple(self.netlink.routes(*scope.table_ranges, dump=dump, dump6=dump6,
                                             families=scope.families)),
            ruleset=listing,
            ruleset_in_place=in_place,
            saved_sysctls=dict(self.state.get("sysctls", {})),
            stale_tables=stale,
            stale_chains=stale_chains,
            up=tuple(self.state["up"]) if "up" in self.state else None,
            rendered=rendered if R.sha(rendered) == in_place else None,
        )

    def execute(self, step: R.Step) -> None:
        faults.point()  # CONNPIN_FAULT: the crash-safety tests die here
        match step:
            case R.Ruleset(backend="iptables"):
                from connpin.kernel import ipt_tables  # tables connpin created (iptables-nft)

                if step.text is not None and "ipt_created" not in self.state:
                    self.state["ipt_created"] = ipt_tables.absent(self._families)
                ipt.apply(step.text, self._families)
                if step.text is None:
                    ipt_tables.drop_empty(self.state.pop("ipt_created", []))
                self.state["nft"] = {}  # re-recorded by committed()
            case R.Ruleset():
                nftool.run(nft.transaction(step.table, step.text))
                self.state["nft"] = {}
            case R.Elements(table, changes):
                nftool.run(nft.element_script(table, changes))
                self.state["nft"] = {}
            case R.RuleAdd(rule) | R.RuleDel(rule):
                self.netlink.rule(step.verb, rule)
            case R.RouteAdd(route) | R.RouteDel(route) | R.RouteReplace(route):
                self.netlink.route(step.verb, route)
            case R.SysctlSet(key, value, prev, restore):
                if not restore and prev is not None:  # on disk before the change
                    state.remember_sysctl(self.state, key, prev)
                sysctl.write(key, value)
                if restore:
                    self.state.get("sysctls", {}).pop(key, None)
            case _:
                raise TypeError(f"not a step: {step!r}")

    def committed(self, want: D.Desired) -> None:
        """Remember what was verified to be in place, and forget sysctls of vanished links."""
        if want.backend == "iptables":  # (iptables-legacy commits bump no nft generation)
            gen, listing = None, ipt.listing(self._families)
        else:
            gen = self.generation.read()  # before listing: a later commit makes it stale, not wrong
            listing = self._listing()
        if want.ruleset is not None and listing is not None:
            self.state["nft"] = {"ruleset": R.sha(want.ruleset), "listing": R.sha(listing)}
            if gen is not None:
                self.state["nft"].update(gen=gen, table=self._table, text=listing)
            if want.backend == "nftables":  # what an update of elements starts from
                self.state["nft"]["rendered"] = want.ruleset
            self.state["slice"] = {
                "rules": [want.rule_range.start, want.rule_range.stop],
                "tables": [want.table_range.start, want.table_range.stop],
                "nft_table": want.nft_table,
                "backend": want.backend,
            }
            self.state["up"] = sorted(s.interface for s in want.uplinks if s.up)
            state.note_since(self.state, want.uplinks)  # when each changed, for status
        else:
            self.state.pop("nft", None)
            self.state.pop("slice", None)
            self.state.pop("up", None)
            self.state.pop("since", None)
        saved = self.state.get("sysctls", {})
        for key in list(saved):
            if sysctl.read(key) is None:
                saved.pop(key)
        if want.ruleset is None and not saved:
            self.state = {}
        state.save(self.state)
