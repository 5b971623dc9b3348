"""A watch session: one trigger's subscription to the hub, with retries, logging and payloads.

Both delivery modes use it: a sensor-mode trigger waits for one batch, a watcher's producer for
one batch after another. The session owns what is per trigger — the backoff state, the log lines,
the metrics, the event payloads — and leaves what can be shared (listings, polls, connections) to
the hub.

Errors are classified (:mod:`airflow_trigger_kit.retry`): transient ones (network, throttling,
server restarts, an unreachable state store) are logged once per streak and retried with
exponential backoff and jitter; permanent ones (permission denied, not a directory, a missing
bucket or table, invalid configuration) are raised with a message naming the parameter.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from airflow_trigger_kit import metrics, telemetry
from airflow_trigger_kit.retry import Backoff, is_transient
from airflow_trigger_kit.settings import WatchSettings
from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError, Source


class Subscription(Protocol):
    """What a trigger holds of the hub while it runs (see :mod:`airflow_trigger_kit.hub`)."""

    @property
    def source(self) -> Source: ...

    async def next_batch(
        self,
        cursor: JSON | None,
        max_items: int,
        poll_interval: float,
        max_batch_items: int | None = None,
        on_poll: Callable[[float], None] | None = None,
        reconcile_interval: float | None = None,
    ) -> Batch:
        """Wait until the source reports items after ``cursor``; ``on_poll(seconds)`` after each
        successful poll made for this wait (not after failed polls, nor after ticks that had nothing
        new to compare). While the subscription's change notifications are live, polls that find
        nothing come every ``reconcile_interval`` instead of every ``poll_interval``."""

    async def baseline(self) -> JSON: ...

    def close(self) -> None: ...


class Watch(Protocol):
    """What a session needs of its trigger."""

    @property
    def source_kind(self) -> str: ...

    @property
    def settings(self) -> WatchSettings: ...

    @property
    def log(self) -> Any: ...

    async def subscribe(self) -> Subscription: ...

    def payload(
        self, source: Source, batch: Batch, cursor_from: JSON | None, commit: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...


class WatchSession:
    """One trigger's way to its data while it runs; created by :func:`open_session`."""

    def __init__(self, watch: Watch, subscription: Subscription) -> None:
        self.watch = watch
        self.settings = watch.settings
        self.subscription = subscription
        self.log = watch.log
        self.after_poll: Callable[[], None] | None = None
        """Called after each successful poll (a watcher's producer ends its failure streak there)."""

    @property
    def source(self) -> Source:
        return self.subscription.source

    @property
    def label(self) -> str:
        return f"{type(self.watch).__name__}({self.settings.namespace}/{self.settings.name}: {self.source.describe()})"

    async def baseline(self) -> JSON:
        """A cursor after everything that exists now (``start_from="now"``)."""
        return await self.subscription.baseline()

    async def next_batch(self, cursor: JSON | None) -> Batch:
        """Wait until the source reports items after ``cursor``; retry transient errors with backoff.

        A backlog is taken in large batches (up to ``backlog_max_items``, see
        :func:`~airflow_trigger_kit.sources.base.poll_batch`).

        Changes the source does not report (for example a modification when only ``created`` is
        watched) move the waiting cursor between polls; they are committed with the next batch.
        """
        settings = self.settings
        kind = self.watch.source_kind
        backoff = Backoff(settings.retry_base_seconds, settings.retry_max_seconds)
        failing_since: float | None = None
        while True:
            try:
                batch = await self.subscription.next_batch(
                    cursor,
                    settings.max_items,
                    settings.poll_interval,
                    settings.max_batch_items,
                    self._polled,
                    settings.reconcile_interval,
                )
            except Exception as exc:
                telemetry.poll_failed(self.watch, exc)
                metrics.incr("failures", source=kind)
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.log.warning(
                        "%s: transient error, retrying with backoff (next in %.1fs): %s: %s",
                        self.label,
                        delay,
                        type(exc).__name__,
                        exc,
                    )
                await asyncio.sleep(delay)
                continue
            if failing_since is not None:
                self.log.info(
                    "%s: recovered after %d retries (%.1fs)",
                    self.label,
                    backoff.attempts,
                    time.monotonic() - failing_since,
                )
            self._check_cursor_size(batch.cursor)
            return batch

    def _polled(self, seconds: float) -> None:
        """The hub did this watch's polling work (a query, a listing, a comparison) in ``seconds``."""
        telemetry.poll_finished(self.watch, seconds)
        if self.after_poll is not None:
            self.after_poll()

    def _check_cursor_size(self, cursor: JSON) -> None:
        size = len(json.dumps(cursor, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        limit = self.settings.max_cursor_bytes()
        if size > limit:
            raise PermanentSourceError(
                f"the cursor of watch namespace={self.settings.namespace!r} name={self.settings.name!r} would be "
                f"{size} bytes, over [trigger_kit] state_max_value_bytes={limit}; raise that limit or narrow the "
                "watch (see the cursor size notes in the docs of this watch type)"
            )

    def payload(self, batch: Batch, cursor_from: JSON | None, commit: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.watch.payload(self.source, batch, cursor_from, commit)


@asynccontextmanager
async def open_session(watch: Watch) -> AsyncIterator[WatchSession]:
    """Subscribe ``watch`` to its hub for as long as the block runs (returned, failed or cancelled)."""
    subscription = await watch.subscribe()
    try:
        yield WatchSession(watch, subscription)
    finally:
        subscription.close()
