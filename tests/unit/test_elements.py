"""A dead uplink leaves the selection in one update of elements, not a table rebuild (issue 14),
and on_down = "reset" (its dead set, its chains, its config): pure, no kernel.

- `nft.split_elements` / `element_changes` / `element_script`: the rendered ruleset's skeleton
  and the elements of its named maps and sets; only a difference in elements is updated in
  place, anything else replaces the table.
- `reconcile.diff` takes an `Elements` step only from a table verified to be what connpin last
  rendered; `undo` puts the old elements back; `run` rolls it back like any step.
- `desired.dead_marks`: family . mark of reset uplinks that are dead (in that family) or whose
  link is down.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from connpin import desired as D
from connpin import model, reconcile, steer
from connpin.kernel import counters as kc
from connpin.model import ConfigError
from connpin.reconcile import Elements, Installed, Ruleset
from connpin.render import nft

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "connpin.toml").exists())
IMAGINED = D.Observed(imagined=True, nft=True)

RESET = model.loads("""
[[uplink]]
name = "fibre"
interface = "wan1"
gateway = "192.0.2.1"
priority = 1
weight = 3
on_down = "reset"

[[uplink]]
name = "cable"
interface = "wan2"
gateway = "198.51.100.1"
priority = 1
weight = 1
on_down = "reset"

