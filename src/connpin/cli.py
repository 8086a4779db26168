"""argv and environment -> calls -> exit codes. The only module that knows about them.

Exit codes: 0 ok; 1 runtime failure (previous state kept); 2 bad config or usage, or conflicts
(`check`, `apply`); 3 `status`: the kernel does not match the plan or a conflict appeared
(`status --nagios`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, the monitoring-plugin convention);
4 needs root (`check`: some part unreadable).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from connpin import model
from connpin.errors import Usage
from connpin.render import jsonout

EXIT_FAIL, EXIT_CONFIG, EXIT_DRIFT, EXIT_ROOT = 1, 2, 3, 4
#: Commands that log (connpin.logs): the daemon, and those hooks run (also to syslog).
LOGGED = ("watch", "up", "down", "sweep", "dhclient", "ha")


class _Version(argparse.Action):
    """--version: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        import connpin

        sys.stdout.write(f"connpin {connpin.version()}\n")
        parser.exit()


class _ArgError(Exception):
    """A usage error argparse found, with the (sub)parser that found it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting on a usage error, so `--json` can report it;
    main() prints the same two lines argparse would."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _ArgError(self, message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="connpin",
        description="Pin each connection to the uplink it first used (nftables + policy routing).",
    )
    p.add_argument("-c", "--config", help="config file (default: $CONNPIN_CONFIG or "
                   f"{model.DEFAULT_CONFIG})")
    p.add_argument("--netns", metavar="NAME", help="run inside network namespace NAME")
    p.add_argument("-V", "--version", action=_Version, help="show the version and exit")
    # -c/--netns also work after the command (`connpin plan -c FILE`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--netns", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    sp = add("plan", help="print what apply would install (no root, touches nothing)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--live", action="store_true",
                    help="read this machine (root) and print the changes apply would make")
    sp.add_argument("--backend", choices=model.BACKENDS,
                    help="show the ruleset for this backend instead of pinning.backend")
    sp = add("apply", help="install or update the pinning; safe to repeat")
    sp.add_argument("-q", "--quiet", action="store_true")
    _json_flag(sp)
    for verb, what in (("up", "came up"), ("down", "is going away")):
        sp = add(verb, help=f"hook entry: interface IFACE {what}")
        sp.add_argument("iface", metavar="IFACE")
        _json_flag(sp)
    sp = add("dhclient", help="hook entry: dhclient's exit hook (REASON: BOUND, EXPIRE, ...)")
    sp.add_argument("iface", metavar="IFACE")
    sp.add_argument("reason", metavar="REASON")
    _json_flag(sp)
    sp = add("status", help="uplinks in config order: state and since when, health, tier, "
             "weight, share of new connections, pinned connections; where new connections go "
             "now; exit 3 when the kernel differs from the plan")
    out = sp.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the same as JSON (docs/json.md)")
    out.add_argument("--nagios", action="store_true",
                     help="one line for monitoring (Nagios/Icinga plugin convention): exit 0 OK, "
                     "1 WARNING (an uplink is down or dead but new connections still have a "
                     "live one; the kernel differs from the plan; a conflict; the daemon "
                     "failing or, with check, not running), 2 CRITICAL (no live uplink, or "
                     "connpin's ruleset is not installed), 3 UNKNOWN (bad config, no root, "
                     "status unreadable)")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="every uplink's reason, mark, table, rule, route, IPv6, health per "
                    "target and pinned bytes")
    sp = add("check", help="what on this machine collides with connpin's mark bits, rule "
             "priorities, tables (read-only); exit 2 on conflicts")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--peer", metavar="OTHER.toml", help="instead: compare with the other HA "
                    "router's config (marks, tables, priorities); exit 1 when they differ")
    sp = add("connections", help="the connections pinned to each uplink (like conntrack -L)")
    sp.add_argument("uplink", nargs="?", metavar="UPLINK", help="uplink name or interface")
    sp.add_argument("--json", action="store_true")
    sp = add("flush", help="delete the conntrack entries pinned to one uplink, and only those")
    sp.add_argument("uplink", metavar="UPLINK", help="uplink name or interface")
    sp.add_argument("--idle", type=int, metavar="SECONDS",
                    help="only connections idle for at least this long")
    sp.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    _json_flag(sp)
    sp = add("sweep", help="flush the busy connections failback = \"flush-idle\" left, "
             "as they go idle (started by `up` when needed)")
    sp.add_argument("--follow", action="store_true", help="keep going until none is left")
    _json_flag(sp)
    _json_flag(add("remove", help="remove everything connpin installed"))
    wp = add("watch", help="daemon: follow the kernel's uplink events (no hooks needed)")
    wp.add_argument("-v", "--verbose", action="store_true", help="log every event and resync")
    wp.add_argument("--resync", type=_seconds, default=60.0, metavar="SECONDS",
                    help="re-read the whole kernel at least this often (default 60)")
    tp = add("top", help="live view: uplinks, health, pinned connections, bytes/s, events "
             "(q quits; plain lines when not on a terminal)")
    tp.add_argument("-d", "--interval", type=_seconds, default=2.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 2)")
    tp.add_argument("-n", "--count", type=_count, metavar="N",
                    help="refresh N times as plain lines, then exit")
    tp.add_argument("--once", action="store_true", help="one refresh as plain lines")
    hp = add("hooks", help="install or remove hook scripts")
    hp.add_argument("action", choices=["install", "remove"])
    hp.add_argument("--ppp", action="store_true", help="pppd ip-up.d / ip-down.d")
    hp.add_argument("--networkmanager", action="store_true", help="NetworkManager dispatcher")
    hp.add_argument("--networkd", action="store_true", help="networkd-dispatcher")
    hp.add_argument("--ifupdown", action="store_true", help="ifupdown if-up.d / if-post-down.d")
    hp.add_argument("--dhclient", action="store_true", help="dhclient-exit-hooks.d (isc-dhcp)")
    hp.add_argument("--systemd", action="store_true",
                    help="systemd unit running `connpin watch` (instead of hooks)")
    hp.add_argument("--root", default="/", help="install under this directory (default /)")
    _json_flag(hp)
    ip = add("init", help="print (or write with -o) a commented starter config from this "
             "machine's default routes and PPP peers")
    ip.add_argument("-o", "--output", metavar="FILE", default="-",
                    help="write the config to FILE (default -: standard output)")
    ip.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    ip.add_argument("--ppp-peers", metavar="DIR", default="/etc/ppp/peers",
                    help="where pppd's peer files are (default /etc/ppp/peers)")
    _json_flag(ip)
    lp = add("lab", help="a network lab in namespaces: demo, up, down, exec")
    lp.add_argument("args", nargs=argparse.REMAINDER)
    from connpin.ha import cli as ha_cli

    ha_cli.add_parser(add, common)
    return p


def _command_in(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The subcommand a usage error is about: the parser's, else the first word naming one."""
    sub = parser.prog.partition(" ")[2]
    if sub:
        return sub
    names = {n for a in parser._actions if isinstance(a, argparse._SubParsersAction)
             for n in a.choices}
    return next((a for a in argv if a in names), None)


