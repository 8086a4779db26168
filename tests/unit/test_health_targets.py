"""Health-check target specs: parsing, canonical form, refusals (pure)."""

import pytest

from connpin.health.targets import Target, parse, parse_all


@pytest.mark.parametrize("spec,kind,address,port,family", [
    ("icmp:9.9.9.9", "icmp", "9.9.9.9", 0, 4),
    ("icmp:2001:db8::1", "icmp", "2001:db8::1", 0, 6),
    ("icmp:[2001:db8::1]", "icmp", "2001:db8::1", 0, 6),
    ("icmp:2001:DB8:0::1", "icmp", "2001:db8::1", 0, 6),
    ("tcp:203.0.113.7:443", "tcp", "203.0.113.7", 443, 4),
    ("tcp:[2001:db8::1]:443", "tcp", "2001:db8::1", 443, 6),
    ("dns:9.9.9.9", "dns", "9.9.9.9", 53, 4),
    ("dns:9.9.9.9:5353", "dns", "9.9.9.9", 5353, 4),
    ("dns:2001:db8::53", "dns", "2001:db8::53", 53, 6),
    ("dns:[2001:db8::53]:5353", "dns", "2001:db8::53", 5353, 6),
    ("tcp:203.0.113.7:65535", "tcp", "203.0.113.7", 65535, 4),
])
def test_valid_specs(spec: str, kind: str, address: str, port: int, family: int) -> None:
    t = parse(spec)
    assert (t.kind, t.address, t.port, t.family) == (kind, address, port, family)
    assert parse(str(t)) == t  # the canonical form parses back to the same value


def test_canonical_text() -> None:
    assert str(parse("tcp:[2001:DB8::1]:443")) == "tcp:[2001:db8::1]:443"
    assert str(parse("icmp:[2001:db8::1]")) == "icmp:2001:db8::1"
    assert str(parse("dns:9.9.9.9:53")) == "dns:9.9.9.9"


def test_frozen_and_costs() -> None:
    t = parse("tcp:203.0.113.7:443")
    with pytest.raises(AttributeError):
        t.port = 1  # type: ignore[misc]
    assert (t.cost, parse("icmp:9.9.9.9").cost, parse("dns:9.9.9.9").cost) == (3, 1, 1)
    assert isinstance(t, Target) and hash(t) == hash(parse("tcp:203.0.113.7:443"))


@pytest.mark.parametrize("spec,words", [
    ("icmp:fe80::1%eth0", "zone ids"),
    ("tcp:[2001:db8::1%eth0]:443", "zone ids"),
    ("tcp:example.com:443", "host names"),
    ("icmp:dns.quad9.net", "host names"),
    ("tcp:203.0.113.7:0", "1..65535"),
    ("tcp:203.0.113.7:65536", "1..65535"),
    ("tcp:203.0.113.7:-1", "1..65535"),
    ("tcp:203.0.113.7:https", "1..65535"),
    ("tcp:203.0.113.7:", "1..65535"),
    ("tcp:203.0.113.7", "needs a port"),
    ("tcp:2001:db8::1", "needs a port"),
    ("icmp:9.9.9.9:7", "no port"),
    ("icmp:[2001:db8::1]:7", "no port"),
    ("udp:9.9.9.9:53", "KIND one of"),
    ("9.9.9.9", "KIND one of"),
    ("", "KIND one of"),
    ("icmp:", "missing"),
    ("icmp: 9.9.9.9", "padded"),
    ("tcp:[203.0.113.7]:443", "IPv6 addresses only"),
    ("tcp:[2001:db8::1:443", "unclosed"),
    ("tcp:[2001:db8::1]443", "':PORT'"),
    ("icmp:0.0.0.0", "cannot be"),
    ("icmp:::", "cannot be"),
    ("icmp:224.0.0.1", "cannot be"),
    ("icmp:fe80::1", "cannot be"),
    ("icmp:127.0.0.1", "cannot be"),
    ("icmp:255.255.255.255", "cannot be"),
])
def test_refused(spec: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        parse(spec)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and repr(spec) in msg


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match="a check target is a string"):
        parse(53)


def test_parse_all() -> None:
    ts = parse_all(["icmp:9.9.9.9", "icmp:1.1.1.1", "tcp:203.0.113.7:443"])
    assert [str(t) for t in ts] == ["icmp:9.9.9.9", "icmp:1.1.1.1", "tcp:203.0.113.7:443"]
    with pytest.raises(ValueError, match=r"^\[1\] 'icmp:9.9.9.9 ': missing or padded"):
        parse_all(["icmp:1.1.1.1", "icmp:9.9.9.9 "])
    with pytest.raises(ValueError, match=r"^\[1\] .*duplicate of 'dns:9.9.9.9'"):
        parse_all(["dns:9.9.9.9", "dns:9.9.9.9:53"])
    for bad in ([], "icmp:9.9.9.9", None):
        with pytest.raises(ValueError, match="non-empty list"):
            parse_all(bad)
