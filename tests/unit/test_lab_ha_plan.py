"""The HA lab's pure parts: each router's connpin config (valid, same pins on both, [ha]
halves swapped), the keepalived.conf around connpin's notify lines, the routers' nft table."""

from __future__ import annotations

from pathlib import Path

import pytest

from connpin import model
from connpin.ha import keepalived, peer
from connpin.lab import ha_conf
from connpin.lab.ha_plan import HaPlan


@pytest.mark.parametrize("topology", ["shared", "own"])
def test_both_routers_configs_give_the_same_pins(topology: str, tmp_path: Path) -> None:
    plan = HaPlan("cpl-abcdef", topology)
    paths = {}
    for r in ("r1", "r2"):
        paths[r] = tmp_path / f"{r}.toml"
        paths[r].write_text(plan.connpin_config(r, tmp_path))
    r1, r2 = (model.load(str(paths[r])) for r in ("r1", "r2"))
    assert peer.differences(r1, r2) == []
    assert peer.fingerprint(r1) == peer.fingerprint(r2)
    assert (r1.ha.local, r1.ha.peer) == (r2.ha.peer, r2.ha.local) == ("10.78.0.1", "10.78.0.2")
    assert r1.ha.topology == topology and r1.ha.conntrackd_socket != r2.ha.conntrackd_socket
    assert r1.ha.on_promote == ("keep" if topology == "shared" else "flush-stranded")


def test_plan_addresses() -> None:
    a, b = HaPlan("p", "shared"), HaPlan("p", "own")
    assert (a.vip(1), a.address("r1", 1), a.address("r2", 2)) == \
        ("198.51.100.18", "198.51.100.19", "198.51.100.36")
    assert a.uplink_of("198.51.100.34") == 2 and a.uplink_of("10.77.0.2") is None
    assert (b.iface(1), b.address("r2", 2), b.router_of("100.64.2.3")) == \
        ("ppp0", "100.64.2.3", "r2")
    with pytest.raises(ValueError):
        HaPlan("p", "other")


def test_keepalived_conf_wraps_connpins_notify_lines() -> None:
    inst = [ha_conf.Vrrp("lan", "lan0", 77, "10.77.0.1", 24),
            ha_conf.Vrrp("wan1", "wan1", 71, "198.51.100.18", 28)]
    group = keepalived.render(["/x/connpin"], "/x/r1.toml", ["lan", "wan1"])
    text = ha_conf.keepalived_conf("r1", inst, priority=200, master=True, advert_int=0.1,
                                   notify=group)
    assert "vrrp_sync_group connpin" in text and "advert_int 0.1" in text
    assert text.count("notify_master") == 1 and "state MASTER" in text
    one = keepalived.render(["/x/connpin"], "/x/r1.toml", ["lan"])
    text = ha_conf.keepalived_conf("r2", inst[:1], priority=100, master=False, advert_int=1,
                                   notify=one)
    assert "vrrp_sync_group" not in text and "state BACKUP" in text
    body = text[text.index("vrrp_instance lan"):]
    assert '    notify_master "/x/connpin -c /x/r1.toml ha promote"' in body


def test_router_ruleset() -> None:
    text = ha_conf.router_ruleset({"wan1": "198.51.100.18"}, lan="10.77.0.0/24",
                                  drop_invalid=True)
    assert 'ip saddr 10.77.0.0/24 oifname "wan1" snat ip to 198.51.100.18' in text
    assert text.count("ct state invalid drop") == 2
    assert "invalid" not in ha_conf.router_ruleset({}, lan="10.77.0.0/24", drop_invalid=False)
