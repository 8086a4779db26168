"""Adapters to the machine. Importing this package makes `pyroute2` load lazily (see below)."""

from __future__ import annotations

import importlib.util
import sys


def _lazy_pyroute2() -> None:
    """Let `import pyroute2.iproute` skip pyroute2's package __init__, which imports every
    family pyroute2 supports (conntrack, NDB, IPDB, wireless, ...): about a third of the import
    time of a `connpin up` hook. Submodules load as usual; the full package runs on the first
    attribute asked of `pyroute2` itself, so `from pyroute2 import X` elsewhere still works."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> object:  # PEP 562: runs only for missing attributes
        if name.startswith("__") and name not in ("__version__", "__all__"):
            raise AttributeError(name)  # probes of the import system: not a reason to load
        try:  # `from pyroute2 import config` inside pyroute2: a submodule, import just that
            return importlib.import_module(f"{spec.name}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{spec.name}.{name}":
                raise
        del package.__dict__["__getattr__"]
        spec.loader.exec_module(package)  # the real __init__, in the same module object
        return getattr(package, name)

    package.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = package


_lazy_pyroute2()
