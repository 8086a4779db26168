"""connpin choosing new connections' uplinks: config, tiers, weights, classes, dead uplinks,
and the rendered nft maps. Pure, no kernel."""

import re

import pytest

from connpin import choice, model
from connpin import desired as D
from connpin.choice import SPACE
from connpin.model import ConfigError

BASE = """
[[uplink]]
name = "fibre"
interface = "wan1"
priority = 1
weight = 3
[[uplink]]
name = "cable"
interface = "wan2"
priority = 1
weight = 1
[[uplink]]
name = "lte"
interface = "wwan0"
priority = 2
"""


def imagined(text: str, dead: frozenset[str] = frozenset()) -> D.Desired:
    return D.compute(model.loads(text), D.Observed(imagined=True), dead=dead)


def shares(want: D.Desired, config: model.Config, family: int = 4,
           dead: frozenset[str] = frozenset()) -> dict[str, dict[str, float]]:
    return {c.name: {want_iface: round(share, 4) for want_iface, share in c.shares().items()}
            for c in choice.choices(config, want.uplinks, family, dead)}


def test_no_weight_no_class_chooses_nothing() -> None:
    text = BASE.replace("weight = 3\n", "").replace("weight = 1\n", "")
    config = model.loads(text)
    assert not config.selecting
    ruleset = D.compute(config, D.Observed(imagined=True)).ruleset
    assert "choose" not in ruleset and "numgen" not in ruleset


def test_weights_share_the_best_tier_and_sum_to_the_whole_range() -> None:
    config = model.loads(BASE)
    want = D.compute(config, D.Observed(imagined=True))
    (default,) = choice.choices(config, want.uplinks, 4)
    assert default.shares() == {"wan1": 0.75, "wan2": 0.25}  # lte is the failover tier
    assert default.slices[0].first == 0 and default.slices[-1].last == SPACE - 1
    pairs = zip(default.slices[:-1], default.slices[1:], strict=True)
    assert all(a.last + 1 == b.first for a, b in pairs)


def test_dead_uplinks_leave_the_maps_and_the_next_tier_takes_over() -> None:
    config = model.loads(BASE)
    want = D.compute(config, D.Observed(imagined=True))
    assert shares(want, config, dead=frozenset({"fibre"})) == {"default": {"wan2": 1.0}}
    assert shares(want, config, dead=frozenset({"fibre", "cable"})) == {"default": {"wwan0": 1.0}}
    assert shares(want, config, dead=frozenset({"fibre", "cable", "lte"})) == {"default": {}}


def test_an_uplink_down_in_one_family_is_left_out_of_that_family_only() -> None:
    config = model.loads(BASE)
    want = D.compute(config, D.Observed(imagined=True))
    states = [D.replace(s, up6=False) if s.uplink == "fibre" else s for s in want.uplinks]
    (v6,) = choice.choices(config, states, 6)
    (v4,) = choice.choices(config, states, 4)
    assert v6.shares() == {"wan2": 1.0} and v4.shares() == {"wan1": 0.75, "wan2": 0.25}


@pytest.mark.parametrize("weights", [(1, 1), (3, 1), (7, 5, 3), (1000, 1, 1), (1,) * 7])
def test_split_is_proportional_and_covers_the_range(weights) -> None:
    config = model.loads("".join(f'[[uplink]]\nname = "u{i}"\ninterface = "e{i}"\npriority = 1\n'
                                 f"weight = {w}\n" for i, w in enumerate(weights)))
    want = D.compute(config, D.Observed(imagined=True))
    (c,) = choice.choices(config, want.uplinks, 4)
    assert sum(s.last - s.first + 1 for s in c.slices) == SPACE
    total = sum(weights)
    for s in c.slices:
        w = weights[int(s.uplink[1:])]
        assert abs((s.last - s.first + 1) - SPACE * w / total) < 1


CLASSES = BASE + """
[[class]]
name = "voip"
uplinks = ["lte", "cable"]
protocol = "udp"
dport = "5060-5080"
[[class]]
name = "v4only"
uplinks = ["fibre"]
destination = "198.51.100.0/24"
sticky = "source"
"""


def test_classes_in_file_order_then_the_default() -> None:
    config = model.loads(CLASSES)
    want = D.compute(config, D.Observed(imagined=True))
    assert shares(want, config) == {"voip": {"wan2": 1.0}, "v4only": {"wan1": 1.0},
                                    "default": {"wan1": 0.75, "wan2": 0.25}}
    assert list(shares(want, config, 6)) == ["voip", "default"]  # v4only has no IPv6 network
    chain = re.search(r"chain choose4 \{\n(.*?)\n\t\}", want.ruleset, re.S).group(1)
    assert [line.strip() for line in chain.splitlines()] == [
        "meta l4proto udp th dport 5060-5080 goto choose4_voip",
        "ip daddr 198.51.100.0/24 goto choose4_v4only",
        "numgen random mod 65536 vmap @choose4_default",
    ]
    assert "jhash ip saddr mod 65536 vmap @choose4_v4only" in want.ruleset


def test_a_dead_uplink_outside_every_best_tier_changes_nothing() -> None:
    assert imagined(CLASSES, frozenset({"lte"})).ruleset == imagined(CLASSES).ruleset


def _without_elements(ruleset: str) -> str:
    return re.sub(r"\n\t\telements = \{[^}]*\}", "", ruleset)


@pytest.mark.parametrize("dead", [{"fibre"}, {"cable"}, {"fibre", "cable"},
                                  {"fibre", "cable", "lte"}])
