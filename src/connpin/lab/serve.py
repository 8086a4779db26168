"""The echo servers of a kept lab, in a background process (`python -m connpin.lab.serve PREFIX`).

A kept lab outlives the process that built it, and its in-process servers with it; this process
takes them over. It exits on SIGTERM or when the lab's namespaces disappear, so it never keeps
a deleted namespace alive behind `ip netns del`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from connpin.kernel import netns
from connpin.lab.core import Lab, read_state
from connpin.lab.echo import EchoServers


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m connpin.lab.serve PREFIX", file=sys.stderr)
        return 2
    state = read_state(argv[0])
    if state is None:
        print(f"no lab {argv[0]}", file=sys.stderr)
        return 1
    names = state["namespaces"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    servers = EchoServers()
    try:
        servers.listen(names["router"], Lab.ECHO_PORT)
        servers.listen(names["lan"], Lab.FORWARD_PORT)
        servers.listen(names["net"], Lab.ECHO_PORT)
        if state.get("ipv6"):
            servers.listen(names["router"], Lab.ECHO_PORT, "::")
            servers.listen(names["lan"], Lab.FORWARD_PORT, "::")
            servers.listen(names["net"], Lab.ECHO_PORT, "::")
        servers.start()
        watched = netns.path(names["router"])
        while not stop.wait(0.5):
            if not os.path.exists(watched):
                break
    finally:
        servers.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
