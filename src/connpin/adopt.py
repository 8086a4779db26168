"""Upgrade path: rules and routes an older connpin installed without its protocol (issue 12).

Pure. connpin marks its ip rules and routes with `protocol 201`; an older connpin did not, so
after upgrading they look like another tool's. One that lies inside the slice the state file
records (rule priorities, table ids) *and* is exactly what connpin would install now is
connpin's own: it is adopted (re-stamped with the protocol, then replaced or deleted as usual).
Anything else in the slice without the protocol stays another tool's and is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from connpin.values import Recorded, Route, Rule


def adoptable(recorded: Recorded | None, rules: Iterable[Rule], routes: Iterable[Route],
              want_rules: Iterable[Rule], want_routes: Iterable[Route]
              ) -> tuple[list[Rule], list[Route]]:
    """Of the rules and routes found without connpin's protocol, those to adopt."""
    if recorded is None:  # nothing says connpin was ever applied here
        return [], []
    wr, wt = set(want_rules), set(want_routes)
    take_rules = [r for r in rules
                  if recorded.rules is not None and r.priority in recorded.rules and r in wr]
    take_routes = [r for r in routes
                   if recorded.tables is not None and r.table in recorded.tables and r in wt]
    return take_rules, take_routes