[[uplink]]
name = "lte"
interface = "wwan0"
priority = 2
""")


def ruleset(config: model.Config, dead: str = "", observed: D.Observed = IMAGINED) -> str:
    text = D.compute(config, observed, dead=frozenset(n for n in dead.split(",") if n)).ruleset
    assert text is not None
    return text


def mark(config: model.Config, name: str) -> int:
    return model.exact_marks(config)[name].mark


# -- the rendered ruleset: skeleton and elements --------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_every_golden_ruleset_splits_into_skeleton_and_elements(case: str) -> None:
    config = model.load(GOLDEN / case / "connpin.toml")
    if config.pinning.backend == "iptables":
        pytest.skip("iptables")
    text = ruleset(config)
    split = nft.split_elements(text)
    assert split is not None
    skeleton, elements = split
    assert ("map", "uplink_by_iface") in elements and ("set", "never_pinned6") in elements
    assert "elements =" not in skeleton and "jump pin_" not in skeleton.split("chain ")[0]
    assert nft.element_changes(text, text) == ()


def test_a_dead_uplink_changes_only_the_elements_of_the_choose_maps_and_dead_set() -> None:
    alive, dead = ruleset(RESET), ruleset(RESET, "fibre")
    changes = nft.element_changes(alive, dead)
    assert changes is not None
    assert [(c.kind, c.name) for c in changes] == [
        ("map", "choose4_default"), ("map", "choose6_default"), ("set", "dead_marks")]
    c4 = changes[0]
    f, c = (model.exact_marks(RESET)[n].index for n in ("fibre", "cable"))
    first, second = sorted([(f, 3), (c, 1)])  # slices in slot order, 3:1
    at = 65536 * first[1] // 4
    assert c4.prev == (f"{{ 0-{at - 1} : jump pin_{first[0]},\n"
                       f"\t\t\t{at}-65535 : jump pin_{second[0]} }}")
    assert c4.elements == f"{{ 0-65535 : jump pin_{c} }}"
    fm = f"{mark(RESET, 'fibre'):#010x}"
    assert changes[2] == nft.Change("set", "dead_marks", f"{{ ipv4 . {fm}, ipv6 . {fm} }}", "")
    back = nft.element_changes(dead, alive)
    assert back == tuple(c._replace(elements=c.prev, prev=c.elements) for c in changes)


def test_a_family_dead_changes_only_that_familys_map_and_dead_elements() -> None:
    """fibre dead in IPv6 only ("fibre/ipv6", per-family health): IPv6's choice and the IPv6
    element of the dead set change; IPv4 keeps choosing fibre and its connections live on."""
    changes = nft.element_changes(ruleset(RESET), ruleset(RESET, "fibre/ipv6"))
    assert changes is not None
    assert [(c.kind, c.name) for c in changes] == [("map", "choose6_default"),
                                                   ("set", "dead_marks")]
    c = model.exact_marks(RESET)["cable"].index
    assert changes[0].elements == f"{{ 0-65535 : jump pin_{c} }}"
    assert changes[1].elements == f"{{ ipv6 . {mark(RESET, 'fibre'):#010x} }}"
    # dead in both families, said either way, is the same ruleset
    assert ruleset(RESET, "fibre/ipv4,fibre/ipv6") == ruleset(RESET, "fibre")


def test_element_script_is_one_flush_and_add_per_changed_map_or_set() -> None:
    changes = nft.element_changes(ruleset(RESET), ruleset(RESET, "fibre,cable"))
    assert changes is not None
    lte = model.exact_marks(RESET)["lte"].index
    dead = ", ".join(f"ipv{f} . {m:#010x}" for m in sorted(mark(RESET, n) for n in
                                                           ("fibre", "cable")) for f in (4, 6))
    assert nft.element_script("connpin", changes) == (
        "flush map inet connpin choose4_default\n"
        f"add element inet connpin choose4_default {{ 0-65535 : jump pin_{lte} }}\n"
        "flush map inet connpin choose6_default\n"
        f"add element inet connpin choose6_default {{ 0-65535 : jump pin_{lte} }}\n"
        "flush set inet connpin dead_marks\n"
        f"add element inet connpin dead_marks {{ {dead} }}\n")
    # every uplink dead: the maps are emptied (flushed, nothing added)
    every = nft.element_changes(ruleset(RESET), ruleset(RESET, "fibre,cable,lte"))
    assert every is not None
    script = nft.element_script("connpin", every)
    assert "flush map inet connpin choose4_default\nflush map" in script


@pytest.mark.parametrize("change", [
    lambda c: replace(c, uplinks=c.uplinks[:2]),  # an uplink less: chains differ
    lambda c: replace(c, uplinks=(replace(c.uplinks[0], masquerade=True), *c.uplinks[1:])),
    lambda c: replace(c, uplinks=tuple(replace(u, on_down="keep") for u in c.uplinks)),
    lambda c: replace(c, pinning=replace(c.pinning, mark_mask=0x00FF0000)),
])
def test_anything_beyond_elements_replaces_the_table(change) -> None:  # noqa: ANN001
    assert nft.element_changes(ruleset(RESET), ruleset(change(RESET), "fibre")) is None


def test_text_not_in_the_rendered_shape_is_never_updated_in_place() -> None:
    text = ruleset(RESET)
    assert nft.split_elements(text.replace("\t}\n\n\tset never_pinned6", "\tset never_pinned6",
                                           1)) is None  # an unclosed block
    odd = text.replace("\t\telements = { fe80::/10", "\t\telements = fe80::/10 {", 1)
    assert nft.split_elements(odd) is None
    assert nft.element_changes("nonsense", text) is None


# -- reconcile: the decision, the step, its undo ----------------------------------------------

def want_of(config: model.Config, dead: str = "") -> D.Desired:
    return D.compute(config, IMAGINED, dead=frozenset(n for n in dead.split(",") if n))


def installed(rendered: str | None, listing: str = "listing", in_place: str | None = "same"
              ) -> Installed:
    sha = reconcile.sha(rendered) if in_place == "same" else in_place
    return Installed(ruleset=listing, ruleset_in_place=sha, rendered=rendered)


def nft_steps(want: D.Desired, have: Installed) -> list:
    return [s for s in reconcile.diff(want, IMAGINED, have) if isinstance(s, Ruleset | Elements)]


def test_diff_updates_elements_in_place_when_only_they_differ() -> None:
    alive, dead = want_of(RESET), want_of(RESET, "fibre")
    steps = nft_steps(dead, installed(alive.ruleset))
    assert steps == [Elements("connpin", nft.element_changes(alive.ruleset, dead.ruleset))]
    assert str(steps[0]) == ("nft update elements of map choose4_default, map choose6_default, "
                             "set dead_marks in inet connpin (one transaction)")
    assert nft_steps(alive, installed(alive.ruleset)) == [], "nothing differs: no step"


@pytest.mark.parametrize("have", [
    Installed(),  # no table
    Installed(ruleset="listing", ruleset_in_place=None, rendered=None),  # unknown
    Installed(ruleset="listing", ruleset_in_place="0123456789abcdef", rendered="x"),  # changed
    Installed(ruleset=None, ruleset_in_place=None, rendered=None),
])
def test_diff_replaces_the_table_unless_it_is_verified_to_be_the_last_rendered(have) -> None:  # noqa: ANN001
    want = want_of(RESET, "fibre")
    if have.rendered == "x":  # the rendered text of a table someone changed since
        have = replace(have, rendered=want_of(RESET).ruleset)
    steps = nft_steps(want, have)
    assert len(steps) == 1 and isinstance(steps[0], Ruleset) and steps[0].text == want.ruleset


def test_diff_replaces_the_table_when_more_than_elements_differ() -> None:
    want = want_of(replace(RESET, uplinks=RESET.uplinks[:2]), "fibre")
    steps = nft_steps(want, installed(want_of(RESET).ruleset))
    assert [type(s) for s in steps] == [Ruleset]


def test_elements_undo_puts_the_old_elements_back() -> None:
    changes = nft.element_changes(want_of(RESET).ruleset, want_of(RESET, "fibre").ruleset)
    assert changes
    step = Elements("connpin", changes)
    back = reconcile.undo(step)
    assert back == Elements("connpin", nft.element_changes(want_of(RESET, "fibre").ruleset,
                                                           want_of(RESET).ruleset))
    assert reconcile.undo(back) == step


class Machine:
    """In memory: the table as rendered text, and what was verified in place."""

    def __init__(self, fail: bool = False) -> None:
        self.rendered: str | None = None
        self.executed: list = []
        self.fail = fail

    def observe(self, config: model.Config) -> D.Observed:
        return IMAGINED

    def installed(self, scope: reconcile.Scope) -> Installed:
        if self.rendered is None:
            return Installed()
        return Installed(ruleset=self.rendered, ruleset_in_place=reconcile.sha(self.rendered),
                         rendered=self.rendered)

    def execute(self, step: reconcile.Step) -> None:
        self.executed.append(step)
        match step:
            case Ruleset(text=text):
                self.rendered = text
            case Elements(changes=changes):
                if self.fail:
                    raise RuntimeError("nft: no")
                assert self.rendered is not None
                skeleton, elements = nft.split_elements(self.rendered) or ("", {})
                assert all(elements[c.kind, c.name] == c.prev for c in changes)
                self.rendered = next(
                    t for t in (want_of(RESET).ruleset, want_of(RESET, "fibre").ruleset)
                    if t is not None and nft.element_changes(self.rendered, t) == changes)

    def committed(self, want: D.Desired) -> None:
        pass


def nft_only(steps: list) -> list:
    return [s for s in steps if isinstance(s, Ruleset | Elements)]


def test_run_plans_and_applies_the_elements_step_on_one_path() -> None:
    m = Machine()  # (rules and routes are not kept: only the table)
    assert [type(s) for s in nft_only(reconcile.run(RESET, m).steps)] == [Ruleset]
    n = len(m.executed)
    planned = nft_only(reconcile.run(RESET, m, effects=False, dead=frozenset({"fibre"})).steps)
    assert [type(s) for s in planned] == [Elements] and len(m.executed) == n, "plan: no effect"
    assert nft_only(reconcile.run(RESET, m, dead=frozenset({"fibre"})).steps) == planned
    assert m.rendered == want_of(RESET, "fibre").ruleset
    assert nft_only(reconcile.verify(RESET, m, dead=frozenset({"fibre"}))) == []


def test_a_failing_elements_step_is_reported_and_leaves_the_table() -> None:
    m = Machine()
    reconcile.run(RESET, m)
    m.fail = True
    with pytest.raises(reconcile.ApplyError, match="nft update elements of .*: nft: no"):
        reconcile.run(RESET, m, dead=frozenset({"fibre"}))
    assert m.rendered == want_of(RESET).ruleset


# -- on_down = "reset" -----------------------------------------------------------------------

def observed(**up: bool) -> D.Observed:
    links = {n: D.Link(n, i, state, ("192.0.2.2",)) for i, (n, state) in enumerate(up.items())}
    return D.Observed(links, {}, {}, ipv6=False, nft=True)


def test_dead_marks_are_the_reset_uplinks_dead_or_down() -> None:
    up = observed(wan1=True, wan2=True, wwan0=True)
    assert D.compute(RESET, up).ruleset.count(
        "set dead_marks {\n\t\ttype nf_proto . mark\n\t}") == 1
    f, c = mark(RESET, "fibre"), mark(RESET, "cable")
    states = D.compute(RESET, up).uplinks

    def marks(obs: D.Observed, dead: str = "", going: str = "") -> tuple[int, ...] | None:
        got = D.dead_marks(RESET, list(states), obs, frozenset({going} - {""}),
                           frozenset(dead.split(",")) - {""})
        if got is None:
            return None
        both = tuple(m for fam, m in got if fam == 4 and (6, m) in got)
        assert len(got) == 2 * len(both), got  # these cases: dead in both families
        return both

    assert marks(up) == ()
    assert marks(up, dead="fibre") == (f,)
    assert marks(up, dead="fibre/ipv4,fibre/ipv6") == (f,)
    assert D.dead_marks(RESET, list(states), up, frozenset(),
                        frozenset({"fibre/ipv6"})) == ((6, f),), "dead in IPv6 only"
    assert marks(up, dead="lte") == (), "lte keeps its connections (on_down = keep)"
    assert marks(observed(wan1=True, wan2=False, wwan0=False)) == (c,), "link down"
    assert marks(observed(wan1=True, wwan0=True)) == (c,), "interface gone"
    assert marks(up, going="wan1") == (f,), "going down (hook)"
    assert marks(IMAGINED) == (), "plan: every uplink up"
    plain = replace(RESET, uplinks=tuple(replace(u, on_down="keep") for u in RESET.uplinks))
    assert D.dead_marks(plain, list(states), up, frozenset(), frozenset({"fibre"})) is None
    assert "dead_marks" not in ruleset(plain, "fibre"), "no reset uplink: nothing rendered"


def test_reset_chains_reject_the_inside_senders_packets_before_routing() -> None:
    text = ruleset(RESET, "fibre")
    m = f"{RESET.pinning.mark_mask:#010x}"
    assert (f"\t\ttype filter hook prerouting priority mangle + 1; policy accept;\n"
            f"\t\tct direction original meta nfproto . ct mark and {m} @dead_marks iifname != "
            '{ "wan1", "wan2", "wwan0" } jump dead_reject\n') in text
    assert (f"\t\ttype filter hook output priority mangle - 1; policy accept;\n"
            f"\t\tct direction original meta mark and {m} == 0 meta nfproto . ct mark and {m} "
            "@dead_marks jump dead_reject\n") in text
    fibre, cable = (model.exact_marks(RESET)[n] for n in ("fibre", "cable"))
    count = "".join(f"\t\tct mark and {m} == {s.mark:#010x} counter name \"reset_{s.index}_{n}\"\n"
                    for n, s in sorted((("fibre", fibre), ("cable", cable)),
                                       key=lambda p: p[1].index))
    assert ("\tchain dead_reject {\n" + count + "\t\tmeta l4proto tcp reject with tcp reset\n"
            "\t\treject with icmpx type admin-prohibited\n\t}\n}\n") in text


def test_each_resetting_uplink_has_a_reset_counter_and_the_others_none() -> None:
    """on_down = "reset": a counter of resets sent per interface of the uplinks with it (read
    back by kernel/counters.py, with or without [metrics]); none for lte (keep), none at all
    without on_down = "reset"."""
    text = ruleset(RESET)
    names = sorted(re.findall(r"^\tcounter (reset_\S+) \{$", text, re.M))
    assert sorted(kc.split(n)[2] for n in names) == ["cable", "fibre"], names
    for n in names:
        assert text.count(f'counter name "{n}"') == 1
    assert "reset_" not in ruleset(model.loads('[[uplink]]\nname = "a"\ninterface = "ppp0"\n'))
    c = kc.per_uplink({names[0]: (3, 180), "new_7_lte": (2, 0)})
    assert c[kc.split(names[0])[2]].resets == 3 and c["lte"].resets == 0


def test_on_down_reset_is_a_config_value_and_needs_nftables() -> None:
    base = '[[uplink]]\nname = "isp-a"\ninterface = "ppp0"\non_down = "reset"\n'
    assert model.loads(base).uplinks[0].on_down == "reset"
    with pytest.raises(ConfigError) as e:
        model.loads(base + '[pinning]\nbackend = "iptables"\n')
    assert str(e.value).count("\n") == 0
    assert 'uplink[0] (isp-a).on_down' in str(e.value) and "nftables" in str(e.value)
    with pytest.raises(ConfigError, match=r'uplink\[0\] \(isp-a\).on_down.*"reset"'):
        model.loads(base.replace('"reset"', '"restart"'))
    auto = model.loads(base + '[pinning]\nbackend = "auto"\n')
    with pytest.raises(ConfigError, match=r"on_down.*nft tool is missing"):
        D.compute(auto, D.Observed(imagined=True, nft=False))
    assert any("isp-a goes down or dead: reset" in line for line in steer.describe(auto))
