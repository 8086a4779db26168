"""Build-time generator of the man pages: connpin(8) from the argparse parser (argparse-manpage)
and connpin.toml(5) from README.md's "Config reference" section (the single source of the config
documentation), so neither can drift from what it describes.

    python packaging/man.py OUTDIR      -> OUTDIR/connpin.8, OUTDIR/connpin.toml.5

Not part of the installed package: it runs when the wheel or the .deb is built (`make man`).
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEE_ALSO = r"\fBconnpin.toml\fR(5), \fBip-rule\fR(8), \fBnft\fR(8), \fBconntrack\fR(8)"


def _date() -> str:
    """The build date, from SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    when = (datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.strftime("%Y-%m-%d")


def _version() -> str:
    import connpin

    return connpin.version()


def connpin_8() -> str:
    """connpin(8), from the parser cli.py builds."""
    from argparse_manpage.manpage import Manpage

    from connpin import cli

    doc = (cli.__doc__ or "").split("\n\n", 1)[1].strip()
    page = Manpage(cli._parser())
    page.section, page.manual, page.date = 8, "connpin manual", _date()
    page.source = f"connpin {_version()}"
    page.description = "connection pinning for Linux routers with several uplinks"
    page.add_section("exit status", ">", _text(doc))
    page.add_section("examples", ">", _text(
        "`connpin init -o /etc/connpin/connpin.toml`: a commented starter config from this "
        "machine's default routes (lowest metric first) and pppd peers; never overwrites a "
        "file without `--force`. Then `connpin check`, `connpin plan`, `connpin apply`.\n\n"
        "`connpin apply --json`: every command that prints takes `--json` and prints one JSON "
        "object with `\"schema\": 1`, errors included (`error` with kind, message, and for a "
        "bad config file and field; `exit`); described in docs/json.md of the source."))
    page.add_section("files", ">", _text(
        "`/etc/connpin/connpin.toml`: the config (`-c PATH` or `CONNPIN_CONFIG` for another).\n\n"
        "`/run/connpin`: state of the running system (`CONNPIN_RUN_DIR` for another)."))
    page.add_section("see also", ">", SEE_ALSO)
    return str(page)


def _inline(text: str) -> str:
    text = text.replace("\\", "\\e")
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    return text


def _line(text: str) -> str:
    """One roff text line: a leading dot or quote would be read as a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def _text(markdown: str) -> str:
    """A small subset of Markdown -> roff: paragraphs, `- ` bullets, ``` blocks, tables,
    ### headings, **bold**, `code`, [links](...)."""
    out: list[str] = []
    code = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("```"):
            out.append(".EE\n.RE" if code else ".RS 2\n.EX")
            code = not code
        elif code:
            out.append(_line(line.replace("\\", "\\e")))
        elif line.startswith("### "):
            out.append(".SS " + _inline(line[4:]))
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: ") or cells[0] in ("failback",):
                continue  # separator or header row
            out.append(".TP\n" + _line(_inline(cells[0])) + "\n"
                       + _line(_inline(" ".join(cells[1:]))))
        elif line.startswith("- "):
            out.append(".IP \\(bu 2\n" + _line(_inline(line[2:])))
        elif not line:
            out.append(".PP")
        else:
            out.append(_line(_inline(line.strip())))
    return re.sub(r"(\.PP\n)+", ".PP\n", "\n".join(out)).strip("\n")


def config_reference(readme: str) -> str:
    """README's "## Config reference" section, up to the next "## " heading."""
    m = re.search(r"^## Config reference\n(.*?)(?=^## )", readme, re.S | re.M)
    if not m:
        raise SystemExit("README.md has no '## Config reference' section")
    return m.group(1)


def connpin_toml_5() -> str:
    body = _text(config_reference((ROOT / "README.md").read_text()))
    return (
        f'.TH CONNPIN.TOML 5 "{_date()}" "connpin {_version()}" "connpin manual"\n'
        ".SH NAME\nconnpin.toml \\- configuration of connpin, connection pinning for routers\n"
        ".SH DESCRIPTION\n" + body + "\n.SH SEE ALSO\n"
        "\\fBconnpin\\fR(8), \\fBip-rule\\fR(8), \\fBnft\\fR(8)\n"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: man.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "connpin.8").write_text(connpin_8())
    (out / "connpin.toml.5").write_text(connpin_toml_5())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
