"""Prometheus metrics of `connpin watch` on the real kernel: the daemon runs in the lab's router
with [metrics] (an HTTP endpoint and a textfile) and health checks; known UDP traffic (datagrams
of a known size, echoed by the internet host) crosses one uplink, and the endpoint's byte and
packet counters of that uplink grow by what was sent and echoed (IP bytes: payload + 28) within
1%; when an uplink goes down, its `up` series says so. Deadlines, not sleeps.
"""

from __future__ import annotations

import re
import socket
import threading
import time

from helpers import KERNEL
from prometheus_client.parser import text_string_to_metric_families
from test_watch import watching

from connpin.kernel import netns
from connpin.lab import Lab

pytestmark = KERNEL

PORT = 9647
ECHO_PORT = 5999
SIZE, COUNT, BATCH = 1000, 3000, 50  # datagrams: 3 MB each way


def scrape(lab: Lab) -> tuple[dict[tuple, float], float]:
    """The endpoint's samples, {(name, (sorted labels)): value}, and what the scrape took (s)."""
    started = time.monotonic()
    s = netns.socket_in(lab.ns("router"))
    try:
        s.settimeout(5)
        s.connect(("127.0.0.1", PORT))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    took = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    return samples(body.decode()), took


def samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wait_scrape(lab: Lab, cond, timeout: float, what: str, daemon) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, _ = scrape(lab)
        except OSError:
            got = {}
        if got and cond(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen after {timeout:g} s: {got}\n{daemon.log}")
        time.sleep(0.1)


def up(got: dict, uplink: str) -> float | None:
    return got.get(("connpin_uplink_up", (("uplink", uplink),)))


def traffic(got: dict, uplink: str) -> dict[str, float]:
    out = {"new": got.get(("connpin_uplink_new_connections_total", (("uplink", uplink),)), 0)}
    for d in ("out", "in"):
        lab = (("direction", d), ("uplink", uplink))
        out[f"packets_{d}"] = got.get(("connpin_uplink_packets_total", lab), 0)
        out[f"bytes_{d}"] = got.get(("connpin_uplink_bytes_total", lab), 0)
    return out


class UdpEcho:
    """Echoes datagrams in the internet host; counts what it received and from where."""

    def __init__(self, lab: Lab) -> None:
        self.sock = netns.socket_in(lab.ns("net"), socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", ECHO_PORT))
        self.sock.settimeout(0.2)
        self.received, self.peers = 0, set()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            self.received += 1
            self.peers.add(peer[0])
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


def send(lab: Lab) -> int:
    """COUNT datagrams of SIZE bytes from the LAN, in batches that wait for their echoes
    (no socket buffer overflows); the number of echoes received."""
    c = netns.socket_in(lab.ns("lan"), socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(1.0)
    got = 0
    try:
        c.connect((Lab.SERVER, ECHO_PORT))
        payload = b"x" * SIZE
        for _ in range(COUNT // BATCH):
            for _ in range(BATCH):
                c.send(payload)
            for _ in range(BATCH):
                try:
                    got += len(c.recv(65536)) == SIZE
                except TimeoutError:
                    break
    finally:
        c.close()
    return got


def test_metrics_count_the_traffic_and_follow_the_states() -> None:
    with Lab(("ppp", "eth")) as lab:
        for k in lab.ks:
            lab.uplink_up(k)
        prom = lab.workdir / "connpin.prom"
        check = f'check = ["icmp:{Lab.SERVER}"]'
        config = re.sub(r'(interface = "[^"]+"\n)', rf"\1{check}\n",
                        lab.default_config(masquerade=True))
        lab.write_config(config + f'\n[metrics]\nlisten = "127.0.0.1:{PORT}"\n'
                                  f'textfile = "{prom}"\ninterval = 1\n')
        echo = UdpEcho(lab)
        try:
            with watching(lab) as daemon:
                daemon.wait_log(r"metrics: serving http://127\.0\.0\.1:9647/metrics")
                wait_scrape(lab, lambda g: up(g, "isp1") == 1 and up(g, "isp2") == 1 and all(
                    g.get(("connpin_uplink_alive", (("uplink", u),))) == 1
                    for u in ("isp1", "isp2")), 20, "both uplinks up and alive", daemon)
                before, _ = scrape(lab)
                echoed = send(lab)
                after, took = scrape(lab)
                assert len(echo.peers) == 1, echo.peers
                k = lab.uplink_of(next(iter(echo.peers)))
                name = f"isp{k}"
                b, a = traffic(before, name), traffic(after, name)
                d = {key: a[key] - b[key] for key in a}
                sent_bytes = echo.received * (SIZE + 28)  # IPv4 + UDP headers
                back_bytes = echoed * (SIZE + 28)
                print(f"\n{name}: out {d['bytes_out']:.0f} B / {d['packets_out']:.0f} pkts "
                      f"(sent {sent_bytes} B / {echo.received}), in {d['bytes_in']:.0f} B / "
                      f"{d['packets_in']:.0f} pkts (echoed {back_bytes} B / {echoed}); "
                      f"new {d['new']:.0f}; scrape {took * 1000:.1f} ms")
                assert echo.received >= COUNT * 0.99 and echoed >= COUNT * 0.99
                assert abs(d["bytes_out"] - sent_bytes) <= sent_bytes * 0.01
                assert abs(d["bytes_in"] - back_bytes) <= back_bytes * 0.01
                assert abs(d["packets_out"] - echo.received) <= echo.received * 0.01
                assert abs(d["packets_in"] - echoed) <= echoed * 0.01
                assert d["new"] >= 1  # the UDP flow (and the probes' own connections)
                other = traffic(after, f"isp{3 - k}")
                assert other["bytes_out"] < sent_bytes * 0.01  # only its health probes
                assert after[("connpin_converges_total", ())] >= 1
                assert after[("connpin_converge_duration_seconds_count", ())] >= 1

                lab.uplink_down(1)
                got = wait_scrape(lab, lambda g: up(g, "isp1") == 0 and up(g, "isp2") == 1, 20,
                                  "isp1 down, isp2 up", daemon)
                assert got[("connpin_uplink_alive", (("uplink", "isp2"),))] == 1
                assert got[("connpin_events_total", (("source", "kernel"),))] >= 1

                def textfile_says_down() -> bool:
                    text = prom.read_text() if prom.exists() else ""
                    return samples(text).get(("connpin_uplink_up", (("uplink", "isp1"),))) == 0

                deadline = time.monotonic() + 10
                while not textfile_says_down():
                    assert time.monotonic() < deadline, f"textfile never showed isp1 down\n" \
                                                        f"{daemon.log}"
                    time.sleep(0.1)
                assert not list(lab.workdir.glob("connpin.prom.*"))  # no temporary left
        finally:
            echo.close()


def test_counter_reader_netlink_matches_nft() -> None:
    """kernel/counters.py's netlink dump reads what `nft -j list counters` shows: only connpin's
    table in family inet, 64-bit values intact, {} for a table that does not exist."""
    from connpin.kernel import counters

    with Lab(uplinks=("ppp",)) as lab:
        lab.exec("router", ["nft", "-f", "-"], input=(
            "table inet cpt {\n"
            "\tcounter new_7_a-1 {\n\t\tpackets 5 bytes 300\n\t}\n"
            "\tcounter out_7_a-1 {\n\t\tpackets 12345678901 bytes 98765432109876\n\t}\n"
            "\tcounter in_9_b {\n\t}\n}\n"
            "table inet other {\n\tcounter new_1_x {\n\t}\n}\n"
            "table ip cpt {\n\tcounter new_2_y {\n\t}\n}\n"))
        ns = lab.ns("router")
        got = counters.read_raw(ns, "cpt")
        assert got == counters.read_raw_nft(ns, "cpt") == {
            "new_7_a-1": (5, 300), "out_7_a-1": (12345678901, 98765432109876), "in_9_b": (0, 0)}
        assert counters.read_raw(ns, "cpt_gone") == counters.read_raw_nft(ns, "cpt_gone") == {}
        assert counters.read(ns, "cpt")["a-1"].bytes_out == 98765432109876
