"""Scale on the real kernel: others' large routing tables do not slow connpin down (issue 13).

Observing reads routes with the kernel filtering (main, local, connpin's protocol, connpin's
table range one id at a time), so 50,000 routes in another table cost nothing.
Figures: bench/scale.py.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from connpin.lab import Lab

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

FOREIGN_ROUTES = 50_000
FOREIGN_TABLE = 5000  # outside connpin's range (1000..)
#: Generous on a busy 2-core machine; reading all 50k routes took ~17 s per dump here.
DEADLINE = 15.0


def load_foreign_routes(lab: Lab, n: int = FOREIGN_ROUTES, table: int = FOREIGN_TABLE) -> None:
    """n /32 routes in `table` of the router (as a routing daemon with a full table would)."""
    lines = "".join(f"route add 10.{128 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 dev lan0 "
                    f"table {table}\n" for i in range(n))
    lab.exec("router", ["ip", "-batch", "-"], input=lines, timeout=120)


def test_apply_and_remove_ignore_a_large_foreign_table() -> None:
    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        lab.uplink_up(1)
        lab.uplink_up(2)
        load_foreign_routes(lab)
        t0 = time.monotonic()
        lab.connpin("apply", timeout=120)
        took = time.monotonic() - t0
        print(f"apply with {FOREIGN_ROUTES} foreign routes: {took:.2f} s")
        assert took < DEADLINE, took
        routes = lab.exec("router", ["ip", "route", "show", "table", "all"]).stdout
        assert re.search(r"table 1\d\d\d proto 201", routes), "connpin's routes are in"
        t0 = time.monotonic()
        lab.connpin("remove", timeout=120)
        assert time.monotonic() - t0 < DEADLINE
        left = lab.exec("router", ["ip", "route", "show", "table", str(FOREIGN_TABLE)]).stdout
        assert len(left.splitlines()) == FOREIGN_ROUTES, "the foreign table is untouched"


def test_the_daemon_converges_an_uplink_event_quickly_beside_a_large_foreign_table() -> None:
    from test_watch import watching

    with Lab(uplinks=("ppp", "ppp")) as lab:
        lab.write_config(lab.default_config(masquerade=True))
        load_foreign_routes(lab)
        with watching(lab) as daemon:
            lab.uplink_up(1)
            line = daemon.wait_log(r"ppp0: up, .* in [\d.]+ ms", timeout=DEADLINE)
            ms = float(re.search(r"in ([\d.]+) ms", line).group(1))
            print(f"daemon converge after an uplink event, {FOREIGN_ROUTES} foreign routes: "
                  f"{ms:.1f} ms")
            assert ms < 1000, line  # reading the 50k routes took seconds
