"""The pure core imports nothing that touches the machine."""

import subprocess
import sys


def test_core_and_renderers_do_not_import_side_effects() -> None:
    code = (
        "import sys\n"
        "import connpin.model, connpin.alloc, connpin.desired, connpin.reconcile, connpin.steer\n"
        "import connpin.render.nft, connpin.render.plan, connpin.render.status\n"
        "bad = [m for m in ('pyroute2', 'subprocess', 'socket', 'connpin.kernel') "
        "if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
