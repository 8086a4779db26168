"""Running commands inside a lab's namespaces: the errors the lab raises, the environment a
command gets (the sbin directories on PATH) and `ip netns exec` itself."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from connpin.kernel import tools

#: The environment pppd and NetworkManager give their hook scripts: almost nothing.
HOOK_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(Exception):
    """The lab could not be built or driven as asked."""


class HookError(LabError):
    """A hook script failed; the message carries its stderr."""


class CommandError(subprocess.CalledProcessError):
    """A command in the lab failed; unlike CalledProcessError, str() shows its output."""

    def __str__(self) -> str:
        out = []
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text and str(text).strip():
                out.append(f"--- {name}:\n{str(text).rstrip()}")
        return "\n".join([super().__str__(), *out])


def _ip_binary() -> str:
    """iproute2's `ip`, found the one way connpin finds tools."""
    try:
        return tools.find("ip")
    except tools.ToolFailure:
        raise LabError("iproute2's `ip` is not installed") from None


def with_sbin(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment for a command: ours (or `env`), with the sbin directories on PATH."""
    out = dict(os.environ if env is None else env)
    path = [p for p in out.get("PATH", "").split(":") if p]
    out["PATH"] = ":".join(path + [p for p in HOOK_PATH.split(":") if p not in path])
    return out


def run(argv: list[str], *, check: bool, env: Mapping[str, str] | None = None,
        timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv with `with_sbin(env)`; check=True raises CommandError on a non-zero exit."""
    res = subprocess.run(argv, env=with_sbin(env), capture_output=True, text=True, timeout=timeout,
                         input=input)
    if check and res.returncode != 0:
        raise CommandError(res.returncode, argv, res.stdout, res.stderr)
    return res


def exec_ns(ns: str, argv: list[str], *, check: bool = True, env: Mapping[str, str] | None = None,
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace `ns` (`ip netns exec`, which also mounts the namespace's /sys)."""
    return run([_ip_binary(), "netns", "exec", ns, *argv], check=check, env=env, input=input,
               timeout=timeout)
