"""Config of health tracking: per-uplink `check` targets and the optional [health] table."""

from __future__ import annotations

import pytest

from connpin import model
from connpin.health import Params, parse

BASE = '[[uplink]]\nname = "fibre"\ninterface = "wan0"\n'


def test_no_check_no_health_is_as_before() -> None:
    c = model.loads(BASE)
    assert c.uplinks[0].check == ()
    assert c.health == Params()


def test_check_targets_parsed_in_order() -> None:
    c = model.loads(BASE + 'check = ["icmp:9.9.9.9", "tcp:[2001:db8::1]:443", "dns:1.1.1.1"]\n')
    assert c.uplinks[0].check == (parse("icmp:9.9.9.9"), parse("tcp:[2001:db8::1]:443"),
                                  parse("dns:1.1.1.1"))


@pytest.mark.parametrize("value, problem", [
    ('["icmp:example.org"]', "host names are not allowed"),
    ('["tcp:203.0.113.7"]', "tcp needs a port"),
    ('["icmp:9.9.9.9", "icmp:9.9.9.9"]', "duplicate"),
    ("[]", "non-empty list"),
    ('"icmp:9.9.9.9"', "non-empty list"),
])
def test_bad_check_names_the_uplink_and_field(value: str, problem: str) -> None:
    with pytest.raises(model.ConfigError) as e:
        model.loads(BASE + f"check = {value}\n", "/etc/connpin/connpin.toml")
    assert e.value.field == "uplink[0] (fibre).check"
    assert problem in str(e.value)
    assert "\n" not in str(e.value)


def test_health_table_sets_the_tunables() -> None:
    c = model.loads("[health]\nrate = 20\ndown_probes = 6\nup_after = 1.5\nup_after_max = 30\n"
                    "flap_window = 10\ntimeout_min = 0.1\ntimeout_max = 0.5\n" + BASE)
    h = c.health
    assert (h.rate, h.down_probes, h.up_after, h.up_after_max, h.flap_window, h.timeout_min,
            h.timeout_max) == (20.0, 6, 1.5, 30.0, 10.0, 0.1, 0.5)
    assert h.timeout_initial == 0.5  # clamped into the configured bounds
    assert h.burst == Params().burst  # what the config does not name keeps its default


@pytest.mark.parametrize("text, field, problem", [
    ("rate = 0", "health.rate", "must be > 0"),
    ("rate = true", "health.rate", "must be a number"),
    ('up_after = "3"', "health.up_after", "must be a number"),
    ("down_probes = 2.5", "health.down_probes", "must be an integer"),
    ("down_probes = 0", "health.down_probes", ">= 1"),
    ("up_after = 90", "health.up_after", "up_after_max"),
    ("flap_window = -1", "health.flap_window", ">= 0"),
    ("timeout_min = 3", "health", "timeout_min"),
    ("burst = 2", "health.burst", "unknown key"),
])
def test_bad_health_is_refused(text: str, field: str, problem: str) -> None:
    with pytest.raises(model.ConfigError) as e:
        model.loads(f"[health]\n{text}\n" + BASE)
    assert e.value.field == field
    assert problem in str(e.value)


def test_health_must_be_a_table() -> None:
    with pytest.raises(model.ConfigError) as e:
        model.loads("health = 3\n" + BASE)
    assert e.value.field == "health"
