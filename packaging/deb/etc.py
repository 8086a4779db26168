"""The .deb's hook scripts and systemd unit, written under ROOT from connpin.hooks (so they are
the ones `connpin hooks install` writes, calling /usr/sbin/connpin), each hook made inert until
/etc/connpin/connpin.toml exists. Build-time only: `python etc.py ROOT` (packaging/deb/build.sh).
The files carry no "installed by connpin" marker: they belong to dpkg, and `connpin hooks
install/remove` leaves them alone."""

from __future__ import annotations

import os
import sys

from connpin import hooks

CONNPIN = "/usr/sbin/connpin"
CONFIG = "/etc/connpin/connpin.toml"
HEADER = (f"#!/bin/sh\n# Installed by the connpin package (a conffile); inert until {CONFIG}"
          " exists.\n[ -f " + CONFIG + " ] || exit 0\n")
ENV = "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT = "lib/systemd/system/connpin.service"


def main(root: str) -> int:
    for kind in ("ppp", "networkmanager", "networkd", "ifupdown", "dhclient"):
        for hook in hooks.KINDS[kind]:
            body = hook.body.replace("$CONNPIN", f"exec {ENV} {CONNPIN}")
            if hook.sourced:  # dhclient-script sources it: no `exit`, a condition instead
                text = (f"#!/bin/sh\n# Installed by the connpin package (a conffile); inert until"
                        f" {CONFIG} exists.\n# Sourced by dhclient-script: nothing here exits.\n"
                        f"if [ -f {CONFIG} ]; then\n  {body}fi\n")
            else:
                text = HEADER + body
            _write(root, hook.path, text, 0o755)
    unit = hooks.unit(None, exe=CONNPIN, header="# connpin watch; installed by the connpin "
                      "package, not enabled: systemctl enable --now connpin")
    _write(root, UNIT, unit, 0o644)
    return 0


def _write(root: str, path: str, text: str, mode: int) -> None:
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    os.chmod(full, mode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