def _json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true",
                    help="print one JSON document (schema 1, docs/json.md), errors included")


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _fail(args: argparse.Namespace, kind: str, message: str, **fields: Any) -> None:
    """Under --json, the failure document on stdout (stderr says it in text either way)."""
    if _json(args):
        jsonout.emit(jsonout.failure(args.command, kind, message, **fields))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 10**9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive count")
    return int(text)


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("CONNPIN_CONFIG") or model.DEFAULT_CONFIG


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise PermissionError(
            f"{command} changes or reads the kernel's firewall and routing and needs root "
            "(CAP_NET_ADMIN); `connpin plan` works without")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "promote" in argv:  # `ha promote`: its commit first, before anything slower
        from connpin.ha import fast

        fast.start(argv)
    try:
        args = _parser().parse_args(argv)
    except _ArgError as e:  # what argparse prints, and under --json the document too
        e.parser.print_usage(sys.stderr)
        sys.stderr.write(f"{e.parser.prog}: error: {e.message}\n")
        if "--json" in argv:
            jsonout.emit(jsonout.failure(_command_in(e.parser, argv), "usage", e.message))
        return EXIT_CONFIG
    except SystemExit as e:
        return EXIT_CONFIG if e.code not in (0, None) else 0
    if args.command in LOGGED:  # the daemon and what hooks run: connpin.logs
        from connpin import logs

        logs.setup_for(args)
    if getattr(args, "nagios", False):
        from connpin import status_cli

        return status_cli.nagios_guard(args, _dispatch)
    try:
        return _dispatch(args)
    except model.ConfigError as e:
        print(f"connpin: {e}", file=sys.stderr)
        if _json(args):
            jsonout.emit(jsonout.config_failure(args.command, e))
        return EXIT_CONFIG
    except Usage as e:
        print(f"connpin {args.command}: {e}", file=sys.stderr)
        _fail(args, "usage", str(e))
        return EXIT_CONFIG
    except PermissionError as e:
        print(f"connpin {args.command}: {e}", file=sys.stderr)
        _fail(args, "root", str(e))
        return EXIT_ROOT
    except KeyboardInterrupt:
        _fail(args, "interrupted", "interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - runtime failures get one clear line
        from connpin.kernel.state import LockTimeout
        from connpin.kernel.tools import ToolFailure
        from connpin.reconcile import ApplyError

        if isinstance(e, LockTimeout | ToolFailure):  # their message says it all: one line
            text = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
            print(f"connpin {args.command}: {text}", file=sys.stderr)
            _fail(args, "runtime", text)
            return EXIT_FAIL
        kind = "" if isinstance(e, ApplyError) else f"{type(e).__name__}: "
        print(f"connpin {args.command}: failed: {kind}{e}", file=sys.stderr)
        _fail(args, "runtime", f"failed: {kind}{e}")
        return EXIT_FAIL
    finally:
        if args.command in LOGGED:
            from connpin import logs

            logs.restore()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "lab":
        from connpin.lab.cli import run as lab_run

        return lab_run(args.args)
    if args.command == "hooks":
        from connpin import hooks_cli

        return hooks_cli.run(args)
    if args.command == "init":
        from connpin import init

        return init.run(args)
    if args.command == "dhclient":  # dhclient's exit hook: `up`, `down` or nothing
        from connpin import hooks

        if (action := hooks.dhclient_command(args.iface, args.reason)) is None:
            if _json(args):  # a reason that changes nothing (PREINIT, ...)
                jsonout.emit(jsonout.document("dhclient", interface=args.iface,
                                              reason=args.reason, action=None))
            return 0
        args.command = action
    if args.command in ("up", "down") and not model.valid_ifname(args.iface):
        raise Usage(f"{args.iface!r} is not a valid interface name")
    config = model.load(_config_path(args))
    if args.command in ("up", "down") and config.match(args.iface) is None:
        text = f"{args.iface} is not an uplink in {config.path}; nothing to do"
        if _json(args):
            jsonout.emit(jsonout.document(args.command, interface=args.iface, uplink=None,
                                          changes=[], message=text))
        else:
            print(f"connpin {args.command}: {text}")
        return 0
    if args.command == "plan" and getattr(args, "backend", None):
        from dataclasses import replace

        config = replace(config, pinning=replace(config.pinning, backend=args.backend))
    if args.command == "plan" and not args.live:
        from connpin import reconcile
        from connpin.kernel import nft as nftool  # only looks for the tool on PATH

        imagined = reconcile.Imagined(nft=nftool.available())
        return _plan(config, reconcile.run(config, imagined, effects=False), args)
    if args.command == "check" and args.peer:
        from connpin.ha import cli as ha_cli

        return ha_cli.check_peer(config, args)
    if args.command == "ha":
        from connpin.ha import cli as ha_cli

        if not ha_cli.acts(args):  # renders and plans: no root, no kernel
            return ha_cli.run(config, args)
    if args.command != "check":  # check lists what it can without root
        _need_root(args.command)
    if args.netns:
        from connpin.kernel import netns

        try:
            netns.enter(args.netns)
        except netns.NetnsError as e:
            raise Usage(str(e)) from None
    if args.command == "status":
        from connpin import status_cli

        return status_cli.run(config, args, _conflicts(config), EXIT_DRIFT)
    if args.command == "check":
        return _check(config, args)
    if args.command == "ha":
        from connpin.ha import cli as ha_cli

        return ha_cli.run(config, args)
    adopted: list[str] = []
    if args.command in ("apply", "remove"):  # rules/routes of an older connpin (no protocol)
        from connpin.kernel import upgrade

        adopted = upgrade.restamp(config)
        for line in [] if _json(args) else adopted:
            print(f"connpin {args.command}: adopted (installed by an older connpin): {line}")
    if args.command in ("apply", "up", "down") and (refused := _conflicts(config, True)):
        for c in refused:  # hooks too: they would install connpin's marks over the other's
            print(f"connpin {args.command}: conflict: {c}", file=sys.stderr)
        print(f"connpin {args.command}: nothing changed (see `connpin check`, "
              "docs/coexistence.md)", file=sys.stderr)
        _fail(args, "conflict", "nothing changed (see `connpin check`, docs/coexistence.md)",
              conflicts=[c.as_dict() for c in refused], adopted=adopted)
        return EXIT_CONFIG
    if args.command in ("connections", "flush"):
        from connpin import pinned_cli

        return pinned_cli.run(config, args)
    if args.command == "sweep":
        from connpin import pinned_cli

        return pinned_cli.sweep(config, args)
    if args.command == "watch":
        return _watch(config, args)
    if args.command == "top":
        from connpin import top

        return top.run(config, args.interval, args.once, args.count)
    return _change(config, args, adopted)


def _watch(config: model.Config, args: argparse.Namespace) -> int:
    from connpin import watch

    return watch.run(_config_path(args), config, verbose=args.verbose, resync=args.resync)


def _change(config: model.Config, args: argparse.Namespace, adopted: list[str]) -> int:
    """plan --live, apply, up, down, remove: one converge under the namespace's lock."""
    from connpin import engine

    cmd = args.command
    if cmd == "plan":
        return _plan(config, engine.observe(config), args)
    if cmd == "remove" and config.pinning.backend != "iptables":  # up/down: _conflicts
        from connpin.kernel import inventory

        if inventory.foreign_table(config):
            text = (f"nft table inet {config.pinning.nft_table} was not created by connpin; "
                    "nothing changed (choose another pinning.nft_table)")
            print(f"connpin {cmd}: conflict: {text}", file=sys.stderr)
            _fail(args, "conflict", text, adopted=adopted)
            return EXIT_CONFIG
    going_down = frozenset({args.iface}) if cmd == "down" else frozenset()
    # the running daemon's dead uplinks (a hook must not put them back into the selection), and
    # CONNPIN_DEAD=name,...: uplinks taken as dead (tests without a daemon)
    from connpin.watch import record

    dead = record.dead_now() | frozenset(
        n for n in os.environ.get("CONNPIN_DEAD", "").split(",") if n)
    out = engine.converge(config, going_down=going_down, remove=cmd == "remove", dead=dead)
    result, left, ms = out.result, out.left, out.ms
    for note in [] if _json(args) else out.notes:
        print(f"connpin {cmd}: {note}")
    if out.notes and engine.pending():
        from connpin import pinned_cli

        pinned_cli.spawn_sweeper(config)
    if _json(args):
        return _change_json(args, adopted, out)
    quiet = getattr(args, "quiet", False)
    for step in result.steps:
        if not quiet:
            print(f"  {step}")
    what = f"{cmd} {args.iface}" if cmd in ("up", "down") else cmd
    if left:
        print(f"connpin {what}: kernel still differs from the plan after applying:",
              file=sys.stderr)
        for step in left:
            print(f"  needs: {step}", file=sys.stderr)
        return EXIT_FAIL
    if not quiet:
        n = len(result.steps)
        print(f"connpin {what}: {n} change{'s' if n != 1 else ''}, verified ({ms:.0f} ms)"
              if n else f"connpin {what}: nothing to change, kernel matches the plan "
              f"({ms:.0f} ms)")
    return 0


def _change_json(args: argparse.Namespace, adopted: list[str], out: Any) -> int:
    """apply, up, down, remove under --json: what changed, or what still differs (exit 1)."""
    fields: dict[str, Any] = {"interface": args.iface} if args.command in ("up", "down") else {}
    if args.command in ("apply", "remove"):
        fields["adopted"] = adopted
    fields.update(notes=out.notes, changes=[str(s) for s in out.result.steps],
                  ms=round(out.ms, 1))
    if out.left:
        what = f"{args.command} {args.iface}" if args.command in ("up", "down") else args.command
        print(f"connpin {what}: kernel still differs from the plan after applying:",
              file=sys.stderr)
        for step in out.left:
            print(f"  needs: {step}", file=sys.stderr)
        jsonout.emit(jsonout.failure(args.command, "verify", "kernel still differs from the "
                                     "plan after applying", needs=[str(s) for s in out.left],
                                     **fields))
        return EXIT_FAIL
    jsonout.emit(jsonout.document(args.command, **fields, verified=True))
    return 0


def _plan(config: model.Config, result: Any, args: argparse.Namespace) -> int:
    from connpin.render import plan as render_plan

    live = getattr(args, "live", False)
    if args.json:
        jsonout.emit(jsonout.document("plan", **render_plan.as_dict(config, result, live)))
    else:
        sys.stdout.write(render_plan.text(config, result, live))
    return 0


def _conflicts(config: model.Config, blocking: bool = False) -> list[Any]:
    from connpin import conflicts
    from connpin.kernel import inventory

    found = conflicts.conflicts(config, inventory.take(config))
    return conflicts.blocking(found) if blocking else found


def _check(config: model.Config, args: argparse.Namespace) -> int:
    from connpin import conflicts
    from connpin.kernel import inventory

    report = conflicts.report(config, inventory.take(config))
    from connpin.ha import peer

    if args.json:
        jsonout.emit(jsonout.document("check", **report.as_dict(),
                                      fingerprint=peer.fingerprint(config)))
    else:
        for line in report.lines():
            print(line)
        print(f"connpin check: slot fingerprint {peer.fingerprint(config)} (the same on both "
              "routers of an HA pair: `connpin check --peer OTHER.toml`)")
        if not report.found and not report.unread:
            print(f"connpin check: no conflicts with mark_mask {config.pinning.mark_mask:#010x}, "
                  f"rule priorities {config.pinning.rule_priority}.., tables "
                  f"{config.pinning.table_base}..")
    if conflicts.blocking(report.found):
        return EXIT_CONFIG
    return EXIT_ROOT if report.unread else 0
