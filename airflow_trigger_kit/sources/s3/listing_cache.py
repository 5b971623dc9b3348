"""Full listings of a prefix, shared by every watch of a process that lists it at about the same time.

The ``window`` and ``snapshot`` layouts list a prefix from its start on every poll, whatever their
cursor: the requests are the same for every watch of that prefix, only what each keeps differs. So
watches polled in the same tick (the hub aligns them) share one listing chain per prefix:

* a listing is reused by polls that *start* within :data:`SHARE_SECONDS` of it — a poll never
  sees a listing older than that, so sharing delays a new object by at most that much, and the
  cursor of each watch only moves past what its own (shared) listing showed: nothing is skipped;
* polls that arrive while the listing is running wait for it (single flight);
* a failed listing fails every poll that shared it, as it would have failed each of them;
* the shared listing keeps every object; each watch filters it with its own rules (prefix
  floors, globs, ``min_size``) afterwards.

A change notification (:mod:`airflow_trigger_kit.hub.sqs`) *forgets* the listings
of the prefixes it concerns (:meth:`ListingCache.forget`): the poll it wakes must list after the
notification, not share a listing made before the object landed.

The ``lexicographic`` layout lists from its own ``StartAfter`` key and does not share (watches at
an equal cursor still share their whole poll in the hub).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from airflow_trigger_kit.sources.s3.listing import PrefixListing

SHARE_SECONDS = 0.5
"""How recent a listing must be to be shared by a poll that starts now (seconds)."""


@dataclass
class _Entry:
    started: float
    task: asyncio.Task[PrefixListing]


class ListingCache:
    """The shared listings of one event loop, by ``(connection, bucket, prefix)``."""

    def __init__(self, share_seconds: float = SHARE_SECONDS) -> None:
        self.share_seconds = share_seconds
        self._entries: dict[Hashable, _Entry] = {}
        self.fetches = 0
        """Listing chains actually made (for tests and benchmarks)."""
        self.shared = 0
        """Polls that used a listing another poll made."""

    async def listing(self, key: Hashable, fetch: Callable[[], Awaitable[PrefixListing]]) -> PrefixListing:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for stale in [k for k, e in self._entries.items() if e.task.done() and e.started < now - self.share_seconds]:
            del self._entries[stale]
        entry = self._entries.get(key)
        if entry is not None and entry.started >= now - self.share_seconds:
            self.shared += 1
        else:
            self.fetches += 1
            task = loop.create_task(_run(fetch))
            task.add_done_callback(_retrieve)  # every poll that shared it may be gone by now
            entry = self._entries[key] = _Entry(now, task)
        # Shielded: a poll that is cancelled does not cancel the listing the others wait for.
        return await asyncio.shield(entry.task)

    def forget(self, concerns: Callable[[Hashable], bool] | None = None) -> None:
        """Share no listing made so far whose key ``concerns`` selects (``None``: any) with later polls.

        Polls already waiting for such a listing still get it; a poll that starts now lists anew.
        """
        for key in [k for k in self._entries if concerns is None or concerns(k)]:
            del self._entries[key]


def _retrieve(task: asyncio.Task[PrefixListing]) -> None:
    if not task.cancelled():
        task.exception()


async def _run(fetch: Callable[[], Awaitable[PrefixListing]]) -> PrefixListing:
    return await fetch()
