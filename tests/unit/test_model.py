"""Config validation: every bad config is refused with file, field and reason on one line."""

import pytest

from connpin import model
from connpin.model import ConfigError

GOOD = """
[[uplink]]
name = "isp-a"
interface = "ppp0"
"""


def err(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        model.loads(text, "/etc/connpin/connpin.toml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("/etc/connpin/connpin.toml: ")
    return msg


def test_defaults() -> None:
    c = model.loads(GOOD)
    assert c.pinning.mark_mask == model.DEFAULT_MARK_MASK == 0xFF000000
    assert c.pinning.table_base == 1000
    assert c.pinning.rule_priority == 10000
    assert c.uplinks[0].gateway is None and c.uplinks[0].masquerade is False


def test_empty_config_is_valid() -> None:
    assert model.loads("").uplinks == ()


@pytest.mark.parametrize("text,field,words", [
    ("[pinning]\nmark_maks = 1\n", "pinning.mark_maks", "unknown key"),
    ("colour = 1\n", "colour", "unknown key"),
    (GOOD + "speed = 1\n", "uplink[0].speed", "unknown key"),
    ('[[uplink]]\nname = "a"\ninterface = "eth 0"\n', "interface", "not a valid interface"),
    ('[[uplink]]\nname = "a"\ninterface = "ppp0;reboot"\n', "interface", "not a valid interface"),
    ('[[uplink]]\nname = "a"\ninterface = "averyveryverylongname"\n', "interface", "1-15"),
    ('[[uplink]]\nname = "a"\ninterface = "a/b"\n', "interface", "not a valid"),
    ('[[uplink]]\nname = "a"\ninterface = "p**"\n', "interface", "not a valid"),
    ('[[uplink]]\nname = "A B"\ninterface = "ppp0"\n', "uplink[0].name", "not a valid uplink"),
    ('[[uplink]]\nname = "a"\n', "uplink[0].interface", "is required"),
    ('[[uplink]]\nname = "a"\ninterface = "ppp0"\ngateway = "300.1.1.1"\n', "gateway",
     "not an IPv4"),
    ('[[uplink]]\nname = "a"\ninterface = "ppp0"\nmasquerade = "yes"\n', "masquerade",
     "true or false"),
    (GOOD + '[[uplink]]\nname = "isp-a"\ninterface = "ppp1"\n', "uplink[1].name", "used twice"),
    (GOOD + '[[uplink]]\nname = "b"\ninterface = "ppp0"\n', "uplink[1] (b).interface",
     "already used"),
    ('[[uplink]]\nname = "a"\ninterface = "ppp*"\n[[uplink]]\nname = "b"\ninterface = "pp*"\n',
     "interface", "overlaps"),
    ("[pinning]\nmark_mask = 0x1\n" + GOOD + '[[uplink]]\nname = "b"\ninterface = "ppp1"\n',
     "pinning.mark_mask", "too few"),
    ("[pinning]\nmark_mask = 0\n", "pinning.mark_mask", "out of range"),
    ("[pinning]\nmark_mask = true\n", "pinning.mark_mask", "integer"),
    ("[pinning]\ntable_base = 200\n", "pinning.table_base", "reserved"),
    ("[pinning]\nrule_priority = 32760\n", "pinning.rule_priority", "default rules"),
    (GOOD.replace('"ppp0"', '"ppp0"\nmark = 0x100'), "mark", "outside pinning.mark_mask"),
    ('[[uplink]]\nname = "a"\ninterface = "ppp*"\nmark = 0x1000000\n', "mark", "pattern"),
    ("[[uplink]\n", "", "invalid TOML"),
    ('[pinning]\nfailback = "sometimes"\n', "pinning.failback", '"keep", "flush", "flush-idle"'),
    ("[pinning]\nfailback_idle = 0\n", "pinning.failback_idle", "out of range"),
    (GOOD + 'priority = 0\n', "uplink[0] (isp-a).priority", "out of range"),
    (GOOD + 'failback = "yes"\n', "uplink[0] (isp-a).failback", "not one of"),
    (GOOD + 'on_down = "flush-idle"\n', "uplink[0] (isp-a).on_down", '"keep", "flush"'),
])
def test_bad_configs(text: str, field: str, words: str) -> None:
    msg = err(text)
    assert field in msg
    assert words in msg


def test_colliding_marks_are_refused_with_a_hint() -> None:
    text = ('[[uplink]]\nname = "a"\ninterface = "ppp0"\nmark = 0x1000000\n'
            '[[uplink]]\nname = "b"\ninterface = "ppp1"\nmark = 0x1000000\n')
    msg = err(text)
    assert "'a' and 'b' both get mark 0x01000000" in msg
    assert "set mark = " in msg


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        model.load(tmp_path / "nope.toml")


def test_exact_name_wins_over_pattern() -> None:
    c = model.loads('[[uplink]]\nname = "s"\ninterface = "ppp*"\n'
                    '[[uplink]]\nname = "b"\ninterface = "ppp9"\n')
    assert c.match("ppp9").name == "b"
    assert c.match("ppp3").name == "s"
    assert c.match("ppp") is None
    assert c.match("eth0") is None


@pytest.mark.parametrize("name,ok", [
    ("ppp0", True), ("eth0.10", True), ("wan-1", True), ("a" * 15, True), ("a" * 16, False),
    ("", False), (".", False), ("..", False), ("a b", False), ("a/b", False), ("a:b", False),
    ("ppp0\n", False), ("$(reboot)", False), ("ppp0;id", False), ('p"0', False),
    ("-x", False), ("eth+", False), ("x-", True), ("_a.b", True),
])
def test_valid_ifname(name: str, ok: bool) -> None:
    # stricter than the kernel: nothing that could break nft quoting, mean something to a shell,
    # be an option to iptables (leading -) or an iptables wildcard (+)
    assert model.valid_ifname(name) is ok


def test_failback_keys_and_defaults() -> None:
    c = model.loads(GOOD + '[[uplink]]\nname = "b"\ninterface = "ppp1"\nfailback = "flush"\n'
                    'on_down = "flush"\npriority = 7\n')
    a, b = c.uplinks
    assert (c.pinning.failback, c.pinning.failback_idle) == ("keep", 30)
    assert (a.priority, a.failback, a.on_down, c.failback(a)) == (1, None, "keep", "keep")
    assert (b.priority, c.failback(b), b.on_down) == (7, "flush", "flush")


def up(extra: str, iface: str = "eth0") -> str:
    return f'[[uplink]]\nname = "a"\ninterface = "{iface}"\n{extra}\n'


@pytest.mark.parametrize("text,field,words", [
    (up('gateway6 = "fe80::1%eth0"'), "gateway6", "zone ids"),
    (up('gateway6 = "fe80::1%eth0\\n-A INPUT -j ACCEPT"'), "gateway6", "zone ids"),
    (up('nptv6 = { "fd00::%x/64" = "2001:db8::/64" }'), "nptv6", "not an IPv6 prefix"),
    (up('nptv6 = { "fd00::/64" = "2001:db8::%x\\n/64" }'), "nptv6", "not an IPv6 prefix"),
    (up("", "eth+"), "interface", "'+' is not allowed"),
    (up("", "e+th"), "interface", "'+' is not allowed"),
    (up("", "-j"), "interface", "not a valid interface"),
    (up('gateway = "0.0.0.0"'), "gateway", "unspecified"),
    (up('gateway = "255.255.255.255"'), "gateway", "broadcast"),
    (up('gateway = "224.0.0.1"'), "gateway", "multicast"),
    (up('gateway = "127.0.0.1"'), "gateway", "loopback"),
    (up('gateway = "0.1.2.3"'), "gateway", "0.0.0.0/8"),
    (up("gateway = 3232235777"), "gateway", "not an IPv4 address"),
    (up('gateway = "١٩٢.0.2.1"'), "gateway", "not an IPv4 address"),
    (up('gateway6 = "::"'), "gateway6", "unspecified"),
    (up('gateway6 = "ff02::1"'), "gateway6", "multicast"),
    (up('gateway6 = "::1"'), "gateway6", "loopback"),
    (up("gateway6 = 1"), "gateway6", "not an IPv6 address"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "", "nested too deeply"),
    ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n", "", "invalid TOML"),
])
def test_hostile_values_are_refused(text: str, field: str, words: str) -> None:
    msg = err(text)
    assert field in msg and words in msg, msg


def test_good_gateways_are_kept() -> None:
    c = model.loads(up('gateway = "192.0.2.1"\ngateway6 = "FE80::1"'))
    assert (c.uplinks[0].gateway, c.uplinks[0].gateway6) == ("192.0.2.1", "fe80::1")


def test_only_regular_files_of_bounded_size_are_read(tmp_path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (model.MAX_CONFIG_BYTES + 1))
    for path, words in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                        (tmp_path, "not a regular file"), (big, "a config is at most"),
                        (str(tmp_path / "a\nb"), "no such file")):
        with pytest.raises(ConfigError) as e:
            model.load(path)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
