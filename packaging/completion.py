"""Build-time generator of the bash and zsh completion scripts (shtab, over the argparse parser
cli.py builds, so the completion cannot drift from the commands). UPLINK arguments complete
with the uplink names of the config connpin reads by default (`connpin plan --json`, no root).

    python packaging/completion.py OUTDIR  -> OUTDIR/bash/connpin, OUTDIR/zsh/_connpin
"""

from __future__ import annotations

import sys
from pathlib import Path

_NAMES = ("connpin plan --json 2>/dev/null | python3 -c 'import json, sys\n"
          "for u in json.load(sys.stdin).get(\"uplinks\", []): print(u[\"uplink\"])'"
          " 2>/dev/null")
PREAMBLE = {
    "bash": "_connpin_uplinks() { compgen -W \"$(" + _NAMES + ")\" -- \"$1\"; }\n",
    "zsh": "_connpin_uplinks() { local -a names; names=(${(f)\"$(" + _NAMES + ")\"}); "
           "compadd -a names; }\n",
}


def script(shell: str) -> str:
    import shtab

    from connpin import cli

    parser = cli._parser()
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for action in sub._actions:
            if action.metavar == "UPLINK":
                action.complete = {"bash": "_connpin_uplinks",  # type: ignore[attr-defined]
                                   "zsh": "_connpin_uplinks"}
    return shtab.complete(parser, shell=shell, preamble=PREAMBLE[shell])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: completion.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for shell, name in (("bash", "connpin"), ("zsh", "_connpin")):
        (out / shell).mkdir(parents=True, exist_ok=True)
        (out / shell / name).write_text(script(shell))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
