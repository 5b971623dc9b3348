"""One trigger base over every source, in two delivery modes.

``mode="sensor"`` (a deferred sensor): the trigger starts from the cursor the sensor gave it, polls
until the source reports items, yields one event that carries the new cursor, and returns. It never
writes state: the sensor commits on the worker (``execute_complete``) with compare-and-set against
the version it started from.

``mode="watcher"`` (an ``AssetWatcher``): the trigger runs forever through Airflow 3.3's shared
stream in *ack mode*. :class:`~airflow_trigger_kit.triggers.delivery.WatermarkProducer` polls the
source and yields each batch; Airflow calls its ``advance()`` only once the trigger event derived
from that batch was stored in the metadata database, and only then is the watermark committed.
See :mod:`airflow_trigger_kit.triggers.delivery` for the invariants.

Errors are classified (:mod:`airflow_trigger_kit.retry`): transient ones (network, throttling,
server restarts, an unreachable state store) are logged once per streak and retried with
exponential backoff and jitter; permanent ones (permission denied, not a directory, a missing
bucket or table, invalid configuration) fail loudly with a message naming the parameter. Nothing
here blocks the event loop: sources do their blocking work in threads or with async clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_trigger_kit import metrics, telemetry
from airflow_trigger_kit.payload import CURSOR_KEY, build_payload, error_payload
from airflow_trigger_kit.retry import Backoff, is_transient
from airflow_trigger_kit.settings import WatchSettings
from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError, Source

if TYPE_CHECKING:
    from airflow.triggers.shared_stream import SharedStreamProducer


class IncrementalTrigger(BaseEventTrigger):
    """Base of every watch trigger: common settings plus source-specific kwargs.

    Subclasses set :attr:`source_kind`, validate their own parameters in ``__init__`` (so bad input
    fails at DAG parse time) and build their :class:`Source` in :meth:`build_source`.
    """

    source_kind: ClassVar[str]

    def __init__(self, *, source_kwargs: dict[str, JSON], settings: WatchSettings) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.source_kwargs = source_kwargs
        self.settings = settings

    # -- identity and serialization -------------------------------------------------------------
    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def name(self) -> str:
        return self.settings.name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}", {**self.source_kwargs, **self.settings.to_kwargs()}

    @abstractmethod
    def build_source(self) -> Source:
        """A fresh source for one trigger run (its clients are closed with ``aclose``)."""

    # -- polling --------------------------------------------------------------------------------
    async def next_batch(self, source: Source, cursor: JSON | None) -> Batch:
        """Poll from ``cursor`` until the source reports items; retry transient errors with backoff.

        Changes the source does not report (for example a modification when only ``created`` is
        watched) move the in-memory cursor between polls; they are committed with the next batch.
        """
        backoff = Backoff(self.settings.retry_base_seconds, self.settings.retry_max_seconds)
        failing_since: float | None = None
        while True:
            try:
                poll_started = time.monotonic()
                batch = await source.poll(cursor, self.settings.max_items)
                telemetry.poll_finished(self, time.monotonic() - poll_started)
            except Exception as exc:
                telemetry.poll_failed(self, exc)
                if not is_transient(exc):
                    metrics.incr("failures", source=self.source_kind)
                    raise
                delay = backoff.next_delay()
                metrics.incr("failures", source=self.source_kind)
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.log.warning(
                        "%s: transient error, retrying with backoff (next in %.1fs): %s: %s",
                        self._label(source),
                        delay,
                        type(exc).__name__,
                        exc,
                    )
                await asyncio.sleep(delay)
                continue
            metrics.incr("polls", source=self.source_kind)
            if failing_since is not None:
                self.log.info(
                    "%s: recovered after %d retries (%.1fs)",
                    self._label(source),
                    backoff.attempts,
                    time.monotonic() - failing_since,
                )
                failing_since = None
                backoff.reset()
            if batch.items:
                self._check_cursor_size(batch.cursor)
                return batch
            cursor = batch.cursor
            await asyncio.sleep(self.settings.poll_interval)

    def _check_cursor_size(self, cursor: JSON) -> None:
        size = len(json.dumps(cursor, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        limit = self.settings.max_cursor_bytes()
        if size > limit:
            raise PermanentSourceError(
                f"the cursor of watch namespace={self.namespace!r} name={self.name!r} would be {size} bytes, over "
                f"[trigger_kit] state_max_value_bytes={limit}; raise that limit or narrow the watch "
                "(see the cursor size notes in the docs of this watch type)"
            )

    def _label(self, source: Source) -> str:
        return f"{type(self).__name__}({self.namespace}/{self.name}: {source.describe()})"

    def payload(
        self, source: Source, batch: Batch, cursor_from: JSON | None, commit: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        metrics.incr("detections", len(batch.items), source=self.source_kind)
        return build_payload(
            source_kind=self.source_kind,
            namespace=self.namespace,
            name=self.name,
            batch=batch,
            cursor_from=source.describe_cursor(cursor_from),
            cursor_to=source.describe_cursor(batch.cursor),
            commit=commit,
        )

    # -- sensor mode: one event, no state writes ----------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.settings.mode != "sensor":
            raise RuntimeError(
                f"{type(self).__name__} in mode='watcher' runs only through the triggerer's shared stream "
                "(Airflow >= 3.3), which commits its watermark after each event is stored; "
                "use mode='sensor' to defer a task"
            )
        started = time.monotonic()
        source = self.build_source()
        self.log.info("%s: waiting from cursor version %s", self._label(source), self.settings.cursor_version)
        try:
            batch = await self.next_batch(source, self.settings.cursor)
            event = self.payload(
                source,
                batch,
                self.settings.cursor,
                commit={
                    "key": CURSOR_KEY,
                    "expected_version": self.settings.cursor_version,
                    "cursor": batch.cursor,
                },
            )
        except Exception as exc:
            if is_transient(exc):
                raise
            self.log.error("%s: permanent error: %s", self._label(source), exc)
            telemetry.trigger_failed(self, exc)
            event = error_payload(
                source_kind=self.source_kind,
                namespace=self.namespace,
                name=self.name,
                message=f"{type(exc).__name__}: {exc}",
            )
        finally:
            await source.aclose()
        if "items" in event:
            metrics.timing("wait_time", time.monotonic() - started, source=self.source_kind)
            self.log.info("%s: %d item(s) detected", type(self).__name__, len(event["items"]))
        yield TriggerEvent(event)

    # -- watcher mode: shared stream in ack mode ----------------------------------------------
    def shared_stream_key(self) -> Hashable | None:
        if self.settings.mode != "watcher":
            return None
        cls = type(self)
        return ("airflow_trigger_kit", f"{cls.__module__}.{cls.__qualname__}", self.namespace, self.name)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        from airflow_trigger_kit.triggers.delivery import WatermarkProducer

        return WatermarkProducer(cls(**kwargs))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        # Yield each derived event before pulling the next raw event: that is what binds the event's
        # persistence confirmation to the batch it came from (see airflow.triggers.shared_stream).
        async for raw_event in shared_stream:
            yield TriggerEvent(raw_event)
