"""The [health] table of the config -> tracker `Params` (pure): which tunables a config may set,
their types, and the checks `Params.validate` makes, as `Invalid(key, message)` errors that
`model` turns into a ConfigError naming `health.<key>`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from connpin.health.tracker import Params

#: The tunables a config may set (docs/health.md); the rest keep Params' defaults.
KEYS = ("rate", "down_probes", "up_after", "up_after_max", "flap_window", "timeout_min",
        "timeout_max")


class Invalid(ValueError):
    """A bad [health] value: `key` is the tunable ("" for a rule about several)."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)


def params(raw: dict[str, Any]) -> Params:
    """Params from a [health] table whose keys are all in KEYS. Raises Invalid."""
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
