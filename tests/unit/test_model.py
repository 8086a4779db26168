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
    ("-x", True),
])
def test_valid_ifname(name: str, ok: bool) -> None:
    # stricter than the kernel: nothing that could break nft quoting or mean something to a shell
    assert model.valid_ifname(name) is ok


def test_failback_keys_and_defaults() -> None:
    c = model.loads(GOOD + '[[uplink]]\nname = "b"\ninterface = "ppp1"\nfailback = "flush"\n'
                    'on_down = "flush"\npriority = 7\n')
    a, b = c.uplinks
    assert (c.pinning.failback, c.pinning.failback_idle) == ("keep", 30)
    assert (a.priority, a.failback, a.on_down, c.failback(a)) == (1, None, "keep", "keep")
    assert (b.priority, c.failback(b), b.on_down) == (7, "flush", "flush")
