"""render.top: rates between samples, events, the screen and the plain lines (pure)."""

from __future__ import annotations

from connpin import cli
from connpin.render.top import Row, Sample, View, changes, rate


def _sample(at: float, *rows: Row, new: str = "isp1 ppp0 (main's default route)",
            note: str = "") -> Sample:
    return Sample(at, rows, new, note)


UP1 = Row("isp1", "ppp0", True, "up", "alive", 12.4, 3, 1000, 500)
UP2 = Row("isp2", "wan2", True, "up", None, None, 0, 0, 0)


def test_rate_units() -> None:
    assert [rate(v) for v in (None, 0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30, 2**50)] == [
        "-", "0 B/s", "1023 B/s", "1.0 KiB/s", "1.5 KiB/s", "5.0 MiB/s", "3.0 GiB/s",
        "1048576.0 GiB/s"]


def test_rates_between_samples_and_counter_resets() -> None:
    v = View(2.0)
    v.update(_sample(100.0, UP1, UP2))
    assert v.rates() == {"ppp0": (None, None), "wan2": (None, None)}  # one sample: unknown
    later1 = Row("isp1", "ppp0", True, "up", "alive", 12.4, 3, 5000, 2500)
    later2 = Row("isp2", "wan2", True, "up", None, None, 0, None, 0)
    v.update(_sample(102.0, later1, later2))
    assert v.rates() == {"ppp0": (2000.0, 1000.0), "wan2": (None, 0.0)}
    reset = Row("isp1", "ppp0", True, "up", "alive", 12.4, 3, 10, 10)  # interface recreated
    v.update(_sample(104.0, reset, later2))
    assert v.rates()["ppp0"] == (None, None)


def test_changes_name_what_changed() -> None:
    down = Row("isp1", "ppp0", False, "no such interface", "unknown")
    old = _sample(0.0, UP1, UP2)
    new = _sample(0.0, down, new="isp2 wan2 (main's default route)", note="daemon failing")
    got = [e.split(" ", 1)[1] for e in changes(old, new)]
    assert got == ["isp1 ppp0: up -> down (no such interface)",
                   "isp1 ppp0: health alive -> unknown",
                   "isp2 wan2: no longer an uplink interface",
                   "new connections: isp2 wan2 (main's default route)",
                   "daemon failing"]
    assert [e.split(" ", 1)[1] for e in changes(new, old)][:2] == [
        "isp1 ppp0: down (no such interface) -> up", "isp1 ppp0: health unknown -> alive"]
    assert changes(old, old) == []


def test_screen_fits_the_terminal_newest_events_first() -> None:
    v = View(1.0)
    v.update(_sample(0.0, UP1, UP2))
    lines = v.lines(100, 30)
    assert lines[0].startswith("connpin top  ") and lines[0].endswith("every 1 s  (q quits)")
    assert lines[2].split() == ["uplink", "interface", "state", "health", "pinned", "in", "out"]
    assert lines[3].split() == ["isp1", "ppp0", "up", "alive", "12", "ms", "3", "-", "-"]
    assert lines[4].split() == ["isp2", "wan2", "up", "-", "0", "-", "-"]
    assert "new connections: isp1 ppp0 (main's default route)" in lines
    assert lines[-1] == "last events: none since top started"
    for i in range(40):
        up = i % 2 == 0
        v.update(_sample(float(i + 1), Row("isp1", "ppp0", up, "up" if up else "gone"), UP2))
    small = v.lines(30, 20)
    assert len(small) == 20 and all(len(ln) <= 30 for ln in small)
    at = next(i for i, ln in enumerate(small) if ln.startswith("last events:"))
    assert small[at + 1].endswith("isp1 ppp0: up -> do")  # the newest first
    assert small[at + 2].endswith("isp1 ppp0: down (go")


def test_plain_lines_have_a_timestamp_and_the_table() -> None:
    v = View(1.0)
    v.update(_sample(0.0, UP1, UP2, note="daemon failing since x"))
    lines = v.plain()
    assert lines[0].endswith(" new connections: isp1 ppp0 (main's default route)")
    assert lines[1].split()[0] == "uplink" and lines[2].split()[0] == "isp1"
    assert lines[-1] == "daemon failing since x"


def test_top_arguments() -> None:
    assert cli.main(["top", "-n", "0"]) == 2
    assert cli.main(["top", "-d", "x"]) == 2
    args = cli._parser().parse_args(["top", "--once", "-d", "0.5"])
    assert (args.once, args.interval, args.count) == (True, 0.5, None)
