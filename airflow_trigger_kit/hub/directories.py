"""The directory poller of a process: each directory listed once for every watch on it.

Design and invariants:

* **One thread, one cache.** Every directory watch of the process subscribes to one
  :class:`~airflow_trigger_kit.sources.directory.listing.DirectoryListings`. All work on it runs on
  the hub's single worker thread, in submission order, so the cache needs no lock and the event
  loop never waits for a lock or a file system. Subscribing and unsubscribing cost no hop: they
  are queued (a thread-safe deque) and applied by the next job on that thread, before it reads
  the cache.
* **One hop per tick.** A tick takes every due waiter, refreshes each directory they need once
  (a ``stat``; a listing only when the directory changed, has files still settling, or a watch of
  it needs fresh stats), and compares each waiter's cursor with the listings, all in one hop to
  that thread. An idle tick over N directories is N ``stat`` calls and one hop, whatever the
  number of waits.
* **Nothing new, nothing done.** A waiter is compared again only when its cursor moved, a listing
  it depends on changed generation, or it has files that were still settling; otherwise a tick
  only reschedules it. Waiters with the same configuration and equal cursors (many sensors of one
  DAG started from one baseline) are compared once per tick.
* **Each waiter keeps its own cursor**: detection is the pure
  :func:`~airflow_trigger_kit.sources.directory.detect.detect` of the source, so what a watch
  reports, its dedup ids and its cursor are exactly those of the watch polling on its own.
* **Quiet directories stay known** across the re-creation of a trigger in the same process: the
  cache keeps listings without subscribers (bounded, least recently used first out).
* **Change notifications** (:mod:`.inotify`, watches with ``notify=True``): one inotify instance
  and one kernel watch per directory, managed on the same worker thread inside the ticks (a
  directory is watched before it is listed); events wake the directory's waiters. A waiter whose
  directories are all watched polls every ``reconcile_interval``, and a waiter with files still
  settling is polled again when the first of them settles (``Waiter.next_at``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, TypeVar

from airflow_trigger_kit import metrics
from airflow_trigger_kit.hub.inotify import DirectoryListener, DirectoryLiveness, DirectoryWatches
from airflow_trigger_kit.hub.scheduling import Liveness, Ticker, Waiter
from airflow_trigger_kit.sources.base import JSON, Batch
from airflow_trigger_kit.sources.directory import (
    DirectoryListings,
    DirectorySource,
    DirectoryWatchConfig,
    FileFilter,
    Listing,
    ListingKey,
    baseline_cursor,
    check_cursor,
    detect,
    empty_cursor,
    verify_reported,
)

T = TypeVar("T")

_NOTHING_NEW = object()
CompareKey = tuple[DirectoryWatchConfig, tuple[int, ...], int, "int | None"]
"""Waits compared alike: configuration, listing generations, ``max_items``, ``max_batch_items``."""
MAX_SHARED_COMPARISONS = 4
"""Distinct cursors per configuration whose comparison a tick remembers for equal cursors."""
MAX_QUIET_RESULTS = 4096
"""Configurations whose "nothing new" comparisons are remembered across ticks (then forgotten)."""


def _quiet(result: Any) -> bool:
    """A comparison that found nothing and has nothing settling: true until a listing changes."""
    if not isinstance(result, tuple):
        return False
    batch: Batch = result[0]
    return not batch.items and not batch.stats.get("unsettled")


PENDING_DRAIN_AT = 256
"""Queued subscription changes that make the hub apply them without waiting for a tick."""
SETTLED_REPOLL_FLOOR = 0.05
"""Soonest re-poll (seconds) for files still settling, so a file written continuously costs a poll
per this much at most."""


class DirectoryHub:
    """Directory watches of one event loop (see the module docstring)."""

    def __init__(self) -> None:
        self.listings = DirectoryListings()
        self._pending: collections.deque[Callable[[], object]] = collections.deque()
        self._drain: asyncio.Task[None] | None = None
        self._quiet_results: dict[
            tuple[DirectoryWatchConfig, tuple[int, ...], int, int | None], list[tuple[JSON, Any]]
        ] = {}
        self.ticker = Ticker(self._tick, "directories")
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.hops = 0
        """Hops to the worker thread so far (ticks, subscriptions, baselines)."""
        self.watches = DirectoryWatches()
        """The kernel watches (worker thread only; see :mod:`.inotify`)."""
        self.listener = DirectoryListener(self)
        """Kernel change notifications for every watch with ``notify=True``."""
        self._notify_subscribers = 0
        self._settle: dict[str, collections.Counter[float]] = {}
        self._stopping: asyncio.Task[None] | None = None

    # -- the worker thread ---------------------------------------------------------------------------
    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the hub's thread, after the queued subscription changes."""
        self.hops += 1

        def job() -> T:
            while self._pending:
                self._pending.popleft()()
            return fn()

        return await asyncio.get_running_loop().run_in_executor(self._thread(), job)

    def _thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trigger-kit-directories")
        return self._executor

    # -- subscriptions -------------------------------------------------------------------------------
    def subscribe(self, config: DirectoryWatchConfig) -> DirectorySubscription:
        """Register a watch (applied on the hub's thread before its next job)."""
        keys = [ListingKey.of(config, d) for d in config.directories]

        def change() -> None:
            self.listings.subscribe(config)
            self.watches.subscribe(config, keys)

        self._queue(change)
        sub = DirectorySubscription(self, config, keys)
        if config.notify:
            for d in config.directories:
                self._settle.setdefault(d, collections.Counter())[config.settle_seconds] += 1
            self._notify_subscribers += 1
            if self._notify_subscribers == 1:
                self._start_listener()
            sub.listener = DirectoryLiveness(self.listener, self.watches, keys)
        return sub

    def unsubscribe(self, config: DirectoryWatchConfig) -> None:
        keys = [ListingKey.of(config, d) for d in config.directories]

        def change() -> None:
            self.listings.unsubscribe(config)
            self.watches.unsubscribe(config, keys)

        self._queue(change)
        if config.notify:
            for d in config.directories:
                settles = self._settle.get(d)
                if settles is not None:
                    settles[config.settle_seconds] -= 1
                    if settles[config.settle_seconds] <= 0:
                        del settles[config.settle_seconds]
                    if not settles:
                        del self._settle[d]
            self._notify_subscribers -= 1
            if self._notify_subscribers == 0:
                # The last watch with notifications ended: stop listening (the next one starts again).
                self._stopping = asyncio.get_running_loop().create_task(self.listener.stop())

    def _start_listener(self) -> None:
        stopping = self._stopping
        if stopping is not None and not stopping.done():
            # Still stopping from the last unsubscribe: start once that is done (start() would be a no-op now).
            stopping.add_done_callback(lambda _: self.listener.start() if self._notify_subscribers else None)
        else:
            self.listener.start()

    def settle_seconds_of(self, directory: str) -> float:
        """The smallest ``settle_seconds`` of the watches with notifications on ``directory``."""
        settles = self._settle.get(directory)
        return min(settles) if settles else 0.0

    def queue_change(self, change: Callable[[], object]) -> None:
        """Run ``change`` on the hub's thread before its next job (from the event loop)."""
        self._queue(change)

    def apply_soon(self, change: Callable[[], object]) -> None:
        """Run ``change`` on the hub's thread soon, even when no tick is coming."""
        self._queue(change)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_task(self.run(lambda: None))

    def _queue(self, change: Callable[[], object]) -> None:
        self._pending.append(change)
        if len(self._pending) >= PENDING_DRAIN_AT and (self._drain is None or self._drain.done()):
            # Nobody ticks (all waits ended at once, say): apply the changes now, in the background.
            self._drain = asyncio.get_running_loop().create_task(self.run(lambda: None))

    # -- ticks -----------------------------------------------------------------------------------------
    async def _tick(self, due: list[Waiter]) -> None:
        started = time.monotonic()
        rewatched: list[str] = []
        results = await self.run(lambda: self._tick_blocking(due, rewatched))
        seconds = time.monotonic() - started
        metrics.incr("polls", len(due), source="directory")
        ticker = self.ticker
        for directory in rewatched:
            self.listener.rewatched(directory)
        loop = asyncio.get_running_loop()
        for waiter, result in zip(due, results, strict=True):
            if waiter.future.done():
                continue
            if isinstance(result, BaseException):
                waiter.fail(result)  # not "polled": on_poll reports successful polls only
                continue
            if result is not _NOTHING_NEW:
                waiter.polled(seconds)
            if result is _NOTHING_NEW:
                ticker.reschedule(waiter)
            else:
                batch, generations = result
                if batch.items:
                    waiter.resolve(batch)
                    continue
                waiter.cursor = batch.cursor
                waiter.seen = generations
                waiter.unsettled = bool(batch.stats.get("unsettled"))
                settles_at_ns = int(batch.stats.get("settles_at_ns") or 0)  # type: ignore[call-overload]
                if waiter.unsettled and settles_at_ns and waiter.listener is not None and waiter.listener.live:
                    # Notified watches poll rarely: come back when the first settling file can be reported.
                    wait = max(SETTLED_REPOLL_FLOOR, (settles_at_ns - time.time_ns()) / 1e9)
                    waiter.next_at = loop.time() + wait
                ticker.reschedule(waiter)

    def _tick_blocking(self, due: list[Waiter], rewatched: list[str]) -> list[Any]:
        listings = self.listings
        watches = self.watches
        refreshed: dict[ListingKey, tuple[Listing, bool] | BaseException] = {}
        now = time.time_ns()
        results: list[Any] = []
        compared: dict[CompareKey, list[tuple[JSON, Any]]] = {}
        for waiter in due:
            sub: DirectorySubscription = waiter.owner
            for key in sub.keys:
                if key not in refreshed:
                    try:
                        notify = watches.wants(key)
                        if notify:
                            watches.before_listing(key)
                        refreshed[key] = result = listings.refresh(key, now)
                        if notify and watches.after_listing(key, result[0]):
                            rewatched.append(key.directory)
                    except Exception as exc:
                        refreshed[key] = exc
            failed = next((r for k in sub.keys if isinstance(r := refreshed[k], BaseException)), None)
            if failed is not None:
                results.append(failed)
                continue
            generations = tuple(refreshed[k][0].generation for k in sub.keys)  # type: ignore[index]
            if waiter.seen == generations and not waiter.unsettled:
                results.append(_NOTHING_NEW)
                continue
            # Waits with the same configuration and an equal cursor (the sensors of one DAG, started
            # from one baseline) get the same result: compare once, reuse it for the others. A result
            # that found nothing, with nothing settling, stays true until a listing changes, so it is
            # kept across ticks (keyed by the listings' generations).
            memo_key = (sub.config, generations, waiter.max_items, waiter.max_batch_items)
            same = compared.get(memo_key) or self._quiet_results.get(memo_key) or []
            found = next((r for c, r in same if c is waiter.cursor or c == waiter.cursor), None)
            if found is None:
                try:
                    found = self._compare(sub, waiter, refreshed, now)  # type: ignore[arg-type]
                except Exception as exc:
                    found = exc
                shared = compared.setdefault(memo_key, [])
                if len(shared) < MAX_SHARED_COMPARISONS:
                    shared.append((waiter.cursor, found))
                remembered = self._quiet_results.setdefault(memo_key, [])
                if _quiet(found) and len(remembered) < MAX_SHARED_COMPARISONS:
                    remembered.append((waiter.cursor, found))
            results.append(found)
        if len(self._quiet_results) > MAX_QUIET_RESULTS:
            self._quiet_results.clear()
        return results

    def _compare(
        self, sub: DirectorySubscription, waiter: Waiter, refreshed: dict[ListingKey, tuple[Listing, bool]], now: int
    ) -> tuple[Batch, tuple[int, ...]]:
        cursor = check_cursor(sub.config, waiter.cursor) if waiter.cursor is not None else empty_cursor(sub.config)
        for _ in range(3):
            reused = {k.directory: refreshed[k][0] for k in sub.keys if not refreshed[k][1]}
            scans = [refreshed[k][0].view(sub.filter) for k in sub.keys]
            batch = detect(sub.config, cursor, scans, waiter.max_items, now_ns=now)
            if batch.more and (waiter.max_batch_items or 0) > waiter.max_items:
                # A backlog: take it in one large batch (the same comparison, a larger limit).
                batch = detect(sub.config, cursor, scans, waiter.max_batch_items or 0, now_ns=now)
            if verify_reported(self.listings, batch, reused):
                return batch, tuple(refreshed[k][0].generation for k in sub.keys)
            # A reported file changed since its (reused) listing: list those directories again.
            for key in sub.keys:
                if not refreshed[key][1]:
                    refreshed[key] = self.listings.refresh(key, now)
        return Batch([], waiter.cursor), ()  # still changing: compare again next tick


