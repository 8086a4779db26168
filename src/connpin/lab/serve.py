"""The lab's echo servers: which hosts listen on which ports (`lab_servers`), and for a kept
lab, the background process that serves them (`python -m connpin.lab.serve PREFIX`).

A kept lab outlives the process that built it, and its in-process servers with it; this process
takes them over. It exits on SIGTERM or when the lab's namespaces disappear, so it never keeps
a deleted namespace alive behind `ip netns del`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping

from connpin.kernel import netns
from connpin.lab.addressing import Addressing
from connpin.lab.cleanup import read_state
from connpin.lab.echo import EchoServers


def lab_servers(names: Mapping[str, str], ipv6: bool) -> EchoServers:
    """The lab's echo servers, started: port 7 on the router and the internet host, 8080 on the
    LAN host (the port forward's target); `names` maps hosts to their namespaces."""
    servers = EchoServers()
    try:
        for host, port in (("router", Addressing.ECHO_PORT), ("lan", Addressing.FORWARD_PORT),
                           ("net", Addressing.ECHO_PORT)):
            servers.listen(names[host], port)
            if ipv6:
                servers.listen(names[host], port, "::")
        servers.start()
    except BaseException:
        servers.close()
        raise
    return servers


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
    servers = lab_servers(names, bool(state.get("ipv6")))
    try:
        watched = netns.path(names["router"])
        while not stop.wait(0.5):
            if not os.path.exists(watched):
                break
    finally:
        servers.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
