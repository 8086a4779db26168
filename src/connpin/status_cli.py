"""`connpin status`: the observed kernel, pins, the daemon's record and counters -> the status
report (render.status, pure) -> text, `-v`, one --json document or one --nagios line. Split from
cli so that module stays small; errors are raised for cli.main to report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from connpin import model
from connpin.errors import Usage
from connpin.render import jsonout


def run(config: model.Config, args: argparse.Namespace, found: list[Any], drift_exit: int) -> int:
    """`connpin status [--json|--nagios|-v]`; `found`: the conflicts on the machine now."""
    from connpin import engine, pins
    from connpin.kernel import state
    from connpin.kernel.netlink import Netlink
    from connpin.render import status as render_status
    from connpin.render import status_text
    from connpin.watch import record

    result = engine.observe(config)
    pinned = {c.interface: (c.connections, c.bytes)
              for c in pins.counts(config, result.desired.uplinks)}
    nl = Netlink()
    try:  # where new connections go when connpin does not choose
        main = {f: nl.main_defaults(f) for f in ((4, 6) if result.observed.ipv6 else (4,))}
    finally:
        nl.close()
    watch = record.load()  # the daemon's own word: a failure that persists, uplinks' health
    report = render_status.build(config, result, pinned, watch=watch,
                                 since=state.load().get("since"), counters=counters(config),
                                 main=main)
    report["conflicts"] = [c.as_dict() for c in found]
    report["watch"] = watch
    from connpin.ha import peer

    report["fingerprint"] = peer.fingerprint(config)  # the same on both routers of an HA pair
    refused = [c for c in found if not c.allowed]
    if args.nagios:
        problems = [f"{len(refused)} conflict(s) (connpin check)"] if refused else []
        if (watch or {}).get("failing"):
            problems.append("the daemon's converge is failing")
        code, line = status_text.nagios(report, problems)
        print(line)
        return code
    if args.json:
        jsonout.emit(jsonout.document("status", **{k: v for k, v in report.items()
                                                   if k != "schema"}))
    else:
        sys.stdout.write(status_text.text(report, args.verbose) + record.text(watch))
        for c in found:
            print(f"conflict: {c}")
    return 0 if report["in_place"] and not refused else drift_exit


def counters(config: model.Config) -> Any:
    """nft counters per uplink name (values.Counters) for the share of new connections; None
    until connpin's table carries them (status then shows "-")."""
    return None


def nagios_guard(args: argparse.Namespace, dispatch: Callable[[argparse.Namespace], int]) -> int:
    """`status --nagios`: whatever goes wrong is one UNKNOWN line and exit 3 (the plugin
    convention), never a traceback or another exit code."""
    from connpin.render.status_text import UNKNOWN

    try:
        return dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the monitoring system needs one line
        kind = "" if isinstance(e, model.ConfigError | Usage | PermissionError) else (
            f"{type(e).__name__}: ")
        text = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        print(f"CONNPIN UNKNOWN - {kind}{text}")
        return UNKNOWN
