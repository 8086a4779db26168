"""Hostile configs through `connpin plan`, in process: a table of ~170 configs (hostile values in
every field, hostile structure, hostile bytes). Each must exit 0 or 2; exit 2 with exactly one
line on stderr and no traceback; exit 0 with nothing on stderr and rulesets (both backends) in
which every line is of the renderer's grammar and every name or prefix a config can put there
is one the strict validators allow."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import replace

import pytest

from connpin import cli, model, reconcile

HOSTILE_STRINGS = [
    "", " ", "\t", "\n", "a\nb", "eth0\n-A INPUT -j ACCEPT", "eth0\r", "eth+", "+", "e+th", "*",
    "ppp**", "*ppp", "-j", "--wait", '"', "'", "\\", "%", "eth0%1", "a" * 16, "a" * 100_000,
    "\x00", "\x7f", "\u2028", "\u00e9th0", "\U0001f600", "${HOME}", "$(reboot)", "`id`", ";", "}",
    "{", "#", "ppp*\n", "0x10", "1e9", "../../etc", "eth0 ", " eth0", "ACCEPT", "fe80::1%eth0",
    "fe80::1%eth0\n}", "fe80::1%25eth0", "::ffff:1.2.3.4", "1.2.3", "192.0.2.1/24",
    "192.0.2.1\n", "0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1", "auto\n",
    "fd00::%x/64", "fd00::/64\n", "fd00::/64 ", "fd00::/129", "fd00::1/64", "keep\n",
]
HOSTILE_VALUES = ["0", "-1", str(2**64), "true", "1.5", "inf", "nan", "[]", "{}", "[1, [2]]",
                  "1979-05-27T07:32:00Z", "0x7fffffff", "{ a = 1 }"]


def s(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for the characters used here)."""
    return json.dumps(text, ensure_ascii=False)


BASE = {"name": s("isp"), "interface": s("eth0")}
STRING_FIELDS = ("name", "interface", "gateway", "gateway6", "failback", "on_down")
VALUE_FIELDS = ("mark", "priority", "masquerade", "masquerade6", "nptv6", "gateway")
PINNING_FIELDS = ("mark_mask", "table_base", "rule_priority", "sysctl", "nft_table", "failback",
                  "failback_idle", "backend")


def uplink_config(**fields: str) -> str:
    body = {**BASE, **fields}
    return "[[uplink]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())


