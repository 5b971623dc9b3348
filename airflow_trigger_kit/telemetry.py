"""Hook points of the watch engine: metrics and the status record, in one place.

The triggers, the watcher's delivery and the sensors call these functions at fixed points, each in
one line; everything they do lives here, so the engine stays about detection and delivery:

=================================  ==========================================================
hook                               called from
=================================  ==========================================================
:func:`poll_finished`              ``WatchSession.next_batch``, after each poll the hub made for the watch
:func:`poll_failed`                ``WatchSession.next_batch``, when a poll raised
:func:`trigger_failed`             ``IncrementalTrigger.run``, the sensor's permanent-error path
:func:`watcher_opened`             ``WatermarkProducer.open_stream``, once the cursor is loaded
:func:`batch_yielded`              ``WatermarkProducer.open_stream``, before yielding a batch
:func:`stream_failed`              ``WatermarkProducer.open_stream``, when the stream raises
:func:`watermark_committed`        ``WatermarkProducer._commit``, after a commit
:func:`watcher_backing_off`        ``RestartBackoff.failed``, when a watcher's stream failed
:func:`watcher_recovered`          ``RestartBackoff.succeeded``, at the first good poll after failures
:func:`sensor_finished`            ``IncrementalSensor.finish``, with the event payload
:func:`sensor_committed`           ``acommit_watermark``, after a sensor's cursor was committed
=================================  ==========================================================

Invariants: a hook never raises and never blocks the event loop. Metrics go through Airflow's Stats
(:mod:`airflow_trigger_kit.metrics`). Status writes (:mod:`airflow_trigger_kit.status`) in the
triggerer run in background tasks, serialised per watch so they land in order, and are dropped on
failure; a hook only schedules them, so a slow or unreachable state store cannot delay a commit.
Writes happen on state changes only (opened, committed, a new error, recovered), never per idle
poll, so an idle watch costs no writes.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from airflow_trigger_kit import metrics
from airflow_trigger_kit.retry import is_transient
from airflow_trigger_kit.settings import ASSET_NAMESPACE
from airflow_trigger_kit.state import ProcessState, StateConflict
from airflow_trigger_kit.status import (
    Record,
    aupdate_status,
    identify,
    newest_item_time,
    now_iso,
    record_backoff,
    record_commit,
    record_detection,
    record_error,
    record_recovery,
    update_status,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_trigger_kit.settings import WatchSettings
    from airflow_trigger_kit.sources.base import Source


# What the hooks read of their callers, structurally (this module sits below triggers/ and sensors/).
class IncrementalTrigger(Protocol):
    """A trigger of this package (or anything with its identity and settings)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def source_kind(self) -> str: ...

    @property
    def settings(self) -> WatchSettings: ...


class PendingCommit(Protocol):
    @property
    def items(self) -> int: ...

    @property
    def sequence(self) -> int: ...


class WatermarkProducer(Protocol):
    @property
    def trigger(self) -> IncrementalTrigger: ...

    @property
    def state(self) -> ProcessState: ...

    @property
    def committed_version(self) -> int | None: ...

    @property
    def _source(self) -> Source | None: ...


class FailureStreak(Protocol):
    """A watcher's failures in a row (:class:`airflow_trigger_kit.hub.streaks.FailureStreak`)."""

    @property
    def failures(self) -> int: ...

    @property
    def since(self) -> float: ...

    @property
    def next_retry_at(self) -> float: ...


class IncrementalSensor(Protocol):
    @property
    def task_id(self) -> str: ...

    @property
    def commit(self) -> str: ...

    def make_trigger(self, namespace: str, name: str) -> Any: ...


log = logging.getLogger(__name__)


class _WatchTelemetry:
    """Per trigger object: the error streak, batches in flight and the status write queue."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.in_flight: dict[int, tuple[int, datetime | None, str]] = {}
        self.lock: asyncio.Lock | None = None


_by_trigger: weakref.WeakKeyDictionary[Any, _WatchTelemetry] = weakref.WeakKeyDictionary()
_pending: set[asyncio.Task[bool]] = set()


def _of(owner: Any) -> _WatchTelemetry:
    found = _by_trigger.get(owner)
    if found is None:
        found = _by_trigger[owner] = _WatchTelemetry()
    return found


def _state_for(trigger: IncrementalTrigger) -> ProcessState:
    return ProcessState(trigger.namespace, trigger.name)


def _schedule(owner: Any, state: ProcessState, mutate: Callable[[Record], None]) -> None:
    """Write the status in a background task, after the previous write of this watch."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        update_status(state, mutate)
        return
    telemetry = _of(owner)
    if telemetry.lock is None:
        telemetry.lock = asyncio.Lock()
    lock = telemetry.lock

    async def write() -> bool:
        async with lock:
            return await aupdate_status(state, mutate)

    task = loop.create_task(write())
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def flush() -> None:
    """Wait for the status writes scheduled so far (tests, and a clean shutdown)."""
    while _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)


