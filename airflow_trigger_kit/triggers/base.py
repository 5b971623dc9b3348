"""One trigger base over every source, in two delivery modes.

``mode="sensor"`` (a deferred sensor): the trigger starts from the cursor the sensor gave it, waits
until the source reports items, yields one event that carries the new cursor, and returns. It never
writes state: the sensor commits on the worker (``execute_complete``) with compare-and-set against
the version it started from. It is a plain ``BaseTrigger``, counted as a trigger by the triggerer.

``mode="watcher"`` (an ``AssetWatcher``): the trigger runs forever through Airflow 3.3's shared
stream in *ack mode*. Constructing a trigger with ``mode="watcher"`` gives its ``BaseEventTrigger``
variant (:mod:`airflow_trigger_kit.triggers.watcher`), whose
:class:`~airflow_trigger_kit.triggers.delivery.WatermarkProducer` yields each batch and commits the
watermark only once Airflow confirmed the event derived from it stored in the metadata database.

In both modes the trigger waits through the hub of its event loop (:mod:`airflow_trigger_kit.hub`),
which shares listings, polls and connections between every wait on the same source, while each
trigger keeps its own cursor. :mod:`airflow_trigger_kit.triggers.session` retries transient errors
with backoff and raises permanent ones; nothing here blocks the event loop.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Hashable
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_trigger_kit import metrics, telemetry
from airflow_trigger_kit.payload import CURSOR_KEY, build_payload, error_payload
from airflow_trigger_kit.retry import is_transient
from airflow_trigger_kit.settings import WatchSettings
from airflow_trigger_kit.sources.base import JSON, Batch, Source
from airflow_trigger_kit.triggers.session import Subscription, open_session
from airflow_trigger_kit.triggers.watcher import event_variant


class IncrementalTrigger(BaseTrigger):
    """Base of every watch trigger: common settings plus source-specific kwargs.

    Subclasses set :attr:`source_kind`, validate their own parameters in ``__init__`` (so bad input
    fails at DAG parse time) and build their :class:`Source` in :meth:`build_source`.
    """

    source_kind: ClassVar[str]

    def __new__(cls, *args: Any, **kwargs: Any) -> IncrementalTrigger:
        # Only watchers are BaseEventTriggers (see airflow_trigger_kit.triggers.watcher).
        target = event_variant(cls) if kwargs.get("mode", "watcher") == "watcher" else cls
        return super().__new__(target)

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

    @classmethod
    def classpath(cls) -> str:
        """The public class path (a watcher variant serializes as the class it was built from)."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self.classpath(), {**self.source_kwargs, **self.settings.to_kwargs()}

    def source_identity(self) -> Hashable:
        """What makes two watches read the same data: the class and every source parameter.

        Not the cursor, the namespace/name or the polling settings: watches with equal identities
        share one source in the hub, and each keeps its own cursor.
        """
        return (self.classpath(), json.dumps(self.source_kwargs, sort_keys=True, default=str))

    @abstractmethod
    def build_source(self) -> Source:
        """A fresh source of this watch alone (its clients are closed with ``aclose``)."""

    def build_shared_source(self) -> Source:
        """The source the hub shares between every watch with this identity (default: a fresh one)."""
        return self.build_source()

    async def subscribe(self) -> Subscription:
        """This trigger's subscription to the hub of the running event loop."""
        from airflow_trigger_kit.hub import get_hub

        return get_hub().channels.subscribe(self.source_identity(), self.build_shared_source)

    def payload(
        self, source: Source, batch: Batch, cursor_from: JSON | None, commit: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The event payload of ``batch`` (used where no session runs: a sensor's check on a worker)."""
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
        cursor = self.settings.cursor
        label = f"{type(self).__name__}({self.namespace}/{self.name})"
        try:
            async with open_session(self) as session:
                label = session.label
                self.log.debug("%s: waiting from cursor version %s", label, self.settings.cursor_version)
                batch = await session.next_batch(cursor)
                event = session.payload(
                    batch,
                    cursor,
                    commit={
                        "key": CURSOR_KEY,
                        "expected_version": self.settings.cursor_version,
                        "cursor": batch.cursor,
                    },
                )
        except Exception as exc:
            if is_transient(exc):
                raise
            self.log.error("%s: permanent error: %s", label, exc)
            telemetry.trigger_failed(self, exc)
            event = error_payload(
                source_kind=self.source_kind,
                namespace=self.namespace,
                name=self.name,
                message=f"{type(exc).__name__}: {exc}",
            )
        if "items" in event:
            metrics.timing("wait_time", time.monotonic() - started, source=self.source_kind)
            self.log.info("%s: %d item(s) detected", type(self).__name__, len(event["items"]))
        yield TriggerEvent(event)
