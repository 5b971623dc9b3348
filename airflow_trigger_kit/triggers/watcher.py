"""Watcher mode: the ``BaseEventTrigger`` half of every watch trigger.

A trigger of this package is a ``BaseEventTrigger`` only in ``mode="watcher"``, where an
``AssetWatcher`` runs it through Airflow 3.3's shared stream in ack mode. In ``mode="sensor"`` it is
a plain ``BaseTrigger`` (a deferred task), so the triggerer counts it as a trigger, not a watcher.
The public classes (``MultiDirectoryTrigger``, ...) are the sensor-mode classes; constructing one
with ``mode="watcher"`` returns an instance of its watcher variant (:func:`event_variant`), a
subclass that adds :class:`IncrementalEventTrigger`. The variant serializes under the public class
path, so the triggerer re-creates it the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_trigger_kit.triggers.delivery import WatermarkProducer, WatermarkSource

if TYPE_CHECKING:
    from airflow.triggers.shared_stream import SharedStreamProducer

C = TypeVar("C", bound=type)


class _Identified(Protocol):
    namespace: str
    name: str


class IncrementalEventTrigger(BaseEventTrigger):
    """Shared-stream delivery in ack mode: the watermark is committed only in ``advance``.

    See :mod:`airflow_trigger_kit.triggers.delivery` for the invariants.
    """

    def shared_stream_key(self) -> Hashable | None:
        cls = type(self)
        watch: Any = self
        return ("airflow_trigger_kit", f"{cls.__module__}.{cls.__qualname__}", watch.namespace, watch.name)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        watch: WatermarkSource = cls(**kwargs)  # type: ignore[assignment]
        return WatermarkProducer(watch)

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        # Yield each derived event before pulling the next raw event: that is what binds the event's
        # persistence confirmation to the batch it came from (see airflow.triggers.shared_stream).
        async for raw_event in shared_stream:
            yield TriggerEvent(raw_event)


_variants: dict[type, type] = {}


def event_variant(cls: C) -> C:
    """The watcher variant of a sensor-mode trigger class: ``cls`` plus :class:`IncrementalEventTrigger`."""
    variant = _variants.get(cls)
    if variant is None:
        variant = type(
            cls.__name__,
            (cls, IncrementalEventTrigger),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
        )
        _variants[cls] = variant
    return variant  # type: ignore[return-value]
