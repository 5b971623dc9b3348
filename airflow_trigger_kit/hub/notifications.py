"""Change notifications: hints that wake the shared pollers early; polling stays the truth.

Every source this package watches can say that something changed: the kernel (inotify) for
directories, ``LISTEN``/``NOTIFY`` for Postgres, S3 event notifications through SQS. A
:class:`Listener` receives them for the hub and turns each into a *hint*. Design and invariants:

* **A hint only wakes.** It makes the waiters it concerns due for a poll now (after
  :data:`HINT_DELAY`, which gathers a burst into one poll); what a watch reports is always what that
  poll finds from the watch's own committed cursor. A notification that is lost, duplicated,
  reordered or wrong therefore delays a detection to the next regular poll at worst: it never
  loses or repeats data. Payloads are read, if at all, only to decide *whom* to wake.
* **Coalesced.** Hints are buffered per listener and flushed once per :data:`HINT_DELAY`; a waiter
  already in a poll is marked and polled once more right after it (never twice at once). A burst
  of 10,000 notifications costs a handful of polls, not 10,000.
* **Rare regular polls while live.** While its listener is live, a waiter polls every
  ``reconcile_interval`` (default 60 s) instead of every ``poll_interval``: the reconcile poll
  catches whatever no notification announced (a network file system, a missed event, a message
  deleted by someone else).
* **Failure falls back to polling.** When a listener fails (its connection drops, the kernel
  refuses a watch, the queue is gone) it logs once per failure streak, sets the
  ``trigger_kit.listener_up`` gauge to 0, counts ``trigger_kit.listener_failures``, wakes all its
  waiters (they poll at once, then every ``poll_interval``) and reconnects with exponential
  backoff. Back up, it wakes them again: what changed while it was down is found by that poll.
* **Unsupported is not a failure.** A listener that cannot work here at all (inotify on a platform
  without it) raises :class:`ListenerUnsupported` once; it is logged once and stays down, and the
  watches poll every ``poll_interval`` as they would without notifications.
* **Lifetime.** A listener runs while it has subscribers (the hub starts it with the first and
  stops it with the last) and never outlives its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable

from airflow_trigger_kit import metrics
from airflow_trigger_kit.hub.scheduling import HINT_DELAY, Ticker, Waiter
from airflow_trigger_kit.retry import Backoff

log = logging.getLogger(__name__)

RECONNECT_BASE_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 60.0


class ListenerUnsupported(Exception):
    """Notifications cannot work here at all (not a transient failure): poll instead, say so once."""


class Listener:
    """One notification channel of the hub (an inotify instance, a LISTEN connection, an SQS queue).

    Subclasses implement :meth:`listen`: connect, call :meth:`connected`, then receive forever and
    call :meth:`hint` with the key each notification concerns (``None``: every subscriber). It
    returns or raises when the channel fails; the base class backs off and calls it again.

    ``ticker`` and ``matches(waiter, keys)`` say whose waiters a hint wakes: ``keys`` is the set
    of hinted keys, ``None`` in it meaning "everyone of this listener".
    """

    source_kind = "unknown"

    def __init__(self, name: str, ticker: Ticker, matches: Callable[[Waiter, set[Hashable | None]], bool]) -> None:
        self.name = name
        self.ticker = ticker
        self.matches = matches
        self.live = False
        self.unsupported = False
        self.failures = 0
        """Failures since the process started (tests read it)."""
        self.connects = 0
        """Successful (re)connections (tests read it)."""
        self.hints = 0
        """Notifications received (before coalescing)."""
        self.flushes = 0
        """Hint flushes that woke waiters (after coalescing)."""
        self._pending: set[Hashable | None] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS)
        self._failing = False

    # -- what subclasses implement ---------------------------------------------------------------
    async def listen(self) -> None:
        """Connect, call :meth:`connected`, then deliver hints until the channel fails."""
        raise NotImplementedError

    async def disconnect(self) -> None:
        """Release what :meth:`listen` holds (called after it ends, however it ended)."""

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"trigger-kit listener {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._set_live(False)

    async def _run(self) -> None:
        while True:
            failure: BaseException
            try:
                await self.listen()
                failure = EOFError("the notification channel closed")
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self.disconnect()
                raise
            except ListenerUnsupported as exc:
                self.unsupported = True
                self._set_live(False)
                log.warning("trigger-kit %s: notifications unavailable, polling instead: %s", self.name, exc)
                with contextlib.suppress(Exception):
                    await self.disconnect()
                return
            except Exception as exc:
                failure = exc
            await self._failed(failure)

    async def _failed(self, exc: BaseException) -> None:
        """Log once per streak, count, fall back to polling, back off before reconnecting."""
        self.failures += 1
        metrics.incr("listener_failures", source=self.source_kind)
        was_live = self.live
        self._set_live(False)
        delay = self._backoff.next_delay()
        if not self._failing:
            self._failing = True
            log.warning(
                "trigger-kit %s: notifications failed, polling every poll_interval and reconnecting "
                "with backoff (next in %.1fs): %s: %s",
                self.name,
                delay,
                type(exc).__name__,
                exc,
            )
        with contextlib.suppress(Exception):
            await self.disconnect()
        if was_live:
            self.hint(None)  # poll now, then every poll_interval, until the listener is back
        await asyncio.sleep(delay)

    def connected(self) -> None:
        """Called by :meth:`listen` once it receives: the waiters poll once to catch up, then rarely."""
        self.connects += 1
        if self._failing:
            log.info("trigger-kit %s: notifications reconnected", self.name)
        self._failing = False
        self._backoff.reset()
        self._set_live(True)
        self.hint(None)

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            tags = {"source": self.source_kind, "listener": metrics.tag_value(self.name)}
            metrics.gauge("listener_up", 1.0 if live else 0.0, tags=tags)

    # -- hints -------------------------------------------------------------------------------------
    def hint(self, key: Hashable | None = None) -> None:
        """Something under ``key`` may have changed (``None``: anything): wake its waiters soon."""
        self.hints += 1
        self._pending.add(key)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(HINT_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        keys, self._pending = self._pending, set()
        if keys:
            self.flushes += 1
            metrics.incr("hints", source=self.source_kind)
            self.ticker.hint(lambda waiter: self.matches(waiter, keys))
