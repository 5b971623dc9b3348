"""Shared sources for S3 and Postgres watches: one source per identity, one poll per cursor.

Design and invariants:

* **Identity.** Watches whose source identity is equal (the source kind and every source
  parameter, connection id included; not the watch's namespace/name and not its cursor) share
  one :class:`Channel`: one source object, so one S3 client or one Postgres catalog inspection,
  and for Postgres the process's connection pool behind it.
* **Coalescing.** On each tick, the due waiters of a channel are grouped by ``(cursor, max_items)``
  (the cursor compared by its canonical JSON); each group costs one ``poll``, whose batch every
  waiter of the group receives. A group whose poll is already running is joined, not repeated;
  a waiter woken by a hint after that poll began is polled once more right after it (the running
  poll may predate the change the hint announced).
  Since :meth:`Source.poll` is a pure function of the cursor and the data, each waiter gets
  exactly the items and dedup ids it would have got polling alone.
* **Background polls.** Polls run as tasks; the ticker never waits for one, so a slow listing on
  one channel delays no other. A waiter is in at most one poll at a time.
* **Checks that come due.** A batch whose stats say ``checks_pending`` (a Postgres ``lookback``
  window holding rows) makes its waiters poll again within ``poll_interval`` even while
  notifications are live: those checks find late commits on a schedule, not on a notification.
* **Errors reach the waiters of the failed poll only**; each trigger classifies and retries them
  with its own backoff, as it would alone.
* **Lifetime.** The channel's source is created by its first subscriber and closed when its last
  subscriber leaves.
* **Handover.** Once a poll's outcome reached its waiters (a batch resolved them, or they were
  rescheduled with nothing new, or the error failed them), :attr:`Channel.handed_over` is told
  which waiters and when the poll was started (``None``: it failed); S3 change notifications
  delete their SQS messages only then (:mod:`airflow_trigger_kit.hub.sqs`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Hashable

from airflow_trigger_kit import metrics
from airflow_trigger_kit.hub.scheduling import Liveness, Ticker, Waiter
from airflow_trigger_kit.sources.base import JSON, Batch, Source, poll_batch

log = logging.getLogger(__name__)

MAX_POLLS_PER_CHANNEL = 8
"""Distinct cursors of one channel polled at the same time (the rest wait for the next slot)."""


def cursor_key(cursor: JSON) -> str:
    """The canonical text of a cursor: equal cursors, equal keys."""
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"), default=str)


class Channel:
    """One shared source and the polls made through it."""

    def __init__(self, identity: Hashable, source: Source) -> None:
        self.identity = identity
        self.source = source
        self.subscribers = 0
        self.polls = 0
        """Polls made through this channel (for tests and benchmarks)."""
        self.running: dict[tuple[str, int, int], asyncio.Task[tuple[Batch, float]]] = {}
        self.slots = asyncio.Semaphore(MAX_POLLS_PER_CHANNEL)
        self.listener: Liveness | None = None
        """The change-notification listener that hints this channel's waiters, if any."""
        self.handed_over: Callable[[list[Waiter], float | None], None] | None = None
        """Told after each poll's outcome reached its waiters: them, and the loop time the poll was
        started (``None``: the poll failed or was cancelled)."""
        self.started: dict[tuple[str, int, int], float] = {}
        """Loop time each running poll was started, by the key of :attr:`running`."""


