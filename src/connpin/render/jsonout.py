"""The one maker and writer of connpin's `--json` documents (schema 1, described in docs/json.md).

Every command that prints takes `--json`; its stdout is then exactly one JSON object: `"schema"`
(this module's SCHEMA), `"command"`, and the command's own fields. A failure is an object with
an `"error"` (kind, message, and for a config error the file and field) and the `"exit"` code the
command returns. stderr is the same with and without --json. Pure: nothing here touches the
machine; `emit` only writes to the stream it is given (stdout by default).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

#: Bumped when a field is removed, renamed, or changes type or meaning (docs/json.md).
SCHEMA = 1

#: Error kinds and the exit codes they come with (the CLI's exit codes).
KINDS = {"config": 2, "usage": 2, "conflict": 2, "runtime": 1, "verify": 1, "root": 4,
         "interrupted": 130}


def document(command: str | None, /, **fields: Any) -> dict[str, Any]:
    """A document of `command`: schema and command first, then `fields` in their order."""
    return {"schema": SCHEMA, "command": command, **fields}


def failure(command: str | None, kind: str, message: str, /, *, exit: int | None = None,
            file: str | None = None, field: str | None = None, problem: str | None = None,
            **fields: Any) -> dict[str, Any]:
    """A failure document. `file`/`field`/`problem` (config errors) are always present for kind
    "config" (null when not known); `exit` defaults to the kind's exit code; `fields` go beside
    the error (what the command did or found before it failed)."""
    if kind not in KINDS:
        raise ValueError(f"unknown error kind {kind!r}")
    error: dict[str, Any] = {"kind": kind, "message": message}
    if kind == "config" or file is not None:
        error["file"] = file
    if kind == "config" or field is not None:
        error["field"] = field or None
    if kind == "config" or problem is not None:
        error["problem"] = problem
    return document(command, error=error, exit=KINDS[kind] if exit is None else exit, **fields)


def config_failure(command: str, err: Any, /, **fields: Any) -> dict[str, Any]:
    """A ConfigError (path, field, message; str() is its one line) as a failure document."""
    return failure(command, "config", str(err), file=getattr(err, "path", None),
                   field=getattr(err, "field", None) or None,
                   problem=getattr(err, "message", str(err)), **fields)


def dumps(doc: dict[str, Any]) -> str:
    """The text of a document: indented, keys in the order they were made, one final newline."""
    if doc.get("schema") != SCHEMA or "command" not in doc:
        raise ValueError("not a connpin document (made by document() or failure())")
    return json.dumps(doc, indent=2) + "\n"


def emit(doc: dict[str, Any], out: TextIO | None = None) -> None:
    """Write a document (to stdout unless `out`)."""
    (out or sys.stdout).write(dumps(doc))
