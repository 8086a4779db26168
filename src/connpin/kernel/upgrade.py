"""Adopts what an older connpin installed without its protocol (decision: connpin.adopt).

Runs before `apply` and `remove` look for conflicts: each adopted route is replaced in place by
the same route with `protocol 201` (atomic), each adopted rule gets its twin with the protocol
first, then the old one is deleted (the kernel keeps the older of equal-priority rules first,
and a delete without a protocol takes the first match: the old one). Afterwards they are
connpin's own and `apply`/`remove` treat them as usual.
"""

from __future__ import annotations

from connpin import adopt
from connpin import desired as D
from connpin.model import Config


def restamp(config: Config) -> list[str]:
    """Adopt under the namespace's lock; what was adopted, one line each."""
    from connpin.kernel import state
    from connpin.kernel.machine import Kernel

    with state.locked():
        k = Kernel()
        try:
            observed = k.observe(config)
            old = observed.recorded
            if old is None or (old.rules is None and old.tables is None):
                return []
            want = D.compute(config, observed)
            families = (4, 6) if observed.ipv6 else (4,)
            rules = k.netlink.rules(old.rules, families=families,
                                    owned=False) if old.rules else []
            tables = {r.table for r in want.routes
                      if old.tables is not None and r.table in old.tables}
            routes = k.netlink.unowned_routes(tables, families)
            take_rules, take_routes = adopt.adoptable(old, rules, routes, want.rules,
                                                      want.routes)
            done = []
            for route in take_routes:
                k.netlink.route("replace", route)
                done.append(f"{route.ip} route {route}")
            for rule in take_rules:
                k.netlink.rule("add", rule)
                k.netlink.rule("del", rule, owned=False)
                done.append(f"{rule.ip} rule {rule}")
            return done
        finally:
            k.close()
