"""`connpin init`: a commented starter config from what is on this machine (default routes in
the namespace it runs in, pppd peers), printed to stdout or written with `-o FILE`.

Never overwrites a file without --force; writes atomically (a temporary file renamed over the
target) with mode 0644, creating the directory. The text is loaded with `model.loads` before it
is shown, so what init prints always passes `connpin check`'s config validation.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from connpin import model, starter
from connpin.errors import Usage
from connpin.render import jsonout


def _found(args: argparse.Namespace) -> list[starter.Candidate]:
    from connpin.kernel import discover

    if getattr(args, "netns", None):
        from connpin.kernel import netns

        try:
            netns.enter(args.netns)
        except netns.NetnsError as e:
            raise Usage(str(e)) from None
    routes = discover.default_routes()
    peers = starter.peers(discover.peer_files(args.ppp_peers))
    return starter.candidates(routes, peers)


def write(path: str, text: str, force: bool) -> None:
    """Write `text` to `path` atomically; an existing file only with `force` (else Usage)."""
    if os.path.lexists(path) and not force:
        raise Usage(f"{path} exists; not overwritten (--force replaces it)")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.connpin-new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    """Discover, render, validate, then print or write (`-o -` or no -o: stdout)."""
    to_file = args.output not in ("-", "")
    if to_file and os.path.lexists(args.output) and not args.force:  # before any work
        raise Usage(f"{args.output} exists; not overwritten (--force replaces it)")
    cands = _found(args)
    text = starter.render(cands, getattr(args, "netns", None), args.ppp_peers)
    model.loads(text, args.output if to_file else "<connpin init>")  # a bug if it raises
    if to_file:
        write(args.output, text, args.force)
    if args.json:
        jsonout.emit(jsonout.document("init", written=args.output if to_file else None,
                                      uplinks=[c.as_dict() for c in cands], config=text))
    elif to_file:
        n = len(cands)
        print(f"connpin init: wrote {args.output} ({n} uplink{'s' if n != 1 else ''}); "
              f"review it, then: connpin check -c {shlex.quote(args.output)}")
    else:
        sys.stdout.write(text)
    return 0
