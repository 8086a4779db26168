"""The daemon's scheduler, one rule per test, driven by a fake clock (connpin.watch.schedule)."""

from __future__ import annotations

import pytest

from connpin.watch import schedule
from connpin.watch.schedule import FLOOR, GAP, KEEP, MAX_KEYS, NFT_KEY, RACES, UNKNOWN, Scheduler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def started(resync: float = 60.0, watchdog: float | None = None) -> tuple[Clock, Scheduler]:
    clock = Clock()
    s = Scheduler(clock, resync=resync, watchdog=watchdog)
    assert s.next() == ("watchdog" if watchdog else "periodic resync")  # due at once
    if watchdog:
        s.pinged()
    s.converging()
    assert s.converged(None) is None
    assert s.next() is None
    return clock, s


def fail(s: Scheduler, cause: str = "boom") -> str | None:
    s.take()
    s.converging()
    return s.converged(cause)


def test_a_lone_event_is_handled_at_once_and_a_burst_coalesces() -> None:
    clock, s = started()
    clock.advance(5)
    s.event("ppp0", "up")
    assert s.next() == "event" and s.timeout() == 0
    assert s.take() == {"ppp0": "up"}
    s.converging()
    s.converged(None)
    s.event("ppp0", "address added")
    s.event("ppp1", "up")
    assert s.next() is None and s.timeout() == pytest.approx(GAP)  # within the gap: wait
    clock.advance(GAP)
    assert s.next() == "event"
    assert s.take() == {"ppp0": "address added", "ppp1": "up"}


def test_pending_events_are_bounded() -> None:
    clock, s = started()
    for i in range(10_000):
        s.event("ppp0", f"address 100.64.{i // 250}.{i % 250} added")
    s.event("ppp0", "address 100.64.0.0 added")  # a repeat is folded
    for i in range(MAX_KEYS + 500):
        s.event(f"if{i}", f"if{i} appeared")
    assert len(s.pending) <= MAX_KEYS + 1
    assert len(s.pending["ppp0"].whats) == KEEP and s.pending["ppp0"].more == 10_000 - KEEP
    assert s.pending[UNKNOWN].more + len(s.pending[UNKNOWN].whats) >= 500
    assert s.take()["ppp0"].endswith(f"+{10_000 - KEEP} more")
    assert s.pending == {}


def test_a_failed_converge_does_not_requeue_its_events() -> None:
    clock, s = started()
    s.event("ppp0", "up")
    clock.advance(1)
    fail(s)
    assert s.pending == {}
    assert s.next() is None
    clock.advance(GAP)
    assert s.next() == "retry"


def test_races_are_retried_after_the_gap_then_the_delay_doubles() -> None:
    clock, s = started()
    delays = []
    for _ in range(RACES + 8):
        fail(s)
        delays.append(round(s.retry_at - clock(), 6))  # type: ignore[operator]
        clock.t = s.retry_at  # type: ignore[assignment]
        assert s.next() == "retry"
    assert delays[:RACES] == [GAP] * RACES
    assert delays[RACES:] == [1, 2, 4, 8, 16, 32, 60, 60]  # up to the resync period


def test_events_never_reset_the_back_off() -> None:
    """The failed converge's own rollback shows up as nft events about connpin's table: they wait
    for the retry, and no event of any kind resets the count."""
    clock, s = started()
    for _ in range(RACES + 3):
        clock.t = s.retry_at or clock.t
        fail(s)
    assert s.backing_off and s.failures == RACES + 3
    retry_at = s.retry_at
    s.event(NFT_KEY, "nft table inet connpin: table deleted")
    clock.advance(FLOOR + 0.5)
    assert s.next() is None and s.due() == retry_at  # waits for the retry
    s.event("ppp0", "up")  # the kernel moved: brought forward, no sooner than FLOOR
    assert s.next() == "event"
    fail(s)
    assert s.failures == RACES + 4  # not reset


def test_an_uplink_event_while_backing_off_waits_at_least_the_floor() -> None:
    clock, s = started()
    for _ in range(RACES + 6):  # retry delay now well over FLOOR
        fail(s)
        clock.t = s.retry_at  # type: ignore[assignment]
    fail(s)
    s.event("ppp1", "up")
    assert s.due() == pytest.approx(clock() + FLOOR)


