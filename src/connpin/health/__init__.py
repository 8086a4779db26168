"""Health tracking of uplinks (issue 14): target specs (targets), the pure tracker that turns probe
results into alive/dead/unknown (tracker), the prober that sends ICMP/TCP/DNS probes through a
chosen uplink (probe) and the loop that schedules them within a packet budget (monitor).

Only `targets` and `tracker` are imported here: they are pure. Import `connpin.health.probe` /
`connpin.health.monitor` explicitly where sockets are wanted.
"""

from connpin.health.targets import Target, parse, parse_all
from connpin.health.tracker import (
    ALIVE,
    DEAD,
    UNKNOWN,
    Params,
    TargetHealth,
    Tracker,
    Transition,
    UplinkHealth,
)

__all__ = ["ALIVE", "DEAD", "UNKNOWN", "Params", "Target", "TargetHealth", "Tracker",
           "Transition", "UplinkHealth", "parse", "parse_all"]
