"""`connpin ha ...` and `connpin check --peer`: argv -> the ha modules -> exit codes (docs/ha.md).

`conntrackd-conf`, `keepalived-notify`, `--dry-run` and `check --peer` read only config files
(no root, no kernel); `promote`, `demote` and `fault` act (root). Exit codes as in `connpin.cli`:
0 ok, 1 a step failed (the others still ran), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from connpin.errors import Usage

ROLE_HELP = {
    "promote": "this router became VRRP master: commit the peer's replicated connections "
               "(conntrackd -c, -f, -R, -B), converge, and on_promote",
    "demote": "this router became VRRP backup: flush its stale entries after PurgeTimeout "
              "(conntrackd -t), ask the master for a resync (-n), converge",
    "fault": "VRRP fault or stop: flush this router's stale entries after PurgeTimeout "
             "(conntrackd -t), converge",
}


def add_parser(add: Callable[..., argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    """The `ha` command and its subcommands (`add`: cli's subparser factory; `common`: the
    options that also work after the command, -c and --netns)."""
    hp = add("ha", help="one router of an HA pair with keepalived and conntrackd: configs and "
             "role changes (docs/ha.md)")
    sub = hp.add_subparsers(dest="ha_command", metavar="HA_COMMAND", required=True)
    sp = sub.add_parser("conntrackd-conf", parents=[common],
                        help="print the conntrackd.conf for this router, from [ha] (FTFW over "
                        "the sync link, external cache, marks replicated)")
    sp.add_argument("--write", action="store_true",
                    help="write it to ha.conntrackd_config instead of printing it")
    sp = sub.add_parser("keepalived-notify", parents=[common],
                        help="print the keepalived.conf lines that run `connpin ha "
                        "promote|demote|fault` on role changes (no shell)")
    sp.add_argument("--instance", action="append", default=[], metavar="NAME",
                    help="a vrrp_instance of the sync group (repeat; default: placeholders)")
    sp.add_argument("--program", metavar="PATH",
                    help="the connpin keepalived runs (default: this Python, -I -m connpin)")
    for role, text in ROLE_HELP.items():
        sp = sub.add_parser(role, parents=[common], help=text)
        sp.add_argument("--dry-run", action="store_true",
                        help="print the steps in order, run nothing (no root)")
        sp.add_argument("--json", action="store_true",
                        help="print one JSON document (schema 1, docs/json.md), errors included")


def acts(args: argparse.Namespace) -> bool:
    """Whether this `ha` command changes the machine (needs root, runs in --netns)."""
    return args.ha_command in ROLE_HELP and not args.dry_run


def _ha(config: Any) -> Any:
    if config.ha is None:
        raise Usage(f"{config.path} has no [ha] table (see docs/ha.md)")
    return config.ha


def run(config: Any, args: argparse.Namespace) -> int:
    ha = _ha(config)
    cmd = args.ha_command
    if cmd == "conntrackd-conf":
        from connpin.ha import conntrackd

        text = conntrackd.render(ha, os.path.abspath(config.path))
        if not args.write:
            sys.stdout.write(text)
            return 0
        _write(ha.conntrackd_config, text)
        print(f"connpin ha conntrackd-conf: wrote {ha.conntrackd_config}")
        return 0
    if cmd == "keepalived-notify":
        from connpin.ha import keepalived

        program = [args.program] if args.program else [sys.executable, "-I", "-m", "connpin"]
        try:
            sys.stdout.write(keepalived.render(program, os.path.abspath(config.path),
                                               args.instance))
        except keepalived.Unsafe as e:
            raise Usage(str(e)) from None
        return 0
    from connpin.ha import roles

    if args.dry_run:
        lines = roles.plan(ha, cmd).lines()
        if args.json:
            _emit(cmd, dry_run=True, ok=True, steps=lines)
        else:
            for line in lines:
                print(line)
        return 0
    from connpin.ha import act

    said: list[str] = []
    say = said.append if args.json else (
        lambda line: print(f"connpin ha {cmd}: {line}", flush=True))
    ok = act.carry_out(config, cmd, say)
    if args.json:
        _emit(cmd, dry_run=False, ok=ok, steps=said)
    return 0 if ok else 1


def _emit(role: str, **fields: Any) -> None:
    from connpin.render import jsonout

    jsonout.emit(jsonout.document("ha", role=role, **fields))


def _write(path: str, text: str) -> None:
    """Atomically: a reader (conntrackd starting) sees the old file or the new one."""
    tmp = f"{path}.connpin-tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def check_peer(config: Any, args: argparse.Namespace) -> int:
    """`connpin check --peer OTHER.toml`: exit 0 when both give the same pins, else 1."""
    from connpin import model
    from connpin.ha import peer

    other = model.load(args.peer)
    here_fp, there_fp = peer.fingerprint(config), peer.fingerprint(other)
    found = peer.differences(config, other)
    if getattr(args, "json", False):
        from connpin.render import jsonout

        jsonout.emit(jsonout.document("check", fingerprint=here_fp, peer_fingerprint=there_fp,
                                      differences=found))
    else:
        for line in found:
            print(f"connpin check: peer differs: {line}")
        if found:
            print(f"connpin check: {len(found)} difference(s) with {args.peer}: pins would not "
                  "survive a failover as they are (fingerprints "
                  f"{here_fp} here, {there_fp} there)")
        else:
            print(f"connpin check: {args.peer} gives the same marks, tables and priorities "
                  f"(fingerprint {here_fp})")
    return 1 if found else 0
