"""The HA pieces that need no kernel: the [ha] table, the role plans, which pinned connections
are stranded on promotion, the keepalived lines, the peer comparison and the `connpin ha` /
`connpin check --peer` command lines (docs/ha.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from connpin import cli, model
from connpin.ha import keepalived, peer, roles

HA = """
[ha]
topology = "{topology}"
sync_interface = "sync0"
local = "10.99.0.1"
peer = "10.99.0.2"
"""
UPLINKS = """
[[uplink]]
name = "isp-a"
interface = "wan0"
masquerade = true

[[uplink]]
name = "isp-b"
interface = "wan1"
"""


def load(extra: str = "", topology: str = "shared", uplinks: str = UPLINKS) -> model.Config:
    return model.loads(uplinks + HA.format(topology=topology) + extra, "r.toml")


# -- [ha] --
def test_no_ha_table_is_none() -> None:
    assert model.loads(UPLINKS).ha is None


def test_defaults_follow_the_topology() -> None:
    shared, own = load().ha, load(topology="own").ha
    assert shared.on_promote == "keep" and own.on_promote == "flush-stranded"
    assert shared.port == 3780 and shared.family == 4
    assert shared.conntrackd_config == "/etc/conntrackd/conntrackd.conf"
    assert load('on_promote = "flush-stranded"').ha.on_promote == "flush-stranded"


@pytest.mark.parametrize("extra,field,words", [
    ('port = 0', "ha.port", "out of range"),
    ('on_promote = "flush"', "ha.on_promote", "is not one of"),
    ('conntrackd_socket = "run/x.ctl"', "ha.conntrackd_socket", "absolute path"),
    ('conntrackd_socket = "/run/a b.ctl"', "ha.conntrackd_socket", "absolute path"),
    ('conntrackd_lockfile = "/etc/conntrackd/conntrackd.conf"', "ha.conntrackd_socket",
     "three different paths"),
    ('ignore = ["10.0.0.1/8"]', "ha.ignore", "host bits zero"),
    ('ignore = "10.0.0.1"', "ha.ignore", "must be a list"),
    ('mode = "ftfw"', "ha.mode", "unknown key"),
])
def test_bad_values_are_one_line_naming_the_field(extra: str, field: str, words: str) -> None:
    with pytest.raises(model.ConfigError) as e:
        load(extra)
    assert e.value.field == field and words in e.value.message
    assert "\n" not in str(e.value) and str(e.value).startswith("r.toml: ha.")


@pytest.mark.parametrize("line,field", [
    ('topology = "mesh"', "ha.topology"),
    ('sync_interface = "eth 3"', "ha.sync_interface"),
    ('local = "10.99.0.2"', "ha.peer"),  # the same as peer
    ('local = "fd00::1"', "ha.peer"),  # families differ
    ('local = "127.0.0.1"', "ha.local"),
    ('peer = "224.0.0.1"', "ha.peer"),
    ('local = "fe80::1%eth3"', "ha.local"),
])
def test_bad_link_settings(line: str, field: str) -> None:
    key = line.split(" ")[0]
    text = "\n".join(ln for ln in HA.format(topology="shared").splitlines()
                     if not ln.startswith(key + " ")) + "\n" + line + "\n"
    with pytest.raises(model.ConfigError) as e:
        model.loads(UPLINKS + text, "r.toml")
    assert e.value.field == field


@pytest.mark.parametrize("key", ["topology", "sync_interface", "local", "peer"])
def test_required_keys(key: str) -> None:
    text = "\n".join(ln for ln in HA.format(topology="own").splitlines()
                     if not ln.startswith(key + " "))
    with pytest.raises(model.ConfigError) as e:
        model.loads(UPLINKS + text, "r.toml")
    assert e.value.field == f"ha.{key}" and "required" in e.value.message


def test_ha_must_be_a_table() -> None:
    with pytest.raises(model.ConfigError) as e:
        model.loads('ha = "yes"\n' + UPLINKS)
    assert e.value.field == "ha"


# -- role plans --
def options(plan: roles.Plan) -> list[str]:
    return [c.argv[-1] for c in plan.commands]


def test_promote_commits_first_then_flushes_resyncs_and_bulk_sends() -> None:
    ha = load().ha
    p = roles.plan(ha, "promote")
    assert options(p) == ["-c", "-f", "-R", "-B"]
    assert all(c.argv[:3] == ("conntrackd", "-C", ha.conntrackd_config) for c in p.commands)
    assert p.converge and not p.flush_stranded
    assert roles.plan(load(topology="own").ha, "promote").flush_stranded


def test_demote_and_fault() -> None:
    ha = load().ha
    assert options(roles.plan(ha, "demote")) == ["-t", "-n"]
    assert options(roles.plan(ha, "fault")) == ["-t"]
    assert not roles.plan(load(topology="own").ha, "demote").flush_stranded
    with pytest.raises(ValueError):
        roles.plan(ha, "primary")


def test_plan_lines_name_every_step() -> None:
    lines = roles.plan(load(topology="own").ha, "promote").lines()
    assert len(lines) == 6 and lines[-2].startswith("converge")
    assert lines[-1].startswith("flush stranded")


@dataclass(frozen=True)
class End:
    dst: str


@dataclass(frozen=True)
class Entry:
    mark: int
    status: int
    reply: End


def test_stranded_are_pinned_entries_natted_to_an_address_not_ours() -> None:
    own = roles.own_addresses(["203.0.113.2", "10.0.0.1"], ["2001:db8::2/128", "10.0.0.0/24"])
    assert own == {"203.0.113.2", "10.0.0.1", "2001:db8::2"}
    snat = 0x10 | 0x2
    mask = 0xFF000000
    gone = Entry(0x05000000, snat, End("203.0.113.1"))  # NATed to the peer's address
    kept = [
        Entry(0x05000000, snat, End("203.0.113.2")),  # NATed to ours
        Entry(0x05000000, snat, End("2001:db8:0::2")),  # ours, spelled otherwise
        Entry(0x00000005, snat, End("203.0.113.1")),  # not pinned by connpin (other bits)
        Entry(0x05000000, 0x2, End("10.1.0.5")),  # pinned, not NATed (routed)
    ]
    assert roles.stranded([gone, *kept], mask, own) == [gone]


# -- keepalived --
def test_keepalived_lines_call_connpin_without_a_shell() -> None:
    text = keepalived.render(["/usr/sbin/connpin"], "/etc/connpin/connpin.toml", ["VI_1"])
    assert 'notify_master "/usr/sbin/connpin -c /etc/connpin/connpin.toml ha promote"' in text
    assert 'notify_backup "/usr/sbin/connpin -c /etc/connpin/connpin.toml ha demote"' in text
    assert text.count("ha fault") == 2  # fault and stop
    assert "# Add these lines to vrrp_instance VI_1:\n" in text
    group = keepalived.render(["/usr/sbin/connpin"], "/c.toml", ["VI_1", "VI_2"])
    assert "vrrp_sync_group connpin {\n    group {\n        VI_1\n        VI_2\n    }\n" in group


@pytest.mark.parametrize("program,config,instance", [
    (["/opt/my connpin"], "/etc/c.toml", "VI_1"),
    (["/usr/sbin/connpin"], "/etc/c.toml;reboot", "VI_1"),
    (["/usr/sbin/connpin"], '/etc/"c.toml', "VI_1"),
    (["/usr/sbin/connpin"], "/etc/$HOME.toml", "VI_1"),
    (["/usr/sbin/connpin"], "/etc/c.toml", "VI 1"),
])
def test_keepalived_refuses_words_it_would_split_or_interpret(program: list[str], config: str,
                                                               instance: str) -> None:
    with pytest.raises(keepalived.Unsafe):
        keepalived.render(program, config, [instance])


# -- peer --
def test_same_pins_with_other_interface_names() -> None:
    a = load()
    b = model.loads(UPLINKS.replace("wan0", "enp3s0") + HA.format(topology="shared")
                    .replace("10.99.0.1", "X").replace("10.99.0.2", "10.99.0.1")
                    .replace("X", "10.99.0.2"))
    assert peer.differences(a, b) == []
    assert peer.fingerprint(a) == peer.fingerprint(b)
    assert len(peer.fingerprint(a)) == 12


def test_each_difference_is_one_line() -> None:
    a = load()
    b = model.loads("[pinning]\ntable_base = 2000\nnft_table = \"other\"\n"
                    + UPLINKS.replace('name = "isp-b"', 'name = "isp-c"')
                    .replace('masquerade = true', 'masquerade = true\nmark = 0x07000000'))
    found = peer.differences(a, b)
    assert "pinning.table_base: 1000 here, 2000 on the peer" in found
    assert "pinning.nft_table: connpin here, other on the peer" in found
    assert "uplink isp-b: configured here only" in found
    assert "uplink isp-c: configured on the peer only" in found
    assert any(f.startswith("uplink isp-a: mark 0x") and "0x07000000 on the peer" in f
               for f in found)
    assert peer.fingerprint(a) != peer.fingerprint(b)


def test_priority_and_pattern_differences() -> None:
    pat = UPLINKS.replace('"wan1"', '"ppp*"')
    a, b = load(uplinks=pat), load(uplinks=pat.replace('"ppp*"', '"wwan*"')
                                   .replace('name = "isp-a"', 'name = "isp-a"\npriority = 5'))
    assert peer.differences(a, b) == ["uplink isp-a: priority 1 here, 5 on the peer",
                                      "uplink isp-b: pattern ppp* here, wwan* on the peer"]


# -- command lines (no root, no kernel) --
@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(UPLINKS + HA.format(topology="own"))
    b.write_text(UPLINKS.replace("wan1", "eth9") + HA.format(topology="own")
                 .replace("10.99.0.1", "X").replace("10.99.0.2", "10.99.0.1")
                 .replace("X", "10.99.0.2"))
    return str(a), str(b)


def test_check_peer_same(pair: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["-c", pair[0], "check", "--peer", pair[1]]) == 0
    out = capsys.readouterr().out
    assert "gives the same marks, tables and priorities (fingerprint" in out


def test_check_peer_differs(pair: tuple[str, str], tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "c.toml"
    other.write_text(Path(pair[1]).read_text().replace('"isp-b"', '"isp-z"'))
    assert cli.main(["check", "--peer", str(other), "-c", pair[0]]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["connpin check: peer differs: uplink isp-b: configured here only",
                         "connpin check: peer differs: uplink isp-z: configured on the peer "
                         "only"]
    assert cli.main(["check", "--peer", str(tmp_path / "missing.toml"), "-c", pair[0]]) == 2


def test_ha_dry_run_and_renders_need_no_root(pair: tuple[str, str],
                                             capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["-c", pair[0], "ha", "promote", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("conntrackd -C /etc/conntrackd/conntrackd.conf -c ")
    assert "flush stranded" in out
    assert cli.main(["ha", "conntrackd-conf", "-c", pair[0]]) == 0
    assert "IPv4_Destination_Address 10.99.0.2" in capsys.readouterr().out
    assert cli.main(["ha", "keepalived-notify", "-c", pair[0], "--program", "/sbin/connpin",
                     "--instance", "VI_9"]) == 0
    assert f'"/sbin/connpin -c {pair[0]} ha promote"' in capsys.readouterr().out


def test_conntrackd_conf_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "r.toml"
    target = tmp_path / "ct.conf"
    cfg.write_text(UPLINKS + HA.format(topology="shared")
                   + f'conntrackd_config = "{target}"\n')
    assert cli.main(["-c", str(cfg), "ha", "conntrackd-conf", "--write"]) == 0
    assert target.read_text().startswith("# conntrackd.conf for one router")
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_ha_without_ha_table_is_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text(UPLINKS)
    assert cli.main(["-c", str(cfg), "ha", "demote", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"connpin ha: {cfg} has no [ha] table (see docs/ha.md)\n"


def test_ha_needs_a_subcommand_and_a_known_role(pair: tuple[str, str]) -> None:
    assert cli.main(["-c", pair[0], "ha"]) == 2
    assert cli.main(["-c", pair[0], "ha", "primary"]) == 2


def test_the_ha_table_is_not_part_of_the_fingerprint() -> None:
    # the two routers differ in [ha] (local and peer swapped) by design
    config = load()
    assert peer.fingerprint(config) == peer.fingerprint(load(topology="own"))
