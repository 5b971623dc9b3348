"""Backing off a failing watcher across its re-creations: wait, one line per attempt, recovery.

A watcher's stream that ends with a permanent error (:mod:`airflow_trigger_kit.retry`) fails its
trigger, and Airflow's triggerer re-creates it from its serialized kwargs about a second later —
in the same process usually; in another after a triggerer restart or an HA takeover. Without a
memory of the failures, a directory it may not read, a dropped table or a revoked S3 permission
would be polled, fail and flood the log every second, forever.

Design. :class:`~airflow_trigger_kit.triggers.delivery.WatermarkProducer` holds one
:class:`RestartBackoff` and calls it at three points:

* :meth:`RestartBackoff.wait_turn`, first thing in ``open_stream``: when the watch's failure streak
  says its next retry time is still ahead, sleep until then (``asyncio.sleep``: the triggerer runs
  every other trigger meanwhile, and removing the watcher cancels the wait). Only then does the
  stream subscribe to the hub, load its cursor and poll.
* :meth:`RestartBackoff.failed`, when the stream ends with an error: count the failure in the
  streak, set the next retry time (:mod:`airflow_trigger_kit.hub.streaks`: ``retry_base_seconds``
  doubling up to ``retry_max_seconds``), log **one line** with the error, the count and the next
  retry time, and report it (the ``failure_streak`` gauge, the status record's ``backoff``).
* :meth:`RestartBackoff.succeeded`, after each successful poll: the first one after failures ends
  the streak with one "recovered" line, the gauge back to 0 and the status record recovered.

Invariants:

1. **No watermark moves, no data is skipped.** The wait comes before the cursor is even loaded,
   and nothing here writes the cursor; a watcher that recovers resumes from its committed cursor,
   so what landed while it failed is delivered then.
2. **The streak survives re-creation.** It lives in the hub of the event loop, keyed by
   ``(namespace, name)``. A process with no streak for the watch (a restarted triggerer, another
   triggerer taking over) reads the status record's ``backoff`` once and continues from it; that
   read is best-effort (an unreadable store means no wait) and never makes a wait longer than
   ``retry_max_seconds``, whatever another host's clock or the record says.
3. **One line per attempt**: at ERROR, when the attempt fails. The wait logs nothing, so a
   failing watch writes one line of this package (and Airflow's own lines about the failed
   trigger) per backoff step, not per second.
4. **Restarts are not failures**: a stream ended by ``StateConflict`` (another triggerer committed
   first) resumes at once (:func:`~airflow_trigger_kit.retry.ends_in_restart`).
5. **Sensors are untouched**: a sensor-mode trigger's permanent error still yields an error event
   and its task fails; Airflow's task retries apply.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Protocol

from airflow_trigger_kit import telemetry
from airflow_trigger_kit.hub.streaks import FailureStreak, FailureStreaks, WatchKey
from airflow_trigger_kit.retry import ends_in_restart
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.status import STATUS_KEY, backoff_of


class Producer(telemetry.WatermarkProducer, Protocol):
    """What :class:`RestartBackoff` needs of its producer (the telemetry hooks take it too)."""

    @property
    def state(self) -> ProcessState: ...

    @property
    def log(self) -> Any: ...


class RestartBackoff:
    """One producer's part in its watch's failure streak (see the module docstring)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        trigger = producer.trigger
        self.key: WatchKey = (trigger.namespace, trigger.name)
        self.label = f"watch {trigger.namespace}/{trigger.name}"
        self._streaks: FailureStreaks | None = None
        self._recovering = False
        """This stream started inside a streak: its first good poll is a recovery."""

    @property
    def streaks(self) -> FailureStreaks:
        if self._streaks is None:
            from airflow_trigger_kit.hub import get_hub

            self._streaks = get_hub().failure_streaks
        return self._streaks

    async def wait_turn(self) -> None:
        """Sleep until the watch's next retry time, if it is failing (invariants 1 and 2)."""
        streak = self.streaks.get(self.key)
        if streak is None:
            streak = await self._restore()
        if streak is None or not streak.active:
            return
        self._recovering = True
        settings = self.producer.trigger.settings
        delay = min(streak.next_retry_at - time.time(), settings.retry_max_seconds)
        if delay > 0:
            self.producer.log.debug(
                "%s: backing off for %.1fs before attempt %d", self.label, delay, streak.failures + 1
            )
            await asyncio.sleep(delay)

    def failed(self, exc: BaseException) -> None:
        """The stream ends with ``exc``: count it, set the next retry time, log one line, report."""
        if ends_in_restart(exc):
            return
        settings = self.producer.trigger.settings
        now = time.time()
        streak = self.streaks.failed(
            self.key,
            f"{type(exc).__name__}: {exc}",
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
            now=now,
        )
        self.producer.log.error(
            "%s: failed (%d in a row since %s): %s; backing off, next retry at %s (in %.1fs)",
            self.label,
            streak.failures,
            _clock(streak.since),
            streak.last_error,
            _clock(streak.next_retry_at),
            streak.next_retry_at - now,
        )
        telemetry.watcher_backing_off(self.producer, streak)

    def succeeded(self) -> None:
        """A poll succeeded: the first one after failures ends the streak (cheap otherwise)."""
        if not self._recovering:
            return
        self._recovering = False
        settings = self.producer.trigger.settings
        streak = self.streaks.recovered(self.key, probation_seconds=settings.retry_max_seconds)
        if streak is None:
            return
        self.producer.log.info(
            "%s: recovered after %d failed attempt(s) in a row over %.1fs; the last error was: %s",
            self.label,
            streak.failures,
            time.time() - streak.since,
            streak.last_error,
        )
        telemetry.watcher_recovered(self.producer)

    async def _restore(self) -> FailureStreak | None:
        """The streak another process recorded in the status record, if recent (invariant 2)."""
        try:
            entry = await self.producer.state.aget(STATUS_KEY)
        except Exception:  # best-effort: the cursor load that follows retries the store properly
            return None
        backoff = backoff_of(entry.value) if entry is not None else None
        if backoff is None:
            return None
        now = time.time()
        next_retry_at = backoff["next_retry_at"].timestamp()
        probation = self.producer.trigger.settings.retry_max_seconds
        if next_retry_at + probation < now:
            return None  # an old streak (or a recovery whose status write was lost)
        recorded = FailureStreak(
            failures=backoff["failures"],
            since=backoff["since"].timestamp(),
            next_retry_at=next_retry_at,
            last_error=_last_error(entry.value if entry is not None else None),
        )
        streak = self.streaks.restore(self.key, recorded)
        if streak is recorded:
            self.producer.log.info(
                "%s: continuing the backoff recorded by another process: %d failure(s) in a row since %s; "
                "next attempt at %s",
                self.label,
                streak.failures,
                _clock(streak.since),
                _clock(max(now, min(streak.next_retry_at, now + probation))),
            )
        return streak


def _last_error(record: Any) -> str:
    error = record.get("last_error") if isinstance(record, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else "(recorded by another process)"


def _clock(epoch_seconds: float) -> str:
    """A time for log lines: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).isoformat(timespec="seconds")