class DirectorySubscription:
    """One directory watch's subscription: its waits go through the hub's ticks."""

    def __init__(self, hub: DirectoryHub, config: DirectoryWatchConfig, keys: list[ListingKey]) -> None:
        self.hub = hub
        self.config = config
        self.keys = keys
        self.filter = FileFilter.of(config)
        self.closed = False
        self.source = DirectorySource(config)  # describe/describe_cursor; never polled
        self.listener: Liveness | None = None
        """The change-notification listener that hints this subscription's waiters, if any."""

    async def next_batch(
        self,
        cursor: JSON | None,
        max_items: int,
        poll_interval: float,
        max_batch_items: int | None = None,
        on_poll: Callable[[float], None] | None = None,
        reconcile_interval: float | None = None,
    ) -> Batch:
        """Wait until the directories hold items after ``cursor``; the batch that covers them."""
        future = asyncio.get_running_loop().create_future()
        waiter = Waiter(
            cursor, max_items, poll_interval, future, self, max_batch_items=max_batch_items, on_poll=on_poll
        )
        waiter.listener = self.listener
        waiter.reconcile = reconcile_interval or poll_interval
        return await self.hub.ticker.wait(waiter)

    async def baseline(self) -> JSON:
        """A cursor after everything that exists and has settled now (from fresh listings)."""

        return await self.hub.run(lambda: baseline_cursor(self.config, self.hub.listings, self.keys))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.unsubscribe(self.config)
