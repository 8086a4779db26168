"""Running connpin's hook scripts in the lab the way pppd and NetworkManager do: which
directory, arguments and (minimal) environment each uplink event gets (pure), and the checks
run-parts and NetworkManager make before they run a script."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from connpin.lab.commands import HOOK_PATH, HookError

#: run-parts (Debian's /etc/ppp/ip-up) silently skips names outside this set.
_RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
PPP_TTY, PPP_SPEED = "/dev/pts/lab", "115200"

#: How Debian's dhclient-script runs exit hooks (run_hook, abridged): *sourced*, in its own
#: shell, with $interface and $reason set from the script's arguments; callers append the call,
#: e.g. `run_hook "$HOOK" 0`.
DHCLIENT_RUN_HOOK = """
run_hook() {
    local script="$1"
    local exit_status="$2"
    if [ -f $script ]; then
        . $script
    fi
    return $exit_status
}
interface="$1" reason="$2"
"""


@dataclass(frozen=True)
class HookCall:
    """How one uplink event calls the scripts of one directory."""

    directory: Path
    args: list[str]
    env: dict[str, str]
    run_parts: bool  # pppd's run-parts rules, else NetworkManager's dispatcher rules


def hook_call(hooks_root: Path, kind: str, k: int, ifname: str, action: str, local: str,
              peer: str, family: int = 4) -> HookCall:
    """The call pppd (kind "ppp") or NetworkManager ("eth") makes when uplink k goes `action`
    ("up"/"down") with these addresses; family 6: pppd's separate ipv6-up/ipv6-down scripts."""
    env = {"PATH": HOOK_PATH}
    if kind == "ppp":
        if family == 6:
            d = hooks_root / "etc/ppp" / f"ipv6-{action}.d"
            local, peer = "fe80::2", "fe80::1"
        else:
            d = hooks_root / "etc/ppp" / f"ip-{action}.d"
        # pppd's ip-up: iface tty speed local remote ipparam (Debian exports PPP_*)
        args = [ifname, PPP_TTY, PPP_SPEED, local, peer, ""]
        env |= {"PPP_IFACE": ifname, "PPP_TTY": PPP_TTY, "PPP_SPEED": PPP_SPEED,
                "PPP_LOCAL": local, "PPP_REMOTE": peer, "PPP_IPPARAM": "",
                "IFNAME": ifname, "IPLOCAL": local, "IPREMOTE": peer}
        return HookCall(d, args, env, True)
    d = hooks_root / "etc/NetworkManager/dispatcher.d"
    env |= {"DEVICE_IFACE": ifname, "DEVICE_IP_IFACE": ifname,
            "NM_DISPATCHER_ACTION": action, "CONNECTION_ID": f"isp{k}"}
    if action == "up":
        env |= {"IP4_NUM_ADDRESSES": "1", "IP4_ADDRESS_0": f"{local}/28 {peer}",
                "IP4_GATEWAY": peer}
    return HookCall(d, [ifname, action], env, False)


Runner = Callable[..., subprocess.CompletedProcess[str]]


def run_hooks(call: HookCall, run: Runner) -> list[str]:
    """Run the executable scripts of `call.directory` in name order with run(argv, env=,
    check=False) (inside the router); raise HookError on the first failure. Returns their paths.
    The environment is the call's, plus our CONNPIN_* variables."""
    d = call.directory
    if not d.is_dir():
        return []
    env = call.env | {key: v for key, v in os.environ.items() if key.startswith("CONNPIN_")}
    ran = []
    for name in sorted(os.listdir(d)):
        path = d / name
        if not path.is_file() or not os.access(path, os.X_OK):
            continue
        if call.run_parts and not _RUN_PARTS_NAME.match(name):
            raise HookError(f"{path}: run-parts (pppd's ip-up) would silently skip this name")
        if not call.run_parts:
            st = path.stat()
            if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise HookError(f"{path}: NetworkManager ignores scripts not owned by root "
                                "or writable by group/others")
        res = run([str(path), *call.args], env=env, check=False)
        if res.returncode != 0:
            raise HookError(f"hook {path} {' '.join(call.args)} exited {res.returncode}:\n"
                            f"{res.stderr.strip() or res.stdout.strip()}")
        ran.append(str(path))
    return ran