def cases() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i, text in enumerate(HOSTILE_STRINGS):
        out.append((f"interface-{i}", uplink_config(interface=s(text)).encode()))
        if i % 3 == 0:
            field = STRING_FIELDS[i // 3 % len(STRING_FIELDS)]
            out.append((f"field-{field}-{i}", uplink_config(**{field: s(text)}).encode()))
        elif i % 3 == 1:
            out.append((f"nft_table-{i}", f"[pinning]\nnft_table = {s(text)}\n".encode()))
        npt = f'nptv6 = {{ {s(text)} = "2001:db8::/64" }}' if i % 2 else \
            f'nptv6 = {{ "fd00::/64" = {s(text)} }}'
        out.append((f"nptv6-{i}", (uplink_config() + npt + "\n").encode()))
    for i, value in enumerate(HOSTILE_VALUES):
        field = VALUE_FIELDS[i % len(VALUE_FIELDS)]
        out.append((f"{field}-v{i}", uplink_config(**{field: value}).encode()))
        pin = PINNING_FIELDS[i % len(PINNING_FIELDS)]
        out.append((f"pinning.{pin}-v{i}", f"[pinning]\n{pin} = {value}\n".encode()))
    out += [
        ("deep-arrays", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("deep-tables", b"a = " + b"{b = " * 2000 + b"1" + b"}" * 2000 + b"\n"),
        ("uplink-is-table", b"[uplink]\nname = 'a'\n"),
        ("pinning-is-array", b"[[pinning]]\nmark_mask = 1\n"),
        ("uplink-is-string", b'uplink = "eth0"\n'),
        ("duplicate-key", b'[[uplink]]\nname = "a"\nname = "b"\ninterface = "eth0"\n'),
        ("not-utf8", b'[[uplink]]\nname = "a\xff"\ninterface = "eth0"\n'),
        ("bom", b"\xef\xbb\xbf" + uplink_config().encode()),
        ("crlf", uplink_config().replace("\n", "\r\n").encode()),
        ("nul-byte", b"\x00"),
        ("binary", bytes(range(256))),
        ("too-many-uplinks", "".join(uplink_config(name=s(f"u{i}"), interface=s(f"eth{i}"))
                                     for i in range(600)).encode()),
        ("same-interface-twice", (uplink_config() + uplink_config(name=s("b"))).encode()),
        ("overlapping-patterns", (uplink_config(interface=s("ppp*")) +
                                  uplink_config(name=s("b"), interface=s("pp*"))).encode()),
        ("mark-outside-mask", uplink_config(mark="1").encode()),
        ("zero-mask", b"[pinning]\nmark_mask = 0\n"),
        ("one-bit-mask", (b"[pinning]\nmark_mask = 1\n" + uplink_config().encode()
                          + uplink_config(name=s("b"), interface=s("eth1")).encode())),
        ("reserved-tables", b"[pinning]\ntable_base = 250\n"),
        ("reserved-priority", b"[pinning]\nrule_priority = 32000\n"),
        ("huge-string-key", b'"' + b"k" * 100_000 + b'" = 1\n'),
        ("huge-nptv6", (uplink_config() + "nptv6 = {" + ", ".join(
            f'"fd00:{i:x}::/64" = "2001:db8:{i:x}::/64"' for i in range(2000)) + "}\n").encode()),
    ]
    # valid but edgy: these must load and render cleanly
    out += [
        ("ok-edgy-names", uplink_config(name=s("a-" + "b" * 30), interface=s("a.b_c-d9012345"),
                                        gateway=s("192.0.2.1"), gateway6=s("FE80::1"),
                                        masquerade6="true").encode()),
        ("ok-nptv6", (uplink_config(masquerade="true") +
                      'nptv6 = { "fd00:77::/64" = "2001:db8:1:77::/64" }\n').encode()),
        ("ok-pattern", (uplink_config(interface=s("ppp*")) +
                        uplink_config(name=s("b"), interface=s("ppp9"))).encode()),
        ("ok-pinning", b"[pinning]\nnft_table = \"_x9\"\nbackend = \"iptables\"\n"
                       + uplink_config().encode()),
    ]
    return out


CASES = cases()
IFNAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$")
IPT_LINE = re.compile(r"^(\*(mangle|nat)|:CONNPIN-[A-Z0-9-]+ - \[0:0\]|COMMIT|#[ -~]*"
                      r"|-[AIDFX] [A-Z0-9-]+( [ -~]+)?)$")
NFT_TOKEN = re.compile(r'"([^"]*)"')


def check_nft(text: str) -> None:
    for line in text.splitlines():
        assert all(" " <= c <= "~" or c == "\t" for c in line), repr(line)
        assert "%" not in line, line
        for name in NFT_TOKEN.findall(line):
            assert IFNAME.match(name), (name, line)
        if "ip6 saddr" in line or "ip6 daddr" in line or "prefix to" in line:
            for word in re.findall(r"[0-9a-fA-F:]+:[0-9a-fA-F:]*/\d+", line):
                ipaddress.IPv6Network(word)


def check_iptables(text: str) -> None:
    for line in text.splitlines():
        assert IPT_LINE.match(line), repr(line)
        assert "%" not in line and "-j ACCEPT" not in line, line
        words = line.split()
        for opt, arg in zip(words, words[1:], strict=False):
            if opt in ("-i", "-o"):
                assert IFNAME.match(arg), line
            elif opt in ("-s", "-d", "--to"):
                ipaddress.ip_network(arg)


@pytest.mark.parametrize("name,data", CASES, ids=[c[0] for c in CASES])
def test_hostile_config_exits_0_or_2_with_one_line(name, data, tmp_path, capsys) -> None:
    path = tmp_path / "connpin.toml"
    path.write_bytes(data)
    code = cli.main(["-c", str(path), "plan"])
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, err)
    assert code == 0 or not name.startswith("ok-"), err
    assert "Traceback" not in err and "Traceback" not in out
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("connpin: "), err
        assert len(err) < 1000
        return
    assert err == "", err
    loaded = model.load(path)
    for backend in ("nftables", "iptables"):
        config = replace(loaded, pinning=replace(loaded.pinning, backend=backend))
        want = reconcile.run(config, reconcile.Imagined(backend), effects=False).desired
        assert want.backend == backend
        assert want.ruleset is not None
        (check_nft if backend == "nftables" else check_iptables)(want.ruleset)


def test_the_table_is_big() -> None:
    assert len(CASES) >= 100 and len({name for name, _ in CASES}) == len(CASES)
