"""The lab's address plan and the text it writes: pure, no namespaces, no root."""

from __future__ import annotations

import ipaddress
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest

from connpin import model
from connpin.lab import config
from connpin.lab.addressing import MAX_UPLINKS, Addressing, ppp_mac, spare_address


def plan(*kinds: str) -> Addressing:
    return Addressing(kinds or ("ppp", "eth"), "cpl-test")


def test_names() -> None:
    p = plan("ppp", "eth", "ppp")
    assert list(p.ks) == [1, 2, 3]
    assert p.hosts == ("lan", "router", "net", "isp1", "isp2", "isp3")
    assert [p.ns(h) for h in ("router", "isp3")] == ["cpl-test-router", "cpl-test-isp3"]
    assert [p.iface(k) for k in p.ks] == ["ppp0", "wan2", "ppp2"]
    with pytest.raises(ValueError, match="no host 'isp4'"):
        p.ns("isp4")
    with pytest.raises(ValueError, match="no uplink 4"):
        p.kind(4)


@pytest.mark.parametrize(("uplinks", "prefix", "problem"), [
    ((), "cpl-x", "1..15 uplinks, not 0"),
    (("ppp",) * (MAX_UPLINKS + 1), "cpl-x", "not 16"),
    (("ppp", "wifi"), "cpl-x", "unknown uplink kind 'wifi'"),
    (("ppp",), "-x", "bad lab prefix"),
    (("ppp",), "a/b", "bad lab prefix"),
])
def test_bad_labs_are_refused(uplinks: tuple[str, ...], prefix: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Addressing(uplinks, prefix)


def test_ppp_and_eth_addresses() -> None:
    p = plan("ppp", "eth")
    assert (p.default_address(1), p.gateway(1)) == ("100.64.1.2", "100.64.1.1")
    assert (p.default_address(2), p.gateway(2)) == ("198.51.100.34", "198.51.100.33")
    assert str(p.customer_range(1)) == "100.64.1.0/24"
    assert str(p.customer_range(2)) == "198.51.100.32/28"
    assert p.isp_link(1) == ("192.0.2.5", "192.0.2.6")
    assert p.isp_link(2) == ("192.0.2.9", "192.0.2.10")
    assert (p.address6(2), p.gateway6(1), p.gateway6(2)) == ("2001:db8:2::2", "2001:db8:1::1",
                                                             "fe80::1")
    assert str(p.delegated(2)) == "2001:db8:2::/48" and p.npt_prefix(1) == "2001:db8:1:77::/64"
    assert p.isp_link6(2) == ("2001:db8:f0:2::1", "2001:db8:f0:2::2")


def test_every_address_is_documentation_or_shared_space() -> None:
    p = Addressing(("ppp", "eth") * 7 + ("eth",), "cpl-test")
    allowed = [ipaddress.ip_network(n) for n in (
        "100.64.0.0/10", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8",
        "2001:db8::/32", "fd00::/8", "fe80::/10")]
    addrs = [p.SERVER, p.LAN_HOST, p.LAN_GATEWAY, p.SERVER6, p.LAN_HOST6, p.LAN_GATEWAY6]
    for k in p.ks:
        addrs += [p.default_address(k), p.gateway(k), *p.isp_link(k), p.address6(k),
                  p.gateway6(k), *p.isp_link6(k)]
        assert p.default_address(k) in [str(a) for a in p.customer_range(k)]
    for a in addrs:
        ip = ipaddress.ip_address(a)
        assert any(ip in n for n in allowed if n.version == ip.version), a
    ranges = [p.customer_range(k) for k in p.ks]
    assert not any(a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1:])


def test_owner_of_an_address() -> None:
    p = plan("ppp", "eth")
    known = {1: {"100.64.1.2", "198.18.0.7"}, 2: {"198.51.100.34"}}
    assert p.owner("100.64.1.99", known) == 1  # inside the customer range
    assert p.owner("198.18.0.7", known) == 1  # an address it gave outside the range
    assert p.owner("198.51.100.40", known) == 2
    assert p.owner("2001:db8:2:77::5", known) == 2
    for other in (None, "", "10.77.0.2", "203.0.113.10", "2001:db8:ff::10", "not-an-ip"):
        assert p.owner(other, known) is None


def test_spares_and_macs() -> None:
    assert [spare_address(i) for i in (0, 249, 250, 3999)] == [
        "100.100.0.1", "100.100.0.250", "100.100.1.1", "100.100.15.250"]
    assert ppp_mac(3, b"\x01\xab\xff") == "02:cb:03:01:ab:ff"


def test_default_config_loads(tmp_path: Path) -> None:
    p = plan("ppp", "eth")
    text = config.connpin_config(p, nat6="nptv6", pinning={"mark_mask": 0x00FF0000,
                                                            "sysctl": False})
    doc = tomllib.loads(text)
    assert doc["pinning"] == {"mark_mask": 0x00FF0000, "sysctl": False}
    assert [(u["name"], u["interface"], u.get("gateway")) for u in doc["uplink"]] == [
        ("isp1", "ppp0", None), ("isp2", "wan2", "auto")]
    assert doc["uplink"][1]["nptv6"] == {"fd00:77::/64": "2001:db8:2:77::/64"}
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert [u.interface for u in model.load(path).uplinks] == ["ppp0", "wan2"]
    iptables = tomllib.loads(config.connpin_config(p, backend="iptables", masquerade=False,
                                                   nat6="masquerade"))
    assert iptables["pinning"] == {"backend": "iptables"}
    assert all(u["masquerade"] is False and u["masquerade6"] for u in iptables["uplink"])
    with pytest.raises(ValueError, match="nat6"):
        config.connpin_config(p, nat6="nat66")


def test_toml_values() -> None:
    assert config.toml_value("mark_mask", 0xFF) == "0x000000ff"
    assert config.toml_value("rule_priority", 10000) == "10000"
    assert config.toml_value("x", [True, "a\"b"]) == '[true, "a\\"b"]'
    with pytest.raises(TypeError):
        config.toml_value("x", 1.5)


def test_rulesets() -> None:
    p = plan("ppp")
    v4 = config.router_ruleset(p, masquerade=False, ipv6=False)
    assert "dnat ip to 10.77.0.2:8080" in v4 and "dnat ip6" not in v4 and "masquerade" not in v4
    both = config.router_ruleset(p, masquerade=True, ipv6=True)
    assert "dnat ip6 to [fd00:77::2]:8080" in both and "masquerade\n" in both
    assert "ip6 saddr != 2001:db8:1::/48 counter name spoofed drop" in config.isp_ruleset6(p, 1)