def test_persistent_failure_converges_at_most_a_handful_per_minute() -> None:
    clock, s = started()
    attempts = []
    start = clock()
    while clock() - start < 600:
        attempts.append(clock())
        fail(s)
        s.event(NFT_KEY, "table added")  # what the daemon's own nft load and rollback emit
        s.event(NFT_KEY, "table deleted")
        clock.t = s.due()
        while s.next() is None:
            clock.t = s.due()
    first_minute = [t for t in attempts if t < start + 60]
    later_minute = [t for t in attempts if start + 300 <= t < start + 360]
    assert len(first_minute) <= RACES + 7, len(first_minute)
    assert len(later_minute) <= 1


def test_a_persistent_failure_is_logged_once_then_at_a_falling_rate_and_its_end() -> None:
    clock, s = started()
    lines = []
    for _ in range(200):
        line = fail(s, "Error: Nexthop has invalid gateway")
        if line:
            lines.append((clock(), line))
        clock.t = s.retry_at  # type: ignore[assignment]
    assert "converge failed: Error: Nexthop has invalid gateway" in lines[0][1]
    assert all("still failing" in line for _, line in lines[1:])
    gaps = [round(b - a, 6) for (a, _), (b, _) in zip(lines, lines[1:], strict=False)]
    assert gaps and all(g >= schedule.LOG_FIRST for g in gaps)
    assert gaps == sorted(gaps)  # a falling rate
    assert len(lines) < 12
    # another cause is logged at once
    assert "converge failed: other" in (fail(s, "other") or "")
    assert s.failure is not None and s.failure.cause == "other"
    s.converging()
    line = s.converged(None)
    assert line and line.startswith("recovered after 201 failed converges")
    assert s.failure is None and s.failures == 0 and s.retry_at is None


def test_races_alone_are_not_logged() -> None:
    clock, s = started()
    for _ in range(RACES):
        assert fail(s) is None
        clock.t = s.retry_at  # type: ignore[assignment]
    s.converging()
    assert s.converged(None) is None  # nothing was reported, so no recovery line


def test_resync_after_the_period_and_after_an_overflow() -> None:
    clock, s = started(resync=30)
    clock.advance(29.9)
    assert s.next() is None
    clock.advance(0.1)
    assert s.next() == "periodic resync"
    s.converging()
    s.converged(None)
    s.overflow()
    assert s.next() is None  # within the gap
    clock.advance(GAP)
    assert s.next() == "resync after overflow"
    s.converging()
    assert not s.overflowed


def test_sweep_timer() -> None:
    clock, s = started()
    s.sweep_soon()
    assert s.next() is None
    clock.advance(schedule.SWEEP)
    assert s.next() == "sweep"
    s.swept(120)  # capped at 30 s
    assert s.sweep_at == clock() + 30
    s.swept(None)
    assert s.sweep_at is None


def test_watchdog_is_due_every_interval() -> None:
    clock, s = started(watchdog=5)
    assert s.next() is None and s.timeout() == 5
    clock.advance(5)
    assert s.next() == "watchdog"
    s.pinged()
    assert s.next() is None and s.due() == clock() + 5


def test_a_failure_while_the_kernel_moves_is_a_race() -> None:
    """A link flapping under the converges: each failure is followed by uplink events, so none
    counts toward the back-off (and nothing is logged); nft events alone do not count as the
    kernel moving (they are the daemon's own rollback)."""
    clock, s = started()
    for _ in range(10):
        s.take()
        s.converging()
        s.event("ppp0", "gone")  # arrived during the converge
        assert s.converged("ip route add default dev ppp0 table 1164: No such device") is None
        assert s.failures == 0 and s.retry_at == clock() + GAP
        clock.advance(GAP)
        assert s.next() == "retry"
    for _ in range(RACES + 1):
        s.take()
        s.converging()
        s.event(NFT_KEY, "nft table inet connpin: table deleted")
        s.converged("boom")
    assert s.backing_off