class ChannelHub:
    """Every shared-source channel of one event loop (see the module docstring)."""

    def __init__(self) -> None:
        self.channels: dict[Hashable, Channel] = {}
        self.ticker = Ticker(self._tick, "channels")
        self._closing: set[asyncio.Task[None]] = set()

    def subscribe(self, identity: Hashable, make_source: Callable[[], Source]) -> ChannelSubscription:
        channel = self.channels.get(identity)
        if channel is None:
            channel = self.channels[identity] = Channel(identity, make_source())
        channel.subscribers += 1
        return ChannelSubscription(self, channel)

    def _release(self, channel: Channel) -> None:
        channel.subscribers -= 1
        if channel.subscribers > 0 or self.channels.get(channel.identity) is not channel:
            return
        del self.channels[channel.identity]
        for task in channel.running.values():
            task.cancel()
        closing = asyncio.get_running_loop().create_task(_close_quietly(channel.source))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _tick(self, due: list[Waiter]) -> None:
        groups: dict[tuple[Channel, str, int, int], list[Waiter]] = {}
        for waiter in due:
            channel: Channel = waiter.owner
            limits = (waiter.max_items, waiter.max_batch_items or waiter.max_items)
            groups.setdefault((channel, waiter.cursor_key or "", *limits), []).append(waiter)
        for (channel, key, max_items, max_batch_items), waiters in groups.items():
            poll_key = (key, max_items, max_batch_items)
            task = channel.running.get(poll_key)
            if task is None:
                poll = self._poll(channel, waiters[0].cursor, max_items, max_batch_items)
                loop = asyncio.get_running_loop()
                task = loop.create_task(poll)
                channel.running[poll_key] = task
                channel.started[poll_key] = loop.time()
                task.add_done_callback(functools.partial(_forget, channel, poll_key))
            started = channel.started[poll_key]
            for waiter in waiters:
                if waiter.woken_at is not None and waiter.woken_at > started:
                    # Woken by a hint after this poll began: its result may predate the change.
                    waiter.hinted = True
            task.add_done_callback(functools.partial(self._deliver, waiters=waiters, started=started))

    async def _poll(self, channel: Channel, cursor: JSON, max_items: int, max_batch_items: int) -> tuple[Batch, float]:
        async with channel.slots:
            channel.polls += 1
            metrics.incr("polls", source=channel.source.kind)
            started = time.monotonic()
            batch = await poll_batch(channel.source, cursor, max_items, max_batch_items)
            return batch, time.monotonic() - started

    def _deliver(self, task: asyncio.Task[tuple[Batch, float]], *, waiters: list[Waiter], started: float) -> None:
        self._hand_over(task, waiters)
        handed_over = waiters[0].owner.handed_over if waiters else None
        if handed_over is not None:
            handed_over(waiters, None if task.cancelled() or task.exception() is not None else started)

    def _hand_over(self, task: asyncio.Task[tuple[Batch, float]], waiters: list[Waiter]) -> None:
        if task.cancelled():
            for waiter in waiters:
                waiter.fail(asyncio.CancelledError())
            return
        exc = task.exception()
        batch, seconds = (None, 0.0) if exc is not None else task.result()
        for waiter in waiters:
            if waiter.future.done():
                continue
            if batch is not None:
                waiter.polled(seconds)
            if exc is not None:
                waiter.fail(exc)
            elif batch is not None and batch.items:
                waiter.resolve(batch)
            elif batch is not None:
                if batch.cursor != waiter.cursor:
                    waiter.cursor = batch.cursor
                    waiter.cursor_key = cursor_key(batch.cursor)
                if batch.stats.get("checks_pending"):
                    # The source has checks that come due with time (a late-commit window), which no
                    # notification announces: poll at poll_interval even while notifications are live.
                    now = asyncio.get_running_loop().time()
                    waiter.next_at = (math.floor(now / waiter.interval) + 1) * waiter.interval  # aligned
                self.ticker.reschedule(waiter)


class ChannelSubscription:
    """One watch's share of a channel: its waits are polled with everyone else's."""

    def __init__(self, hub: ChannelHub, channel: Channel) -> None:
        self.hub = hub
        self.channel = channel
        self.closed = False
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, release: Callable[[], None]) -> None:
        """Also run ``release`` when the subscription closes (a notification listener's share of it)."""
        self._on_close.append(release)

    @property
    def source(self) -> Source:
        return self.channel.source

    async def next_batch(
        self,
        cursor: JSON | None,
        max_items: int,
        poll_interval: float,
        max_batch_items: int | None = None,
        on_poll: Callable[[float], None] | None = None,
        reconcile_interval: float | None = None,
    ) -> Batch:
        """Wait until the source reports items after ``cursor``; the batch that covers them."""
        future = asyncio.get_running_loop().create_future()
        waiter = Waiter(
            cursor, max_items, poll_interval, future, self.channel, cursor_key(cursor), max_batch_items, on_poll
        )
        waiter.listener = self.channel.listener
        waiter.reconcile = reconcile_interval or poll_interval
        return await self.hub.ticker.wait(waiter)

    async def baseline(self) -> JSON:
        return await self.channel.source.baseline()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for release in self._on_close:
                release()
            self.hub._release(self.channel)


def _forget(channel: Channel, key: tuple[str, int, int], _: asyncio.Task[tuple[Batch, float]]) -> None:
    channel.running.pop(key, None)
    channel.started.pop(key, None)


async def _close_quietly(source: Source) -> None:
    try:
        await source.aclose()
    except Exception:
        log.warning("closing %s failed", source.describe(), exc_info=True)
