"""Errors the command-line modules share (`cli`, `pinned_cli`): each one is exit code 2.

A leaf module: the entry points raise and catch these without importing each other.
"""

from __future__ import annotations


class Usage(Exception):
    """Bad command-line input (exit 2)."""


class UnknownUplink(Usage, ValueError):
    """A name on the command line that is no uplink or uplink interface of the config."""
