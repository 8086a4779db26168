"""The system tools connpin runs (nft, iptables-restore/-save and their ip6tables and flavoured
siblings): the one place that finds them, and the one runner, with a timeout, through which every
subprocess connpin starts goes. A tool that does not answer in time is killed and reported by name;
nothing after it runs, so the previous state is kept (the caller's rollback undoes earlier steps).

`CONNPIN_NFT` overrides where nft is; `CONNPIN_IPTABLES` is read by kernel.iptables to choose the
flavour, whose names it hands to `find`. `CONNPIN_TOOL_TIMEOUT` (seconds) overrides the timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
#: Seconds a tool may take. Loading a ruleset of thousands of rules takes well under a second;
#: a tool waiting this long waits for something that will not come (a lock, a wedged kernel).
TIMEOUT = 30.0
#: Overrides of where a tool is, by tool name.
OVERRIDES = {"nft": "CONNPIN_NFT"}
#: What to install when a tool is missing.
PACKAGES = {"nft": "nftables", "conntrack": "conntrack", "sysctl": "procps",
            "conntrackd": "conntrackd"}


class ToolFailure(Exception):
    """A tool is missing, timed out or failed; the message names it."""


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def find(name: str) -> str:
    """The path of tool `name` (a bare name or a path): $CONNPIN_NFT for nft, else on PATH or in
    the sbin directories (hooks run with a short PATH). Raises ToolFailure when it is missing."""
    env = OVERRIDES.get(name)
    override = os.environ.get(env) if env else None
    if override:
        return override
    if os.sep in name:
        return name
    found = shutil.which(name) or next(
        (p for d in SBIN if os.access(p := os.path.join(d, name), os.X_OK)), None)
    if found is None:
        package = PACKAGES.get(name.split("-")[0].replace("ip6tables", "iptables"), "iptables")
        raise ToolFailure(f"{name} is not installed (apt install {package})")
    return found


def exists(name: str) -> bool:
    try:
        return os.access(find(name), os.X_OK)
    except ToolFailure:
        return False


def seconds(env: str, default: float) -> float:
    """A duration from the environment variable `env` (0 < s < a day), else `default`."""
    try:
        value = float(os.environ.get(env) or default)
    except ValueError:
        return default
    return value if 0 < value < 86400 else default


def timeout() -> float:
    return seconds("CONNPIN_TOOL_TIMEOUT", TIMEOUT)


def _plain(text: str) -> bool:
    return all(" " <= c <= "~" or c in "\t\n" for c in text)


def run(argv: list[str], stdin: str | None = None) -> Ran:
    """Run a tool (argv[0] is passed to `find`) and wait at most `timeout()` seconds. Raises
    ToolFailure when it cannot be started or does not finish in time; the caller reads the
    return code. Input (rulesets) and arguments must be plain printable ASCII: the config's
    validators let nothing else through, and this is the last check before a tool parses it."""
    if not all(_plain(a) and "\n" not in a for a in argv) or (
            stdin is not None and not _plain(stdin)):
        raise ToolFailure(f"{os.path.basename(argv[0])}: refusing input with characters outside "
                          "printable ASCII (a bug: the config's validators should have said)")
    exe = find(argv[0])
    limit = timeout()
    name = os.path.basename(argv[0])
    try:
        p = subprocess.run([exe, *argv[1:]], input=stdin, text=True, capture_output=True,
                           timeout=limit)
    except subprocess.TimeoutExpired:
        raise ToolFailure(f"{name} did not finish within {limit:g} s (killed; "
                          "CONNPIN_TOOL_TIMEOUT sets the limit)") from None
    except OSError as e:
        raise ToolFailure(f"{name}: cannot run {exe}: {e.strerror}") from None
    return Ran(p.returncode, p.stdout, p.stderr)
