"""connpin: connection pinning for Linux routers with several uplinks."""

__version__ = "0.1.0"
