"""A network lab in namespaces: the topology of the integration tests and of `connpin lab demo`."""

from connpin.lab.core import (
    CommandError,
    HookError,
    Lab,
    LabError,
    down_all,
    list_labs,
    read_state,
)
from connpin.lab.echo import Probe

__all__ = ["CommandError", "HookError", "Lab", "LabError", "Probe", "down_all", "list_labs",
           "read_state"]
