"""The passive signal (pure): LAN connections an uplink carries that go unanswered make it
*suspect*, so its probes run at the burst pace at once instead of waiting for lost probes.

The nft table counts, per checked uplink, new outbound connections pinned to it (`sent_I_U`)
and the first reply of each (`answered_I_U`; render/passive.py). `Detector.observe` takes
successive readings of those totals with their time: an uplink is suspect when at least
`unanswered` connections were sent since its last answer, each at least `grace` seconds old
(a reply normally comes within one RTT) and none older than `window` (older ones say nothing
about now). Suspect never declares an uplink dead: it only hurries its probes
(`Monitor.hurry`), whose verdict decides. A LAN host scanning dead addresses therefore costs a
short burst of probes that are answered, never a failover. After a hurry the uplink's pending
connections are forgotten and it is not hurried again within `window`.

Counters start at zero when connpin's table is replaced: a total lower than the last one
starts that uplink over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Keys of [health] that configure the passive signal (health/settings.py).
KEYS = ("passive", "passive_unanswered", "passive_window", "passive_grace", "passive_label")


@dataclass(frozen=True)
class PassiveParams:
    """[health] passive* keys (docs/health.md "The passive signal")."""

    enabled: bool = True  # [health] passive
    unanswered: int = 8  # connections unanswered since the last answer that make it suspect
    window: float = 2.0  # seconds: older unanswered connections no longer count
    grace: float = 0.5  # seconds a connection may wait for its first reply
    label: int = 127  # conntrack label bit set on the first reply; label - 1 marks "counted"

    def validate(self) -> None:
        """ValueError "key: problem" (one line) when the values make no sense."""
        if not 1 <= self.unanswered <= 100000:
            raise ValueError(f"passive_unanswered: {self.unanswered} must be in 1..100000")
        if not 0 < self.window <= 600:
            raise ValueError(f"passive_window: {self.window} must be > 0 and <= 600 seconds")
        if not 0 <= self.grace < self.window:
            raise ValueError(f"passive_grace: {self.grace} must be >= 0 and below "
                             f"passive_window ({self.window})")
        if not 1 <= self.label <= 127:
            raise ValueError(f"passive_label: {self.label} must be in 1..127 (connpin also "
                             "uses the bit below it)")


def rendered(config: Any) -> bool:
    """Whether a config (model.Config) has the signal in connpin's table: [health] passive on
    and some uplink with `check` (render/passive.py renders it, conflicts.py guards its label
    bits, watch/passive.py reads it)."""
    return config.passive.enabled and any(u.check for u in config.uplinks)


@dataclass
class _Uplink:
    sent: int = 0  # last totals read
    answered: int = 0
    pending: deque[tuple[float, int]] = field(default_factory=deque)  # (seen at, connections)
    last_answer: float | None = None
    quiet_until: float = float("-inf")  # no new hurry before this


@dataclass(frozen=True)
class Reading:
    """One uplink's view after a reading (for tests and `status`)."""

    sent: int
    answered: int
    unanswered: int  # pending connections older than grace, inside the window
    suspect: bool


class Detector:
    """Counter totals in, uplinks to hurry out. `others_answer`: suspect only while another
    uplink has answered within the window (off by default: a LAN-wide outage only costs a
    burst of probes)."""

    def __init__(self, params: PassiveParams | None = None, others_answer: bool = False):
        self.params = params or PassiveParams()
        self.params.validate()
        self.others_answer = others_answer
        self._uplinks: dict[Hashable, _Uplink] = {}
        self.readings: dict[Hashable, Reading] = {}

    def forget(self, uplink: Hashable) -> None:
        self._uplinks.pop(uplink, None)
        self.readings.pop(uplink, None)

    def observe(self, totals: Mapping[Hashable, tuple[int, int]], now: float) -> list[Hashable]:
        """`totals`: uplink -> (sent, answered) as read at `now` (uplinks not in it are left
        alone). Returns the uplinks that just became suspect (hurry their probes)."""
        p = self.params
        for name, (sent, answered) in totals.items():
            u = self._uplinks.get(name)
            if u is None or sent < u.sent or answered < u.answered:  # new, or table replaced
                self._uplinks[name] = _Uplink(sent, answered)
                continue
            ds, da = sent - u.sent, answered - u.answered
            u.sent, u.answered = sent, answered
            if da > 0:  # it answers: what was waiting is settled (counts are not per connection)
                u.pending.clear()
                u.last_answer = now
                ds -= da
            if ds > 0:
                u.pending.append((now, ds))
            while u.pending and now - u.pending[0][0] > p.window:
                u.pending.popleft()
        out = []
        for name, u in self._uplinks.items():
            late = sum(n for at, n in u.pending if now - at >= p.grace)
            suspect = late >= p.unanswered and now >= u.quiet_until and (
                not self.others_answer or self._other_answered(name, now))
            self.readings[name] = Reading(u.sent, u.answered, late, suspect)
            if suspect:
                out.append(name)
                u.pending.clear()
                u.quiet_until = now + p.window
        return out

    def _other_answered(self, name: Hashable, now: float) -> bool:
        return any(n != name and u.last_answer is not None
                   and now - u.last_answer <= self.params.window
                   for n, u in self._uplinks.items())