def test_a_dead_uplink_changes_map_elements_only(dead) -> None:
    alive = imagined(CLASSES).ruleset
    some_dead = imagined(CLASSES, frozenset(dead)).ruleset
    assert alive != some_dead
    assert _without_elements(alive) == _without_elements(some_dead)
    # and only elements of connpin's choose maps
    changed = set(re.findall(r"map (\w+) \{[^}]*elements = \{[^}]*\}", alive)) ^ set(
        re.findall(r"map (\w+) \{[^}]*elements = \{[^}]*\}", some_dead))
    assert all(name.startswith("choose") for name in changed)


def test_rules_jump_to_the_choice_for_new_unpinned_inside_connections_only() -> None:
    ruleset = imagined(CLASSES).ruleset
    pre = re.search(r"chain prerouting \{(.*?)\n\t\}", ruleset, re.S).group(1).splitlines()
    i = next(i for i, line in enumerate(pre) if "jump choose4" in line)
    assert "iifname vmap @uplink_by_iface" in pre[i - 1]  # arrived on an uplink: pinned there
    assert "restore_by_mark" in pre[i + 1]  # then the chosen mark routes the first packet
    assert "ct state new ct mark and 0xff000000 == 0" in pre[i]
    out = re.search(r"chain output \{(.*?)\n\t\}", ruleset, re.S).group(1)
    assert "meta mark and 0xff000000 == 0 fib daddr type != { local, broadcast, multicast } " \
           "jump choose4" in out  # a socket with its own mark in the mask keeps it


BAD = [
    ('[[uplink]]\nname = "a"\ninterface = "e"\nweight = 0\n', "uplink[0] (a).weight", "range"),
    ('[[uplink]]\nname = "a"\ninterface = "e"\nweight = "3"\n', "uplink[0] (a).weight",
     "integer"),
    ('[[uplink]]\nname = "a"\ninterface = "e"\nweight = 3\n[pinning]\nbackend = "iptables"\n',
     "pinning.backend", "cannot choose uplinks"),
    ('[[uplink]]\nname = "a"\ninterface = "e"\ncheck = ["icmp:192.0.2.1"]\n[pinning]\n'
     'backend = "iptables"\n', "pinning.backend", "(check, weight, [[class]])"),
    ('[[class]]\nname = "x"\nuplinks = ["nope"]\n', "class[0] (x).uplinks", "not a configured"),
    ('[[class]]\nname = "x"\n', "class[0].uplinks", "required"),
    ('[[class]]\nuplinks = ["a"]\n', "class[0].name", "required"),
    ('[[class]]\nname = "default"\nuplinks = ["a"]\n', "class[0].name", "not a valid"),
    ('[[class]]\nname = "x"\nuplinks = []\n', "class[0] (x).uplinks", "non-empty"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\ndport = 443\n', "class[0] (x).dport",
     "needs protocol"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\nprotocol = "tcp"\ndport = "80-70"\n',
     "class[0] (x).dport", "port range"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\nprotocol = "tcp"\nsport = 70000\n',
     "class[0] (x).sport", "not a port"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\nprotocol = "gre"\n', "class[0] (x).protocol",
     "not one of"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\nsource = "10.0.0.1/8"\n', "class[0] (x).source",
     "host bits"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\nsticky = "destination"\n', "class[0] (x).sticky",
     "not one of"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\ncolour = 1\n', "class[0].colour",
     "unknown key"),
    ('[[class]]\nname = "x"\nuplinks = ["a"]\n[[class]]\nname = "x"\nuplinks = ["a"]\n',
     "class[1].name", "used twice"),
    ('class = 3\n', "class", "array of tables"),
]


@pytest.mark.parametrize(("text", "field", "words"), BAD)
def test_bad_selection_keys_are_refused_on_one_line(text: str, field: str, words: str) -> None:
    if "[[class]]" in text:
        text = '[[uplink]]\nname = "a"\ninterface = "e"\n' + text
    with pytest.raises(ConfigError) as e:
        model.loads(text, "/etc/connpin/connpin.toml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"/etc/connpin/connpin.toml: {field}: "), msg
    assert words in msg, msg


def test_class_values_are_parsed() -> None:
    config = model.loads('[[uplink]]\nname = "a"\ninterface = "e"\n[[class]]\nname = "x"\n'
                         'uplinks = ["a"]\nprotocol = "tcp"\ndport = 443\nsport = "1024-2048"\n'
                         'source = ["10.0.0.0/8", "fd00::/8"]\n')
    (c,) = config.classes
    assert (c.dport, c.sport, c.source, c.destination) == ((443, 443), (1024, 2048),
                                                           ("10.0.0.0/8", "fd00::/8"), ())
    assert config.selecting and config.uplinks[0].weight == 0


def test_auto_backend_without_nft_refuses_choosing() -> None:
    config = model.loads(BASE + '[pinning]\nbackend = "auto"\n')
    with pytest.raises(ConfigError, match="only with nftables"):
        D.compute(config, D.Observed(imagined=True, nft=False))


def test_check_alone_makes_connpin_choose() -> None:
    """A health check means connpin chooses (only its choice moves new connections off a dead
    uplink; tiers then follow the file order: tests/kernel/test_health_watch.py)."""
    config = model.loads('[[uplink]]\nname = "a"\ninterface = "e1"\ncheck = ["icmp:192.0.2.1"]\n'
                         '[[uplink]]\nname = "b"\ninterface = "e2"\ncheck = ["icmp:192.0.2.2"]\n')
    assert config.selecting
    assert not model.loads('[[uplink]]\nname = "a"\ninterface = "e1"\n').selecting