def _identity(trigger: IncrementalTrigger, source_description: str | None) -> dict[str, Any]:
    mode = trigger.settings.mode
    identity: dict[str, Any] = {"kind": mode, "source": trigger.source_kind, "watching": source_description}
    if mode == "watcher":
        identity["target"] = f"asset {trigger.name}" if trigger.namespace == ASSET_NAMESPACE else "asset watcher"
    return identity


def _safe(hook: Callable[..., None]) -> Callable[..., None]:
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:  # a hook must never break a watch
            log.debug("telemetry hook %s failed", hook.__name__, exc_info=True)

    guarded.__name__ = hook.__name__
    guarded.__doc__ = hook.__doc__
    return guarded


# -- trigger hooks -----------------------------------------------------------------------------------
@_safe
def poll_finished(trigger: IncrementalTrigger, seconds: float) -> None:
    """A poll succeeded after ``seconds``: the ``poll_duration`` metric; a recovery if it was failing."""
    tags = metrics.watch_tags(trigger.source_kind, trigger.namespace, trigger.name)
    metrics.timing("poll_duration", seconds, source=trigger.source_kind, tags=tags)
    telemetry = _of(trigger)
    if telemetry.error is not None:
        telemetry.error = None
        at = now_iso()
        _schedule(trigger, _state_for(trigger), lambda record: record_recovery(record, at=at))


@_safe
def poll_failed(trigger: IncrementalTrigger, exc: BaseException) -> None:
    """A poll raised: remember the error in the status record, once per distinct message in a streak."""
    _failed(trigger, exc)


@_safe
def trigger_failed(trigger: IncrementalTrigger, exc: BaseException) -> None:
    """A sensor's trigger ends on a permanent error: the status record keeps it as the last error."""
    _failed(trigger, exc)


def _failed(owner: Any, exc: BaseException, trigger: IncrementalTrigger | None = None) -> None:
    """Record ``exc`` as the last error, once per distinct message of the trigger's error streak.

    ``owner`` orders the write (the producer's writes for a watcher); the streak is the trigger's, so
    a permanent poll error that then ends the watcher's stream is written once, not twice.
    """
    trigger = trigger or owner
    message = f"{type(exc).__name__}: {exc}"
    telemetry = _of(trigger)
    if telemetry.error == message:
        return
    telemetry.error = message
    transient = is_transient(exc)
    at = now_iso()
    identity = _identity(trigger, None)

    def mutate(record: Record) -> None:
        identify(record, identity)
        record_error(record, message=message, at=at, transient=transient)

    _schedule(owner, _state_for(trigger), mutate)


# -- watcher hooks -------------------------------------------------------------------------------------
@_safe
def watcher_opened(producer: WatermarkProducer, version: int) -> None:
    """The watcher's stream opened at committed cursor ``version``: (re)write its identity."""
    source = producer._source
    identity = _identity(producer.trigger, source.describe() if source is not None else None)
    identity["started_at"] = now_iso()
    identity["committed_version"] = version
    _schedule(producer, producer.state, lambda record: identify(record, identity))


@_safe
def batch_yielded(producer: WatermarkProducer, sequence: int, raw_event: dict[str, Any]) -> None:
    """A batch goes out for confirmation: remember its size and newest item until it is committed."""
    items = raw_event.get("items") or []
    _of(producer).in_flight[sequence] = (len(items), newest_item_time(items), str(raw_event.get("detected_at")))


@_safe
def stream_failed(producer: WatermarkProducer, exc: BaseException) -> None:
    """The watcher's stream ends with ``exc`` (another writer's commit is a restart, not an error)."""
    if isinstance(exc, StateConflict):
        return
    _failed(producer, exc, producer.trigger)


