"""A network lab in namespaces: the topology of the integration tests and of `connpin lab demo`.

The public names; the modules: `core` (the Lab), `addressing`, `topology`, `hookrunner`,
`config`, `cleanup`, `commands`, `echo` (servers and probes), `serve`, `cli`, `demo`."""

from connpin.lab.cleanup import down_all, list_labs, read_state
from connpin.lab.commands import CommandError, HookError, LabError
from connpin.lab.core import Lab
from connpin.lab.echo import Probe

__all__ = ["CommandError", "HookError", "Lab", "LabError", "Probe", "down_all", "list_labs",
           "read_state"]
