"""The listener: the event loop's side of inotify, turning kernel events into hints for the waiters.

It reads the descriptor :mod:`.watches` opened (from the loop's reader, never blocking), maps each
event to the watched directories it concerns, holds file events back until their directory has
settled, and hints the waiters, which then poll; structural events hint at once. It also says when
a directory waiter may poll only every ``reconcile_interval`` (:class:`DirectoryLiveness`). It owns
no kernel watch: changes to them are queued for the hub's worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from airflow_trigger_kit.hub.inotify.watches import DirectoryWatches, open_inotify
from airflow_trigger_kit.hub.notifications import Listener
from airflow_trigger_kit.hub.scheduling import Ticker, Waiter
from airflow_trigger_kit.sources.directory import DirectoryListings, DirectoryWatchConfig, ListingKey

if TYPE_CHECKING:
    from asyncinotify import Inotify

SETTLE_MARGIN_SECONDS = 0.005
"""Added to a settle timer, so the poll it causes finds the file settled (clocks differ slightly)."""
MAX_DEFER_FACTOR = 2.0
"""A busy directory is hinted at most this many ``settle_seconds`` after the first event of a burst."""
EVENTS_PER_CALLBACK = 2048
"""Events handled per reader callback before yielding to the rest of the event loop."""


def _matches(waiter: Waiter, keys: set[Hashable | None]) -> bool:
    config: DirectoryWatchConfig = waiter.owner.config
    return config.notify and (None in keys or any(d in keys for d in config.directories))


class DirectoryLiveness:
    """What a directory waiter knows of notifications: live while every directory of it is watched."""

    __slots__ = ("keys", "listener", "watches")

    def __init__(self, listener: DirectoryListener, watches: DirectoryWatches, keys: list[ListingKey]) -> None:
        self.listener = listener
        self.watches = watches
        self.keys = keys

    @property
    def live(self) -> bool:
        return self.listener.live and self.watches.covers(self.keys)


class DirectoryHub(Protocol):
    """What the listener uses of :class:`~airflow_trigger_kit.hub.directories.DirectoryHub`."""

    ticker: Ticker
    listings: DirectoryListings
    watches: DirectoryWatches

    def apply_soon(self, change: Callable[[], object]) -> None: ...

    def queue_change(self, change: Callable[[], object]) -> None: ...

    def settle_seconds_of(self, directory: str) -> float: ...


class DirectoryListener(Listener):
    """The hub's inotify instance: events become hints for the watched directories they concern."""

    source_kind = "directory"

    def __init__(self, hub: DirectoryHub) -> None:
        super().__init__("directories (inotify)", hub.ticker, _matches)
        self.directory_hub = hub
        self.watches = hub.watches
        self.events = 0
        """Kernel events read (tests read it)."""
        self.deaf = False
        """While ``True``, events are read and discarded: a seam for drills and tests of lost events."""
        self._inotify: Inotify | None = None
        self._closed: asyncio.Future[None] | None = None
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._stale_queued: set[str] = set()

    @property
    def fd(self) -> int | None:
        """The inotify file descriptor while connected (tests count its watches in ``/proc``)."""
        return self._inotify.fd if self._inotify is not None else None

    # -- the channel ---------------------------------------------------------------------------------
    async def listen(self) -> None:
        inotify = open_inotify()
        loop = asyncio.get_running_loop()
        self._inotify = inotify
        self._closed = closed = loop.create_future()
        self.directory_hub.apply_soon(lambda: self.watches.attach(inotify))
        loop.add_reader(inotify.fd, self._drain)
        self.connected()
        await closed

    async def disconnect(self) -> None:
        inotify, self._inotify = self._inotify, None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._first.clear()
        self._last.clear()
        if inotify is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(inotify.fd)
            # Closed on the worker thread, after its watches are forgotten there (never under an add).
            self.directory_hub.apply_soon(lambda: self.watches.detach(inotify))

    def fail(self, exc: BaseException) -> None:
        """Make the channel fail now with ``exc``, as a broken descriptor would (drills and tests)."""
        if self._closed is not None and not self._closed.done():
            self._closed.set_exception(exc)

    # -- events --------------------------------------------------------------------------------------
    def _drain(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        from asyncinotify import Mask

        handled = 0
        while handled < EVENTS_PER_CALLBACK:
            try:
                event = inotify.sync_get()
            except BlockingIOError:
                return
            except Exception as exc:  # a broken descriptor (EBADF, ...): fall back to polling, reconnect
                self.fail(exc)
                return
            if event is None:
                return
            handled += 1
            self.events += 1
            if self.deaf:
                continue
            self._event(event, Mask)
        asyncio.get_running_loop().call_soon(self._drain)  # more may be buffered: after the others

    def _event(self, event: Any, mask_type: Any) -> None:
        mask = event.mask
        if mask & mask_type.Q_OVERFLOW:
            self._wake(None)  # events were lost: everyone polls
            return
        watch = event.watch
        if watch is None:
            return  # a watch forgotten meanwhile (or being added: that poll follows anyway)
        wd = watch.wd
        roots = self.watches.roots_by_wd.get(wd, frozenset())
        if mask & (mask_type.IGNORED | mask_type.DELETE_SELF | mask_type.MOVE_SELF | mask_type.UNMOUNT):
            # The directory went away (or moved: its watch would follow it elsewhere). Forget the watch;
            # the poll finds the directory missing and watches it again once it reappears.
            if mask & mask_type.MOVE_SELF:
                self.directory_hub.apply_soon(lambda: self.watches.drop(wd))
            elif mask & mask_type.IGNORED:
                self.directory_hub.apply_soon(lambda: self.watches.forget(wd))
            for root in roots:
                self._wake(root)
            return
        if mask & mask_type.ISDIR:
            for root in roots:  # a subdirectory came or went: a recursive watch adds or drops its watch
                self._wake(root)
            return
        for root in roots:
            self._changed(root)

    def _changed(self, directory: str) -> None:
        """A file changed in ``directory``: hint once it has been quiet for its settle time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last[directory] = now
        if directory in self._timers:
            return
        settle = self.directory_hub.settle_seconds_of(directory)
        if settle <= 0:
            self._wake(directory)
            return
        self._first[directory] = now
        self._timers[directory] = loop.call_at(now + settle + SETTLE_MARGIN_SECONDS, self._settled, directory)

    def _settled(self, directory: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        settle = self.directory_hub.settle_seconds_of(directory)
        due = (
            min(self._last.get(directory, now) + settle, self._first.get(directory, now) + MAX_DEFER_FACTOR * settle)
            + SETTLE_MARGIN_SECONDS
        )
        if due > now + 0.001:
            self._timers[directory] = loop.call_at(due, self._settled, directory)
            return
        self._timers.pop(directory, None)
        self._first.pop(directory, None)
        self._last.pop(directory, None)
        self._wake(directory)

    def rewatched(self, directory: str) -> None:
        """A watch was added after a listing of ``directory``: poll it once more (see the package docstring)."""
        self._wake(directory)

    def _wake(self, directory: str | None) -> None:
        if directory is not None and directory not in self._stale_queued:
            self._stale_queued.add(directory)
            listings = self.directory_hub.listings

            def stale() -> None:
                self._stale_queued.discard(directory)
                listings.invalidate_directory(directory)

            self.directory_hub.queue_change(stale)
        self.hint(directory)