@_safe
def watermark_committed(producer: WatermarkProducer, pending: PendingCommit) -> None:
    """Batches up to ``pending`` are committed: the lag gauge, and counts in the status record."""
    trigger = producer.trigger
    in_flight = _of(producer).in_flight
    done = sorted(seq for seq in in_flight if seq <= pending.sequence)
    batches = [in_flight.pop(seq) for seq in done]
    items = sum(b[0] for b in batches) if batches else pending.items
    newest = max((b[1] for b in batches if b[1] is not None), default=None)
    detected = max((b[2] for b in batches), default=None)
    _gauge_lag(trigger.source_kind, producer.state, newest)
    version = int(producer.committed_version or 0)
    events = len(batches) or 1
    at = now_iso()

    def mutate(record: Record) -> None:
        if detected:
            record_detection(record, at=detected, items=items)
        record_commit(record, version=version, at=at, items=items, events=events, newest_item_at=newest)

    _schedule(producer, producer.state, mutate)


@_safe
def watcher_backing_off(producer: WatermarkProducer, streak: FailureStreak) -> None:
    """A watcher failed ``streak.failures`` times in a row: the ``failure_streak`` gauge, and the
    status record's ``backoff`` (its next retry time)."""
    trigger = producer.trigger
    tags = metrics.watch_tags(trigger.source_kind, trigger.namespace, trigger.name)
    metrics.gauge("failure_streak", float(streak.failures), tags=tags)
    failures, since, retry_at = streak.failures, _iso(streak.since), _iso(streak.next_retry_at)
    _schedule(
        producer,
        producer.state,
        lambda record: record_backoff(record, failures=failures, since=since, next_retry_at=retry_at),
    )


@_safe
def watcher_recovered(producer: WatermarkProducer) -> None:
    """A failing watcher polled successfully: the gauge back to 0, the status record recovered."""
    trigger = producer.trigger
    metrics.gauge("failure_streak", 0.0, tags=metrics.watch_tags(trigger.source_kind, trigger.namespace, trigger.name))
    at = now_iso()
    _schedule(producer, producer.state, lambda record: record_recovery(record, at=at))


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).isoformat()


# -- sensor hooks ----------------------------------------------------------------------------------------
@_safe
def sensor_finished(sensor: IncrementalSensor, payload: dict[str, Any]) -> None:
    """A sensor received its event: record its identity and the detection."""
    watch = payload["watch"]
    state = ProcessState(watch["namespace"], watch["name"])
    dag_id = getattr(sensor, "dag_id", None)
    identity: dict[str, Any] = {
        "kind": "sensor",
        "source": payload.get("source"),
        "watching": _describe_sensor_source(sensor, watch["namespace"], watch["name"]),
        "target": f"task {dag_id}.{sensor.task_id}" if dag_id else f"task {sensor.task_id}",
        "dag_id": dag_id,
        "task_id": sensor.task_id,
        "commit": sensor.commit,
    }
    detected = str(payload.get("detected_at") or now_iso())
    items = len(payload.get("items") or [])

    def mutate(record: Record) -> None:
        identify(record, identity)
        record_detection(record, at=detected, items=items)

    update_status(state, mutate)


def _describe_sensor_source(sensor: IncrementalSensor, namespace: str, name: str) -> str | None:
    try:
        return str(sensor.make_trigger(namespace, name).build_source().describe())
    except Exception:  # the description is a nicety; parameters were validated at parse time
        return None


async def sensor_committed(payload: dict[str, Any], state: ProcessState, version: int) -> None:
    """A sensor's cursor was committed (by the sensor, or by a downstream task with ``commit="manual"``).

    Awaited inline (on the worker), but never raises: the commit already happened.
    """
    try:
        items = list(payload.get("items") or [])
        newest = newest_item_time(items)
        _gauge_lag(str(payload.get("source") or "unknown"), state, newest)
        at = now_iso()

        def mutate(record: Record) -> None:
            record_commit(record, version=version, at=at, items=len(items), events=1, newest_item_at=newest)

        await aupdate_status(state, mutate)
    except Exception:
        log.debug("telemetry hook sensor_committed failed", exc_info=True)


def _gauge_lag(source_kind: str, state: ProcessState, newest: datetime | None) -> None:
    """``watermark_lag``: seconds from the newest committed item's own time to its commit."""
    if newest is None:
        return
    lag = max(0.0, (datetime.now(timezone.utc) - newest).total_seconds())
    metrics.gauge("watermark_lag", lag, tags=metrics.watch_tags(source_kind, state.namespace, state.name))
