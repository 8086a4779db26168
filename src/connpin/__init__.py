"""connpin: connection pinning for Linux routers with several uplinks.

The version is written once, in pyproject.toml; `version()` reads it from the installed
package's metadata, only when asked (importing importlib.metadata is not free on a hook's path).
"""

from __future__ import annotations

#: What `version()` says when connpin runs from a source tree that was never installed.
UNKNOWN_VERSION = "0+unknown"


def version() -> str:
    """connpin's version as installed (pyproject.toml's `version`)."""
    from importlib import metadata

    try:
        return metadata.version("connpin")
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> str:  # PEP 562: `connpin.__version__`, looked up when asked
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'connpin' has no attribute {name!r}")
