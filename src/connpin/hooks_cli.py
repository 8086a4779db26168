"""`connpin hooks install|remove`: argv -> hooks.install/remove -> what was written or removed,
as text or one --json document. Errors are raised for cli.main to report (exit codes there)."""

from __future__ import annotations

import argparse
import os

from connpin import hooks, model
from connpin.errors import Usage
from connpin.render import jsonout


def run(args: argparse.Namespace) -> int:
    """`connpin hooks install|remove --KIND...`: the paths written or removed (or --json)."""
    kinds = [k for k in ("ppp", "networkmanager", "networkd", "ifupdown", "systemd")
             if getattr(args, k)]
    if not kinds:
        raise Usage("say which: --ppp, --networkmanager, --networkd, --ifupdown and/or --systemd")
    if args.action == "install":
        config = args.config or os.environ.get("CONNPIN_CONFIG")
        if config:
            model.load(config)  # refuse to install hooks for a config that would not load
        paths = hooks.install(kinds, args.root, config)
        start = hooks.SYSTEMD_START if "systemd" in kinds else None
        if args.json:
            jsonout.emit(jsonout.document("hooks", action="install", kinds=kinds,
                                          installed=paths, start=start))
            return 0
        for path in paths:
            print(f"installed {path}")
        if start:
            print(f"start it: {start}")
    else:
        paths = hooks.remove(kinds, args.root)
        if args.json:
            jsonout.emit(jsonout.document("hooks", action="remove", kinds=kinds, removed=paths))
            return 0
        for path in paths:
            print(f"removed {path}")
    return 0
