"""`connpin top` on the real kernel: driven in tmux (a real terminal: curses, keys), the screen
shows the lab's uplinks, follows an uplink going down and quits on `q` with exit 0; without a
terminal it prints plain lines and quits on a "q" line."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import KERNEL, wait_for

from connpin.lab import Lab

pytestmark = KERNEL
TIMEOUT = 60.0  # generous: 2 busy cores


class Tmux:
    """A private tmux server (its own socket, in the test's directory) with one window
    running a command."""

    def __init__(self, command: str, directory: Path, width: int = 110, height: int = 32
                 ) -> None:
        self.socket = str(directory / f"tmux-{uuid.uuid4().hex[:8]}")
        subprocess.run(["tmux", "-S", self.socket, "-f", "/dev/null", "new-session", "-d",
                        "-s", "top", "-x", str(width), "-y", str(height), command],
                       check=True, timeout=30)

    def screen(self) -> str:
        p = subprocess.run(["tmux", "-S", self.socket, "capture-pane", "-p", "-t", "top"],
                           capture_output=True, text=True, timeout=30)
        return p.stdout

    def wait(self, pattern: str, what: str) -> str:
        found: list[str] = []

        def seen() -> bool:
            text = self.screen()
            found[:] = [text]
            return re.search(pattern, text, re.M) is not None

        try:
            wait_for(seen, TIMEOUT, what, interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\nscreen:\n{found[0] if found else ''}") from None
        return found[0]

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-S", self.socket, "send-keys", "-t", "top", *keys],
                       check=True, timeout=30)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=30)


def _lab_with_pinning(lab: Lab) -> None:
    lab.write_config(lab.default_config())
    lab.uplink_up(1)
    lab.uplink_up(2)
    lab.connpin("apply")


def test_top_in_tmux_follows_an_uplink_going_down_and_quits_on_q(tmp_path: Path) -> None:
    if not shutil.which("tmux"):
        pytest.skip("needs tmux")
    rc = tmp_path / "rc"
    with Lab() as lab:
        _lab_with_pinning(lab)
        argv = [sys.executable, "-m", "connpin", "--netns", lab.ns("router"), "-c",
                str(lab.config_path), "top", "-d", "0.5"]
        env = f"env PATH={os.environ['PATH']}"
        tmux = Tmux(f"{env} {' '.join(argv)}; echo $? > {rc}; sleep 60", tmp_path)
        try:
            screen = tmux.wait(r"^isp2\s+ppp1\s+up\b", "top shows the lab's uplinks")
            assert re.search(r"^isp1\s+ppp0\s+up\b", screen, re.M), screen
            assert "new connections: isp1 ppp0 (main's default route)" in screen
            assert re.search(r"^uplink\s+interface\s+state\s+health\s+pinned\s+in\s+out", screen,
                             re.M), screen
            probe = lab.probe()  # a LAN host's connection: bytes move on isp1
            tmux.wait(r"^isp1\s+ppp0\s+up\s+-\s+1\s+\d+(\.\d)? (B|KiB)/s", "isp1's bytes/s")
            probe.close()
            lab.uplink_down(1)
            screen = tmux.wait(r"^isp1\s+ppp0\s+down \(", "the screen follows isp1 going down")
            assert re.search(r"isp1 ppp0: up -> down \(", screen), screen
            tmux.wait(r"new connections: isp2 ppp1", "new connections move to isp2")
            tmux.keys("q")
            wait_for(lambda: rc.exists() and rc.read_text().strip(), TIMEOUT, "top exits")
            assert rc.read_text().strip() == "0"
        finally:
            tmux.close()


def test_top_without_a_terminal_prints_plain_lines(tmp_path: Path) -> None:
    with Lab() as lab:
        _lab_with_pinning(lab)
        p = lab.connpin("top", "-n", "2", "-d", "0.3", timeout=TIMEOUT)
        blocks = [b for b in p.stdout.split("\n\n") if b.strip()]
        assert len(blocks) == 2, p.stdout
        for block in blocks:
            lines = block.splitlines()
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d new connections: isp1 ppp0", lines[0])
            assert re.match(r"isp1\s+ppp0\s+up\s", lines[2]) and \
                re.match(r"isp2\s+ppp1\s+up\s", lines[3]), block
        assert "\x1b" not in p.stdout  # no terminal control sequences
        # until a "q" line on stdin (a pipe)
        argv = [sys.executable, "-m", "connpin", "--netns", lab.ns("router"), "-c",
                str(lab.config_path), "top", "-d", "0.3"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            deadline = time.monotonic() + TIMEOUT
            while "isp2" not in proc.stdout.readline():
                assert time.monotonic() < deadline, "no plain lines"
            proc.stdin.write("q\n")
            proc.stdin.flush()
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
