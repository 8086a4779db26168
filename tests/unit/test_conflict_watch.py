"""The daemon's look for conflicts (watch/coexist): when it is due, what it logs; which nft
events are others' (watch/classify.foreign_nft)."""

from __future__ import annotations

from pyroute2.netlink.nfnetlink.nftsocket import nft_table_msg

from connpin.conflicts import Conflict
from connpin.watch import classify
from connpin.watch.coexist import ConflictWatch


def test_looks_at_start_then_after_changes_at_most_once_per_interval() -> None:
    now = [100.0]
    w = ConflictWatch(lambda: now[0], interval=10)
    assert w.due()
    assert w.seen([]) == []
    assert w.wait() is None and not w.due()  # nothing changed: no look
    now[0] += 3
    w.changed()
    assert not w.due() and w.wait() == 7  # rate-limited
    now[0] += 7
    assert w.due()
    w.skip()  # a failed look: again only after the interval
    w.changed()
    assert w.wait() == 10


def test_only_new_conflicts_are_logged_and_a_returning_one_again() -> None:
    now = [0.0]
    w = ConflictWatch(lambda: now[0], interval=10)
    a = Conflict("write", "table inet ts", "writes meta mark: bits 0x00ff0000")
    b = Conflict("band", "10500: from all lookup main", "inside connpin's rule priorities")
    assert w.seen([a]) == [a]
    assert w.seen([a]) == []
    assert w.seen([a, b]) == [b]
    assert w.seen([b]) == []
    assert w.seen([a, b]) == [a]  # went away, came back


def _msg(name: str, family: int = classify.NFPROTO_INET, kind: int = 6) -> nft_table_msg:
    m = nft_table_msg()
    m["header"] = {"type": (10 << 8) | kind}
    m["nfgen_family"] = family
    m["attrs"] = [("NFTA_TABLE_NAME", name)]
    return m


def test_foreign_nft_events_are_other_tables_of_any_family() -> None:
    c = classify.Classifier(lambda name: name.startswith("ppp"), "connpin")
    assert c.foreign_nft(_msg("ts-filter"))
    assert c.foreign_nft(_msg("mangle", family=2))  # ip mangle (iptables-nft)
    assert c.foreign_nft(_msg("connpin", family=2))  # ip connpin is not connpin's table
    assert not c.foreign_nft(_msg("connpin"))
    assert not c.foreign_nft(_msg("ts-filter", kind=99))
