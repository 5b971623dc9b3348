"""Failure streaks of watchers, kept per process across the re-creation of their triggers.

Airflow re-creates a watcher whose stream failed about a second later, from its serialized kwargs:
a new trigger object and a new producer, with nothing carried over in memory. A watcher with a
permanent error (a directory it may not read, a dropped table, a revoked S3 permission) would fail
again at once, every second. So the streak of failures of each watch lives here, in the hub of the
event loop, which outlives every trigger object in it; the producer of the re-created watcher reads
it and waits until the next retry time before it polls again
(:mod:`airflow_trigger_kit.triggers.restart_backoff`, which also logs and reports).

Design and invariants:

1. **Keyed by watch** — ``(namespace, name)``, the key of its cursor — not by trigger object:
   every re-creation of a watch continues its one streak. A streak counts attempts (streams that
   ended with an error), not subscribers.
2. **Exponential, capped, jittered, never short.** After the n-th failure in a row the next retry
   is uniform in ``[c/2, c]`` from now, ``c = min(retry_max_seconds, retry_base_seconds *
   2**(n-1))``. At least half the ceiling, so the attempts in any time window are bounded (the
   tests count them); jittered, so the watches one revoked permission broke do not retry in step.
3. **Recovery keeps the count for a probation of** ``retry_max_seconds``: a watch that polls once
   successfully and then fails again (a cursor over the size limit fails just after a good poll)
   continues its streak at the delay it had reached instead of starting again from the base delay.
   After the probation, a failure starts a new streak.
4. **Bounded and pure.** One small entry per watch that failed recently in this process; recovered
   entries are dropped once their probation is over. No I/O, no logging, no Airflow. Times are
   wall-clock seconds (``time.time()``): next retry times are shown to people and written to the
   status record, which another process may read.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from airflow_trigger_kit.retry import backoff_delay

WatchKey = tuple[str, str]
"""``(namespace, name)`` of a watch."""

JITTER_FLOOR = 0.5
"""The shortest delay of a backoff step, as a fraction of its ceiling (invariant 2)."""


@dataclass
class FailureStreak:
    """Consecutive failed attempts of one watch."""

    failures: int
    since: float
    """When the first failure of the streak happened (``time.time()``)."""
    next_retry_at: float
    last_error: str
    recovered_at: float | None = None
    forget_at: float | None = None
    """End of the probation after a recovery (invariant 3)."""

    @property
    def active(self) -> bool:
        """Failing now: the next attempt waits for :attr:`next_retry_at`."""
        return self.recovered_at is None


class FailureStreaks:
    """The failure streaks of one event loop's watchers (see the module docstring)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._streaks: dict[WatchKey, FailureStreak] = {}
        self._rng = rng

    def __len__(self) -> int:
        return len(self._streaks)

    def get(self, key: WatchKey, now: float | None = None) -> FailureStreak | None:
        """The watch's streak: failing, or recovered and still on probation; None otherwise."""
        streak = self._streaks.get(key)
        if streak is not None and streak.forget_at is not None and streak.forget_at < _now(now):
            del self._streaks[key]
            return None
        return streak

    def restore(self, key: WatchKey, streak: FailureStreak) -> FailureStreak:
        """Take over a streak another process recorded, unless this process has one already."""
        return self._streaks.setdefault(key, streak)

    def failed(
        self, key: WatchKey, error: str, *, base_seconds: float, max_seconds: float, now: float | None = None
    ) -> FailureStreak:
        """Count a failed attempt and set the next retry time (invariant 2)."""
        at = _now(now)
        self._prune(at)
        streak = self.get(key, at)
        if streak is None:
            streak = self._streaks[key] = FailureStreak(failures=0, since=at, next_retry_at=at, last_error=error)
        streak.failures += 1
        streak.last_error = error
        streak.recovered_at = streak.forget_at = None
        delay = backoff_delay(streak.failures - 1, base_seconds, max_seconds, floor=JITTER_FLOOR, rng=self._rng)
        streak.next_retry_at = at + delay
        return streak

    def recovered(self, key: WatchKey, *, probation_seconds: float, now: float | None = None) -> FailureStreak | None:
        """The watch works again: end its streak (kept on probation); the streak if one was active."""
        at = _now(now)
        streak = self.get(key, at)
        if streak is None or not streak.active:
            return None
        streak.recovered_at = at
        streak.forget_at = at + probation_seconds
        self._prune(at)
        return streak

    def _prune(self, now: float) -> None:
        for key in [k for k, s in self._streaks.items() if s.forget_at is not None and s.forget_at < now]:
            del self._streaks[key]


def _now(now: float | None) -> float:
    return time.time() if now is None else now
