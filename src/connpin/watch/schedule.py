"""The daemon's scheduler: when to converge, when to back off, when to sweep, when to tell systemd
it is alive, and which failures to log. Pure: it is driven by an injected clock and by what the
daemon tells it (events seen, a converge's outcome); it never touches the kernel or a socket.

Rules (each has a unit test with a fake clock, tests/unit/test_watch_schedule.py):
- Events coalesce into a bounded set, keyed by interface (or NFT_KEY); each key keeps at most
  KEEP distinct descriptions for the log line (repeats folded) and a count of the rest. Taking
  them for a converge empties the set; a failed converge does not put them back (its retry
  re-reads the whole kernel anyway).
- A lone event is handled at once; a burst is coalesced into one converge at most every `gap`.
- Back-off depends only on converges' outcomes: the count of consecutive failures is reset by a
  converge that verified, never by an event. The first `races` failures are retried after `gap`
  (a race with the kernel: an interface vanished between reading and applying), and so is a
  failure after which uplink events are pending (the kernel moved under it: a race too, not
  counted; those events cannot come from the daemon's own writes); after that the delay doubles
  from `retry` up to `backoff_max`.
- While backing off, events about connpin's own nft table (most likely the failed converge's own
  rollback) wait for the retry; events about uplinks (the kernel moved) bring the retry forward,
  but no sooner than FLOOR after the last converge.
- A full resync is due `resync` seconds after the last converge and at once after an overflow.
- A failure is logged when it becomes persistent (after the fast retries) and whenever its cause
  changes; the same cause again only after LOG_FIRST, then at doubling intervals (up to LOG_MAX).
  A recovery after a logged failure is logged.
- WATCHDOG=1 is due every `watchdog` seconds when systemd asked for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

#: Least time between two converges: events arriving meanwhile are coalesced into the next one.
GAP = 0.02
#: Default period of the full resync (seconds).
RESYNC = 60.0
#: After a persistent failure, retry this soon (doubling up to the resync period).
RETRY = 1.0
#: Consecutive failed converges taken for races with the kernel (retried after GAP, not logged).
RACES = 2
#: While backing off, an uplink event brings the retry forward to no sooner than this.
FLOOR = 1.0
#: failback = "flush-idle": least time between two looks for connections gone idle.
SWEEP = 1.0
#: Distinct descriptions kept per pending key (the rest are counted).
KEEP = 6
#: Most pending keys (interfaces); beyond it events fold into the UNKNOWN key.
MAX_KEYS = 256
#: A failure with the same cause is logged again after this, then at doubling intervals.
LOG_FIRST = 60.0
LOG_MAX = 3600.0
#: Pending key of nf_tables events; key of events whose interface is not known.
NFT_KEY = "nft"
UNKNOWN = "?"


@dataclass
class Pending:
    """What happened to one key since the last converge (bounded)."""

    whats: list[str] = field(default_factory=list)
    more: int = 0

    def add(self, what: str) -> None:
        if what in self.whats:
            return
        if len(self.whats) < KEEP:
            self.whats.append(what)
        else:
            self.more += 1

    def text(self) -> str:
        return "; ".join(self.whats) + (f"; +{self.more} more" if self.more else "")


@dataclass
class Failure:
    """A failure that persists: shown in the log, the state file and `connpin status`."""

    cause: str
    since: float  # clock time of the first failed converge of the streak
    attempts: int = 0
    last: float = 0.0


class Scheduler:
    def __init__(self, clock: Callable[[], float], *, resync: float = RESYNC, gap: float = GAP,
                 retry: float = RETRY, races: int = RACES,
                 watchdog: float | None = None) -> None:
        self.clock = clock
        self.resync = resync
        self.gap = gap
        self.retry = retry
        self.races = races
        self.backoff_max = max(resync, retry)
        self.pending: dict[str, Pending] = {}
        self.overflowed = False
        self.last_end = -math.inf
        self.next_resync = clock()  # the first converge is due at once
        self.failures = 0  # consecutive converges that failed or did not verify
        self.retry_at: float | None = None
        self.retry_delay = retry
        self.sweep_at: float | None = None
        self.watchdog = watchdog
        self.watchdog_at: float | None = clock() if watchdog else None
        self.failure: Failure | None = None
        self.logged_cause: str | None = None
        self.log_at = math.inf  # when the same cause may be logged again
        self.log_every = LOG_FIRST

    # -- events -----------------------------------------------------------------------------------
    def event(self, key: str, what: str) -> None:
        if key not in self.pending and len(self.pending) >= MAX_KEYS:
            key = UNKNOWN
        self.pending.setdefault(key, Pending()).add(what)

    def overflow(self) -> None:
        self.overflowed = True

    def take(self) -> dict[str, str]:
        """The pending events (key -> description) for one converge; the set is emptied."""
        taken = {k: p.text() for k, p in self.pending.items()}
        self.pending = {}
        return taken

    @property
    def backing_off(self) -> bool:
        return self.failures > self.races

    # -- when -------------------------------------------------------------------------------------
    def _converge_due(self) -> float:
        due = self.next_resync
        if self.overflowed:
            due = min(due, self.last_end + self.gap)
        if self.pending:
            if not self.backing_off:
                due = min(due, self.last_end + self.gap)
            elif any(k != NFT_KEY for k in self.pending):
                due = min(due, max(self.last_end + FLOOR, self.last_end + self.gap))
        if self.retry_at is not None:
            due = min(due, self.retry_at)
        return due

    def due(self) -> float:
        """The next time anything is due (may be in the past)."""
        due = self._converge_due()
        for t in (self.sweep_at, self.watchdog_at):
            if t is not None:
                due = min(due, t)
        return due

    def timeout(self) -> float:
        return max(0.0, self.due() - self.clock())

    def next(self) -> str | None:
        """What to do now: "watchdog", "sweep", a converge's reason, or None (nothing due)."""
        now = self.clock()
        if self.watchdog_at is not None and now >= self.watchdog_at:
            return "watchdog"
        if self.sweep_at is not None and now >= self.sweep_at:
            return "sweep"
        if now < self._converge_due():
            return None
        if self.overflowed:
            return "resync after overflow"
        if self.retry_at is not None and now >= self.retry_at:
            return "retry"
        if self.pending:
            return "event"
        return "periodic resync"

    # -- outcomes ---------------------------------------------------------------------------------
    def pinged(self) -> None:
        assert self.watchdog is not None
        self.watchdog_at = self.clock() + self.watchdog

    def swept(self, wait: float | None) -> None:
        """A sweep ran; `wait`: seconds until the next may be due (None: nothing waits)."""
        self.sweep_at = None if wait is None else self.clock() + min(max(wait, SWEEP), 30.0)

    def sweep_soon(self) -> None:
        if self.sweep_at is None:
            self.sweep_at = self.clock() + SWEEP

    def converging(self) -> None:
        """A converge starts: it re-reads everything, so an overflow is taken care of."""
        self.overflowed = False

    def converged(self, cause: str | None) -> str | None:
        """A converge ended, verified (`cause` None) or not; returns the line to log, if any."""
        now = self.last_end = self.clock()
        self.next_resync = now + self.resync  # every converge re-reads the whole kernel
        if cause is None:
            line = None
            if self.logged_cause is not None and self.failure is not None:
                line = (f"recovered after {self.failure.attempts} failed converges "
                        f"({now - self.failure.since:.1f} s)")
            self.failures, self.retry_at, self.retry_delay = 0, None, self.retry
            self.failure, self.logged_cause, self.log_at = None, None, math.inf
            return line
        # Uplink events that came in meanwhile (never the daemon's own writes: it subscribes to
        # nothing it writes but its nft table) say the kernel moved under the converge: a race.
        moved = not self.backing_off and any(k != NFT_KEY for k in self.pending)
        if not moved:
            self.failures += 1
        if self.failure is None:
            self.failure = Failure(cause, now)
        self.failure.attempts += 1
        self.failure.cause, self.failure.last = cause, now
        if not self.backing_off:
            self.retry_at = now + self.gap
            return None
        self.retry_at = now + self.retry_delay
        next_in = self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, self.backoff_max)
        if cause != self.logged_cause:
            self.logged_cause, self.log_every = cause, LOG_FIRST
            self.log_at = now + self.log_every
            return f"converge failed: {cause} (retrying in {next_in:g} s, then less often)"
        if now >= self.log_at:
            self.log_every = min(self.log_every * 2, LOG_MAX)
            self.log_at = now + self.log_every
            return (f"still failing after {self.failure.attempts} converges in "
                    f"{now - self.failure.since:.0f} s: {cause}")
        return None
