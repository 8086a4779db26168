"""Logging of connpin's unattended entry points, set up in one place (`setup`): the daemon
(`connpin watch`), the hook commands (`up`, `down`, `sweep`, `dhclient`) and the role changes
keepalived runs (`ha promote|demote|fault`).

- **stderr**: under systemd (the unit's stderr is the journal: systemd sets JOURNAL_STREAM to
  the device and inode of that stream) every line starts with the syslog priority journald
  understands: `<3>` error, `<4>` warning, `<6>` info, `<7>` debug. Elsewhere (a terminal, a
  pipe, a file) plain lines: `connpin watch: warning: ...`.
- **syslog** (hooks): pppd, dhclient and the other hook runners start hooks with stdin, stdout
  and stderr on /dev/null, so a failing hook would leave no trace. Every line a hook command
  prints (stdout as info, stderr as error) is also sent to /dev/log (facility daemon, ident
  `connpin-hook`) when /dev/log exists; nothing else changes in what it prints.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import IO, Any

LOGGER = "connpin"
HOOK_LOGGER = "connpin.hook"
SYSLOG = "/dev/log"
HOOK_IDENT = "connpin-hook"
#: logging level -> syslog priority (what journald reads from a `<N>` prefix)
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}
_WORD = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


def priority(level: int) -> int:
    """The syslog priority of a logging level (levels between the named ones round down)."""
    for lv in sorted(PRIORITY, reverse=True):
        if level >= lv:
            return PRIORITY[lv]
    return 7


def journal_stream(stream: IO[Any], environ: dict[str, str] | None = None) -> bool:
    """Whether `stream` is the journal's (JOURNAL_STREAM="DEV:INODE" names it; a child with
    another stderr inherits the variable, hence the comparison, as sd_journal documents)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """`<N>message` (N the syslog priority), every line of a multi-line message prefixed:
    journald makes one entry of each line."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class PlainFormatter(logging.Formatter):
    """`PROGRAM: message`, with `warning: ` / `error: ` before warnings and errors."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.program}: {_WORD.get(record.levelno, '')}{super().format(record)}"


def formatter(program: str, stream: IO[Any], environ: dict[str, str] | None = None
              ) -> logging.Formatter:
    return JournalFormatter() if journal_stream(stream, environ) else PlainFormatter(program)


def syslog_handler(path: str | None = None, ident: str = HOOK_IDENT) -> logging.Handler | None:
    """A handler sending to the syslog socket at `path` (default /dev/log; facility daemon),
    or None when there is none (no syslog daemon, no journald: nothing to send to)."""
    path = path or SYSLOG
    if not os.path.exists(path):
        return None
    try:
        handler = logging.handlers.SysLogHandler(
            path, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        return None
    handler.ident = f"{ident}[{os.getpid()}]: "
    return handler


class _Tee:
    """A text stream that writes through to `stream` and logs each complete line."""

    def __init__(self, stream: IO[str], logger: logging.Logger, level: int) -> None:
        self._stream, self._logger, self._level = stream, logger, level
        self._partial = ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._logger.log(self._level, line.rstrip())
        return n

    def drain(self) -> None:
        if self._partial.strip():
            self._logger.log(self._level, self._partial.rstrip())
        self._partial = ""

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)


_installed: list[logging.Handler] = []
_tees: list[tuple[str, _Tee]] = []


def setup(program: str, *, verbose: bool = False, stream: IO[Any] | None = None,
          syslog: bool = False, tee_stdout: bool = True) -> logging.Logger:
    """Set up logging for an entry point named `program` ("connpin watch", "connpin up"):
    the "connpin" logger writes to `stream` (stderr) as the journal wants or as plain lines,
    at DEBUG with `verbose`, else INFO. `syslog`: a hook command; what it prints goes to
    /dev/log too (stdout lines only with `tee_stdout`: not machine-readable output). Undo
    with `restore` (tests call entry points many times in one process)."""
    restore()
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(program, stream))
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    _installed.append(handler)
    if syslog and (sys_handler := syslog_handler()) is not None:
        hook = logging.getLogger(HOOK_LOGGER)
        hook.addHandler(sys_handler)
        hook.setLevel(logging.DEBUG)
        hook.propagate = False  # not back to stderr: the tee already wrote it there
        _installed.append(sys_handler)
        streams = (("stdout", logging.INFO),) if tee_stdout else ()
        for name, level in (*streams, ("stderr", logging.ERROR)):
            tee = _Tee(getattr(sys, name), hook, level)
            setattr(sys, name, tee)
            _tees.append((name, tee))
    return logger


def setup_for(args: Any) -> logging.Logger:
    """`setup` for a parsed command line: `watch` to stderr only, hook commands also to
    syslog (their stdout only when it is not --json). `ha`: the role changes keepalived runs
    (stdio on /dev/null, like pppd's hooks) to syslog too; what prints a config or a plan for a
    person (`conntrackd-conf`, `keepalived-notify`, `--dry-run`) not."""
    syslog = args.command != "watch"
    if args.command == "ha":
        from connpin.ha.cli import acts

        syslog = acts(args)
    return setup(f"connpin {args.command}", verbose=getattr(args, "verbose", False),
                 syslog=syslog, tee_stdout=not getattr(args, "json", False))


def restore() -> None:
    """Undo `setup`: the streams back, the handlers closed."""
    while _tees:
        name, tee = _tees.pop()
        tee.drain()
        if getattr(sys, name) is tee:
            setattr(sys, name, tee._stream)
    for logger in (logging.getLogger(LOGGER), logging.getLogger(HOOK_LOGGER)):
        for h in list(logger.handlers):
            if h in _installed:
                logger.removeHandler(h)
        logger.propagate = True
    while _installed:
        _installed.pop().close()
