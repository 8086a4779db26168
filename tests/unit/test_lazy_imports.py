"""The hook path imports only what it uses: pyroute2's package __init__ (every netlink family it
supports) is skipped, and code that wants the whole package still gets it."""

import subprocess
import sys

CHECK = """
import sys
import connpin.cli, connpin.engine, connpin.kernel.machine, connpin.watch
heavy = [m for m in ("pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.conntrack")
         if m in sys.modules]
assert not heavy, heavy
from pyroute2 import netns, config          # submodules: still lazy
assert "pyroute2.ndb.main" not in sys.modules
from pyroute2 import IPRoute, NDB, __version__  # a package attribute: the whole package loads
import connpin.kernel.netlink as nl
assert IPRoute is nl.IPRoute and __version__ == "0.9.7"
print("ok")
"""


def test_pyroute2_package_loads_lazily() -> None:
    p = subprocess.run([sys.executable, "-I", "-c", CHECK], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr
