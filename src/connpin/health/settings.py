"""The [health] table of the config -> tracker `Params` (pure): which tunables a config may set,
their types, and the checks `Params.validate` makes, as `Invalid(key, message)` errors that
`model` turns into a ConfigError naming `health.<key>`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from connpin.health import passive as _passive
from connpin.health.passive import PassiveParams
from connpin.health.tracker import Params

#: The tunables a config may set (docs/health.md); the rest keep Params' defaults.
KEYS = ("rate", "down_probes", "up_after", "up_after_max", "flap_window", "timeout_min",
        "timeout_max") + _passive.KEYS


class Invalid(ValueError):
    """A bad [health] value: `key` is the tunable ("" for a rule about several)."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)


def params(raw: dict[str, Any]) -> Params:
    """Params from a [health] table whose keys are all in KEYS. Raises Invalid."""
    raw = {k: v for k, v in raw.items() if k not in _passive.KEYS}
    for key, value in raw.items():
        integer = key == "down_probes"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise Invalid(key, f"must be {'an integer' if integer else 'a number'}, "
                          f"not {value!r}")
    p = Params(**{k: v if k == "down_probes" else float(v) for k, v in raw.items()})
    # the timeout before a target's first answer stays inside the configured bounds
    p = replace(p, timeout_initial=min(max(p.timeout_initial, p.timeout_min), p.timeout_max))
    try:
        p.validate()
    except ValueError as e:
        key, _, rest = str(e).partition(": ")
        raise (Invalid(key, rest) if key in KEYS else Invalid("", str(e))) from None
    return p


def passive(raw: dict[str, Any]) -> PassiveParams:
    """The passive signal's keys of a [health] table -> PassiveParams. Raises Invalid."""
    kw: dict[str, Any] = {}
    for key in _passive.KEYS:
        if key not in raw:
            continue
        value, field = raw[key], key.removeprefix("passive_") if key != "passive" else "enabled"
        if key == "passive":
            if not isinstance(value, bool):
                raise Invalid(key, f"must be true or false, not {value!r}")
        elif key in ("passive_unanswered", "passive_label"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise Invalid(key, f"must be an integer, not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(key, f"must be a number, not {value!r}")
        else:
            value = float(value)
        kw[field] = value
    p = PassiveParams(**kw)
    try:
        p.validate()
    except ValueError as e:
        key, _, rest = str(e).partition(": ")
        raise Invalid(key, rest) from None
    return p
