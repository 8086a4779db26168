"""ConfigError and the typed readers of config fields every section uses (a leaf: `model` and
`classes` both build on it). Pure.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A config that cannot be used: names the file, the field and what is wrong."""

    def __init__(self, path: str, field: str, message: str):
        self.path, self.field, self.message = path, field, message
        shown = path if path.isprintable() else repr(path)[1:-1]
        where = f"{shown}: {field}: " if field else f"{shown}: "
        super().__init__(_one_line(where + message))


def _one_line(text: str, limit: int = 400) -> str:
    """An error message as one printable line of bounded length (values are quoted with repr,
    but a parser's message or a path may hold anything)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _int(path: str, fld: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, fld, f"must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(path, fld, f"{value} is out of range {lo}..{hi}")
    return value


def _bool(path: str, fld: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, fld, f"must be true or false, not {value!r}")
    return value


def _choice(path: str, fld: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(path, fld, f"{value!r} is not one of " +
                          ", ".join(f'"{c}"' for c in choices))
    return value


def _unknown(path: str, where: str, got: dict, known: set[str]) -> None:
    extra = sorted(set(got) - known)
    if extra:
        hint = ", ".join(sorted(known))
        raise ConfigError(path, f"{where}{extra[0]}", f"unknown key (known keys: {hint})")


def _entry(path: str, where: str, raw: Any, known: set[str], required: tuple[str, ...]) -> dict:
    """An entry of an array of tables ([[uplink]], [[class]]): a table with only known keys and
    every required one."""
    if not isinstance(raw, dict):
        raise ConfigError(path, where, "must be a table")
    _unknown(path, f"{where}.", raw, known)
    for key in required:
        if key not in raw:
            raise ConfigError(path, f"{where}.{key}", "is required")
    return raw
