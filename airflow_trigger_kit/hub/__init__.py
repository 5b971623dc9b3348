"""The hub: per-process sharing of the work behind every wait, between ``triggers/`` and ``sources/``.

A triggerer runs hundreds of this package's triggers in one event loop. Left alone, each would
scan, list or connect on its own, so the cost would grow with the number of waits. Instead every
trigger subscribes to the hub of its event loop by its *source identity* — the source kind and
configuration, without the cursor and without the watch's namespace/name — and the hub does the
work once per identity and tick, then fans the result out:

* :mod:`.directories` — one listing cache and one worker thread for every directory watch: each
  directory ``stat``-ed at most once per tick and listed at most once per change, whatever the
  number of waits on it; an idle tick over N directories is one hop to that thread.
* :mod:`.channels` — S3 and Postgres watches with an equal identity share one source object, and
  their polls at the same cursor are one poll.
* :mod:`.postgres_pools` — one bounded asyncpg pool per Postgres connection and process (plus,
  for watches with ``notify_channel``, one listening connection whose notifications hint them).
* S3 watches that list whole prefixes share those listings too, whatever their cursors
  (:mod:`airflow_trigger_kit.sources.s3.listing_cache`; one cache per hub).
* S3 watches with ``sqs_queue_url`` share one SQS listener per queue and connection, whose
  messages wake their channels (:mod:`.sqs`).
* :mod:`.scheduling` — waiters and aligned ticks.
* :mod:`.streaks` — each watcher's streak of failures, which outlives the re-creation of its
  trigger (read by :mod:`airflow_trigger_kit.triggers.restart_backoff`).

Invariants (what the rest of the package relies on):

1. **Each subscriber keeps its own cursor.** The hub shares *observations* (listings, query
   results at one cursor), never progress: what a trigger reports, its dedup ids and its cursor
   are those it would have got polling alone, so the delivery guarantees of ``docs/delivery.md``
   hold unchanged. Watchers still commit only in ``advance``; sensors still never write state.
2. **Subscriptions end with their trigger** — when it returns, fails or is cancelled — and leave
   nothing behind but bounded caches (see each module).
3. **Sources stay pure.** The hub schedules and shares; detection is the sources' own code.
4. **One hub per event loop**, created on first use (:func:`get_hub`), so tests and ``dag.test()``
   runs, each in its own loop, never share state.
"""

from __future__ import annotations

import asyncio
import weakref

from airflow_trigger_kit.hub.channels import ChannelHub, ChannelSubscription
from airflow_trigger_kit.hub.directories import DirectoryHub, DirectorySubscription
from airflow_trigger_kit.hub.postgres_pools import DEFAULT_POOL_SIZE, PooledConnector, PostgresPools
from airflow_trigger_kit.hub.sqs import SqsListeners
from airflow_trigger_kit.hub.streaks import FailureStreaks
from airflow_trigger_kit.sources.s3.listing_cache import ListingCache


def _pool_size() -> int:
    from airflow_trigger_kit.config import postgres_pool_size

    return postgres_pool_size()


class Hub:
    """The shared pollers and pools of one event loop."""

    def __init__(self) -> None:
        self.directories = DirectoryHub()
        self.channels = ChannelHub()
        self.postgres_pools = PostgresPools(_pool_size)
        self.failure_streaks = FailureStreaks()
        self.s3_listings = ListingCache()
        self.sqs_listeners = SqsListeners(self.channels.ticker, self.s3_listings)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub


__all__ = [
    "DEFAULT_POOL_SIZE",
    "ChannelHub",
    "ChannelSubscription",
    "DirectoryHub",
    "DirectorySubscription",
    "FailureStreaks",
    "Hub",
    "PooledConnector",
    "PostgresPools",
    "get_hub",
]
