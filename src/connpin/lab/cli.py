"""`connpin lab ...`: demo, up, down, exec, connect, list. The main CLI hands its remaining argv
here. A lab that `up` (or `demo --keep`) leaves running keeps its work directory (the connpin
config, hook scripts, logs) until `down` removes it with the namespaces."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from connpin.kernel import tools
from connpin.lab.cleanup import down_all, list_labs, read_state
from connpin.lab.commands import LabError, _ip_binary
from connpin.lab.core import Lab

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ROOT = 0, 1, 2, 4  # as connpin's own CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="connpin lab",
                                description="A network lab in namespaces (needs root).")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="tell the story without and with connpin")
    d.add_argument("--keep", action="store_true", help="leave the connpin lab running")
    d.add_argument("--uplinks", default="ppp,ppp", help="uplink kinds, e.g. ppp,eth")
    d.add_argument("--ha", action="store_true",
                   help="two routers (keepalived, conntrackd): kill the master mid-transfer")
    u = sub.add_parser("up", help="build a lab and leave it running")
    u.add_argument("--uplinks", default="ppp,ppp", help="uplink kinds, e.g. ppp,eth")
    u.add_argument("--masquerade", action="store_true",
                   help="masquerade in the lab's own firewall (no connpin needed)")
    u.add_argument("--connect", default=None,
                   help='uplinks to bring up, e.g. 2,1 (default: all; "" for none)')
    u.add_argument("--ipv6", action="store_true",
                   help="IPv6 too: delegated prefixes 2001:db8:k::/48, LAN fd00:77::/64")
    dn = sub.add_parser("down", help="remove a kept lab (default: every lab)")
    dn.add_argument("prefix", nargs="?", default="cpl-")
    ls = sub.add_parser("list", help="the labs present")
    ls.add_argument("--json", action="store_true", help="one JSON document (docs/json.md)")
    e = sub.add_parser("exec", help="run a command in a host of a kept lab")
    e.add_argument("--lab", help="lab prefix (default: the only lab present)")
    e.add_argument("host", help="lan, router, net, isp1, ...")
    e.add_argument("argv", nargs=argparse.REMAINDER)
    c = sub.add_parser("connect", help="one echo conversation from a host of a kept lab: "
                       "which address (which ISP) the server saw")
    c.add_argument("--lab", help="lab prefix (default: the only lab present)")
    c.add_argument("--from", dest="host", default="lan", help="host (default: lan)")
    c.add_argument("address", nargs="?", default=Lab.SERVER,
                   help=f"server address (default: {Lab.SERVER}, the internet server)")
    c.add_argument("--port", type=int, default=7, help="echo port (default: 7)")
    return p


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _need_root() -> int | None:
    if os.geteuid() != 0:
        print("connpin lab: the lab builds network namespaces, which needs root (try sudo).\n"
              "Without root you can still see what connpin would install:\n"
              "  connpin plan -c examples/pppoe-multi.toml", file=sys.stderr)
        return EXIT_ROOT
    for tool in ("nft", "conntrack"):
        if not tools.exists(tool):
            print(f"connpin lab: `{tool}` is not installed (apt-get install nftables "
                  "conntrack)", file=sys.stderr)
            return EXIT_FAIL
    return None


def run(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    if args.cmd == "list":
        if args.json:
            from connpin.render import jsonout

            states = {p: read_state(p) or {} for p in list_labs()}
            labs = [{"prefix": p, "uplinks": st.get("uplinks"), "up": st.get("up", [])}
                    for p, st in states.items()]
            jsonout.emit(jsonout.document("lab list", labs=labs))
            return EXIT_OK
        for prefix in list_labs():
            st = read_state(prefix) or {}
            up = ",".join(map(str, st.get("up", []))) or "-"
            print(f"{prefix}  uplinks={','.join(st.get('uplinks', ['?']))}  up={up}")
        return EXIT_OK
    if (err := _need_root()) is not None:
        return err
    try:
        if args.cmd == "demo" and args.ha:
            if args.keep:
                print("connpin lab demo: --keep does not go with --ha", file=sys.stderr)
                return EXIT_USAGE
            from connpin.lab import ha_demo

            return ha_demo.main()
        if args.cmd == "demo":
            from connpin.lab import demo

            return demo.main(_kinds(args.uplinks), keep=args.keep)
        if args.cmd == "up":
            return _up(args)
        if args.cmd == "down":
            removed = down_all(args.prefix)
            print(f"removed {len(removed)} namespace(s)" + (": " + " ".join(removed)
                                                           if removed else ""))
            return EXIT_OK
        if args.cmd == "exec":
            return _exec(args)
        if args.cmd == "connect":
            return _connect(args)
    except (LabError, ValueError, subprocess.CalledProcessError) as e:
        print(f"connpin lab {args.cmd}: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def suggestions(prefix: str) -> list[str]:
    """What to try in a kept lab, in order; each works on a fresh minimal Debian (the kernel
    tests run them all)."""
    lab = f"--lab {prefix}"
    return [f"connpin lab exec {lab} router -- connpin apply    # pin connections",
            f"connpin lab exec {lab} router -- connpin status",
            f"connpin lab exec {lab} router -- connpin top      # q quits",
            f"connpin lab connect {lab}                         # the ISP a LAN host leaves by",
            f"connpin lab exec {lab} router -- ip route",
            f"connpin lab down {prefix}"]


def _up(args: argparse.Namespace) -> int:
    lab = Lab(uplinks=_kinds(args.uplinks), lab_masquerade=args.masquerade, ipv6=args.ipv6)
    with lab:
        # the lab's connpin config (NAT by connpin unless the lab's own firewall does it)
        lab.write_config(lab.default_config(masquerade=not args.masquerade))
        connect = _kinds(args.connect) if args.connect is not None else map(str, lab.ks)
        for k in connect:
            lab.uplink_up(int(k))
        lab.keep()
    state = read_state(lab.prefix) or {}
    up = set(state.get("up", []))
    links = ", ".join(f"isp{k}={lab.iface(k)} ({'up' if k in up else 'down'})" for k in lab.ks)
    print(f"lab {lab.prefix} is up: uplinks {links}; config {lab.config_path}\n"
          + "".join(f"  {line}\n" for line in suggestions(lab.prefix)), end="")
    return EXIT_OK


def _chosen(name: str | None) -> tuple[str, dict]:
    """The lab named, or the only one present, and its state."""
    labs = [name] if name else list_labs()
    if not labs:
        raise LabError("no lab is running (start one with `connpin lab up` or "
                       "`connpin lab demo --keep`)")
    if len(labs) > 1:
        raise LabError(f"several labs are running ({', '.join(labs)}): choose one with --lab")
    return labs[0], read_state(labs[0]) or {}


def _connect(args: argparse.Namespace) -> int:
    from connpin.lab.echo import connect_once

    prefix, st = _chosen(args.lab)
    name = st.get("namespaces", {}).get(args.host, f"{prefix}-{args.host}")
    if not os.path.exists(f"/run/netns/{name}"):
        raise LabError(f"lab {prefix} has no host {args.host!r}")
    seen = connect_once(name, args.address, args.port, timeout=2.0)
    where = f"{args.host} -> {args.address}:{args.port}"
    if seen is None:
        print(f"{where}: no answer within 2 s (is an uplink up, and NAT in place: "
              "`connpin lab exec router -- connpin apply`?)", file=sys.stderr)
        return EXIT_FAIL
    isp = next((f" (isp{k})" for k, a in (st.get("addresses") or {}).items() if a == seen), "")
    print(f"{where}: the server saw {seen}{isp}")
    return EXIT_OK


def _exec(args: argparse.Namespace) -> int:
    prefix, st = _chosen(args.lab)
    name = st.get("namespaces", {}).get(args.host, f"{prefix}-{args.host}")
    if not os.path.exists(f"/run/netns/{name}"):
        hosts = ", ".join(st.get("namespaces", {})) or "?"
        raise LabError(f"lab {prefix} has no host {args.host!r} (hosts: {hosts})")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise LabError("no command given: connpin lab exec HOST -- CMD...")
    env = dict(os.environ)
    # this connpin first on PATH, and the lab's config by default
    env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "/usr/bin:/bin")
    if st.get("config_path"):
        env.setdefault("CONNPIN_CONFIG", st["config_path"])
    ip = _ip_binary()
    os.execve(ip, [ip, "netns", "exec", name, *argv], env)
    return EXIT_FAIL  # not reached
