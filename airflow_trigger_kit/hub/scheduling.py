"""Waiters and ticks: when a shared poller runs, and for which waiting triggers.

A :class:`Waiter` is one trigger waiting for its next batch from a cursor. A :class:`Ticker` runs
its poller's ``tick`` for every waiter that is due, from one task that exists only while someone
waits. Design:

* **Aligned ticks.** After a poll that found nothing, a waiter is due again at the next multiple
  of its ``poll_interval`` on the loop's clock. Waiters with the same interval are therefore due
  together, whenever they started, and share one tick (one thread hop, one query per distinct
  cursor); waiters with intervals that divide each other meet at the longer one.
* **First polls are gathered.** A waiter that just arrived is due after :data:`GATHER_SECONDS`,
  so the hundreds of triggers a triggerer starts at once share their first tick too.
* **Busy waiters are skipped.** A poller that polls in the background marks its waiters busy and
  reschedules them when the poll ends; a waiter is never in two polls at once.
* **Hints wake early** (:meth:`Ticker.hint`, from :mod:`.notifications`): a hinted waiter is due
  at once; one in a poll is polled once more right after it. While a waiter's listener is live,
  its regular polls come every ``reconcile`` seconds instead of every ``interval``.
* **Nothing leaks.** A waiter leaves the ticker when its wait ends (a batch, an error, a cancelled
  trigger); the ticker's task ends when no waiter is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from airflow_trigger_kit.sources.base import JSON, Batch

log = logging.getLogger(__name__)

GATHER_SECONDS = 0.02
"""How long a newly arrived waiter waits for others to share its first poll."""
HINT_DELAY = 0.01
"""Seconds a hint waits for others before it wakes its waiters (one poll for a burst)."""


class Liveness(Protocol):
    """What a waiter knows of its notification listener: whether it is live now."""

    @property
    def live(self) -> bool: ...


@dataclass(eq=False, slots=True)
class Waiter:
    """One trigger waiting for items after ``cursor``; resolved through ``future``.

    Slots, no per-waiter dicts or callbacks: a triggerer holds one waiter per waiting trigger.
    """

    cursor: JSON
    max_items: int
    interval: float
    future: asyncio.Future[Batch]
    owner: Any
    """The subscription or channel the waiter belongs to (its poller reads it)."""
    cursor_key: str | None = None
    """The cursor's canonical text, where a poller groups waiters by cursor."""
    max_batch_items: int | None = None
    """Most items while a backlog drains (``None``: ``max_items``)."""
    on_poll: Callable[[float], None] | None = None
    """Told how long each poll made for this waiter took (a per-watch metric)."""
    due: float = 0.0
    busy: bool = False
    seen: tuple[int, ...] | None = None
    """What the waiter was last compared with (a poller's notion: listing generations)."""
    unsettled: bool = False
    listener: Liveness | None = None
    """The notification listener that hints this waiter, if any (:mod:`.notifications`)."""
    reconcile: float = 60.0
    """Seconds between regular polls while ``listener`` is live (``reconcile_interval``)."""
    hinted: bool = False
    """A hint arrived while the waiter was in a poll: poll again right after it."""
    woken_at: float | None = None
    """Loop time of the hint that made the waiter due (a poller must not answer it with a poll
    that started before)."""
    next_at: float | None = None
    """Set by a poller: poll again no later than this loop time (files that settle then, say)."""

    def regular_interval(self) -> float:
        """Seconds between polls that found nothing: ``reconcile`` while the listener is live."""
        if self.listener is not None and self.listener.live:
            return self.reconcile
        return self.interval

    def polled(self, seconds: float) -> None:
        if self.on_poll is not None:
            self.on_poll(seconds)

    def resolve(self, batch: Batch) -> None:
        if not self.future.done():
            self.future.set_result(batch)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Ticker:
    """Calls ``tick(due_waiters)`` whenever waiters are due (see the module docstring)."""

    def __init__(self, tick: Callable[[list[Waiter]], Awaitable[None]], name: str) -> None:
        self._tick = tick
        self._name = name
        self._waiters: set[Waiter] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        """Ticks completed so far."""
        self.hints = 0
        """Hint flushes that made at least one waiter due early."""
        self.observers: list[Callable[[], None]] = []
        """Called right after each tick (tests and benchmarks read exact per-tick counts there)."""

    def __len__(self) -> int:
        return len(self._waiters)

    def waiters(self) -> list[Waiter]:
        """The waiters now registered (a snapshot, for tests and benchmarks)."""
        return list(self._waiters)

    async def wait(self, waiter: Waiter) -> Batch:
        """Register ``waiter`` and wait for its batch; it leaves the ticker however the wait ends."""
        loop = asyncio.get_running_loop()
        waiter.due = loop.time() + GATHER_SECONDS
        waiter.busy = False
        self._waiters.add(waiter)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=f"trigger-kit {self._name} ticker")
        try:
            return await waiter.future
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            self._waiters.discard(waiter)
            self._wake.set()  # lets the ticker's task end when it was the last one

    def reschedule(self, waiter: Waiter, *, at_once: bool = False) -> None:
        """Make ``waiter`` due at its next aligned tick (or at once, when it has more to fetch).

        Sooner when a hint arrived during its poll, or when its poller asked for ``next_at``.
        """
        now = asyncio.get_running_loop().time()
        waiter.busy = False
        interval = waiter.regular_interval()
        due = now if at_once else (math.floor(now / interval) + 1) * interval
        waiter.woken_at = None
        if waiter.hinted:
            waiter.hinted = False
            due = min(due, now + HINT_DELAY)
        if waiter.next_at is not None:
            due = min(due, max(now, waiter.next_at))
            waiter.next_at = None
        waiter.due = due
        self._wake.set()

    def hint(self, wanted: Callable[[Waiter], bool]) -> int:
        """Make every waiter ``wanted`` selects due now (one in a poll: right after it); how many."""
        now = asyncio.get_running_loop().time()
        woken = 0
        for waiter in self._waiters:
            if waiter.future.done() or not wanted(waiter):
                continue
            woken += 1
            if waiter.busy:
                waiter.hinted = True
            else:
                waiter.woken_at = now
                waiter.due = min(waiter.due, now)
        if woken:
            self.hints += 1
            self._wake.set()
        return woken

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            now = loop.time()
            # A waiter whose future just ended leaves the set by its done callback, soon; skip it now.
            next_due = min((w.due for w in self._waiters if not w.busy and not w.future.done()), default=None)
            if next_due is None or next_due > now:
                self._wake.clear()
                timeout = None if next_due is None else next_due - now
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            due = [w for w in self._waiters if not w.busy and w.due <= now and not w.future.done()]
            if not due:
                continue
            for w in due:
                w.busy = True
            try:
                await self._tick(due)
            except Exception as exc:  # a bug in a poller must not strand its waiters
                log.exception("trigger-kit %s tick failed", self._name)
                for w in due:
                    w.fail(exc)
            self.ticks += 1
            for observe in self.observers:
                observe()
