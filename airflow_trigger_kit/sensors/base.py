"""IncrementalSensor: a deferrable sensor over any source, with the watermark committed on the worker.

Flow of one run:

1. Read the committed cursor from ProcessState (``namespace`` defaults to the DAG id, ``name`` to
   the task id). On the very first run, ``start_from="now"`` stores a baseline right away (so data
   that lands while the first run waits is not lost); ``"beginning"`` starts from nothing.
2. Poll once on the worker. Data already there means no triggerer round trip.
3. Otherwise defer to the trigger (``mode="sensor"``) with that cursor and its version; the worker
   slot is freed. ``deferrable=False`` pokes instead, with the same results.
4. On the event, commit the new cursor with compare-and-set against the version from step 1
   (``commit="auto"``), or leave that to a downstream task (``commit="manual"``, see
   :func:`airflow_trigger_kit.commit.commit_watermark`) so a failed processing task makes the same
   data come back on the next run.

The task returns the event payload (XCom): ``items``, ``dedup_ids``, ``watch``, ``cursor_range``.
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import timedelta
from typing import Any, ClassVar, Literal

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException

from airflow_trigger_kit import telemetry
from airflow_trigger_kit._sync import run_sync
from airflow_trigger_kit.commit import commit_watermark
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.retry import is_transient
from airflow_trigger_kit.settings import StartFrom, WatchSettings
from airflow_trigger_kit.sources.base import JSON, Batch, Source, poll_batch
from airflow_trigger_kit.state import ProcessState, StateConflict
from airflow_trigger_kit.state.model import InvalidStateInput, validate_id
from airflow_trigger_kit.triggers.base import IncrementalTrigger

Commit = Literal["auto", "manual"]


class IncrementalSensor(BaseSensorOperator):
    """Base of every watch sensor. Subclasses set ``trigger_class`` and return their source kwargs.

    :param state_namespace: ProcessState namespace of the watermark (default: the DAG id).
    :param state_name: ProcessState name of the watermark (default: the task id, plus the map index
        for mapped tasks).
    :param start_from: ``"now"`` or ``"beginning"`` — what the very first run reports.
    :param max_items: most items returned by one run; the rest come with the next run.
    :param backlog_max_items: most items one run returns while a backlog drains (its first page
        came back full): default ``10 * max_items``, at most ``max(max_items, 5000)``; set it to
        ``max_items`` to keep every run at ``max_items``.
    :param commit: ``"auto"`` commits the watermark when the sensor finishes; ``"manual"`` leaves it
        to :func:`~airflow_trigger_kit.commit.commit_watermark` in a downstream task.
    :param deferrable: defer to the triggerer while waiting (default: ``[operators]
        default_deferrable``).
    :param retry_base_seconds: first backoff delay after a transient error in the trigger.
    :param retry_max_seconds: longest backoff delay.
    :param reconcile_interval: seconds between the trigger's polls while its change notifications
        are live (``poke_interval`` otherwise); see the notifications section of each watch's docs.

    ``poke_interval``, ``timeout``, ``soft_fail`` and ``mode`` behave as in Airflow's sensors;
    ``poke_interval`` is also the trigger's polling interval.
    """

    trigger_class: ClassVar[type[IncrementalTrigger]]
    template_fields: tuple[str, ...] = ("state_namespace", "state_name")

    def __init__(
        self,
        *,
        state_namespace: str | None = None,
        state_name: str | None = None,
        start_from: StartFrom = "now",
        max_items: int = 500,
        backlog_max_items: int | None = None,
        commit: Commit = "auto",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
        reconcile_interval: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if commit not in ("auto", "manual"):
            raise ValueError(f"commit must be 'auto' or 'manual', got {commit!r}")
        self.state_namespace = state_namespace
        self.state_name = state_name
        self.start_from = start_from
        self.max_items = max_items
        self.backlog_max_items = backlog_max_items
        self.commit = commit
        self.deferrable = deferrable
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.reconcile_interval = reconcile_interval
        # Validate the common settings now, at DAG parse time, naming the sensor's own parameters:
        # the trigger calls poke_interval "poll_interval" and the state identity "namespace"/"name".
        if self.poke_interval <= 0:
            raise ValueError(
                f"poke_interval must be a number of seconds > 0 (it is also the trigger's polling interval), "
                f"got {kwargs.get('poke_interval', self.poke_interval)!r}"
            )
        for param, value in (("state_namespace", state_namespace), ("state_name", state_name)):
            if value is not None and "{{" not in str(value):
                try:
                    validate_id(param, value)
                except InvalidStateInput as exc:
                    raise ValueError(str(exc)) from None
        self._settings("parse-check", "parse-check", None, 0)

    @abstractmethod
    def source_kwargs(self) -> dict[str, Any]:
        """The trigger's source parameters (validated by the trigger's constructor)."""

    # -- building blocks ------------------------------------------------------------------------
    def _settings(self, namespace: str, name: str, cursor: JSON, version: int) -> WatchSettings:
        return WatchSettings(
            namespace=namespace,
            name=name,
            mode="sensor",
            start_from=self.start_from,
            poll_interval=float(self.poke_interval),
            max_items=self.max_items,
            backlog_max_items=self.backlog_max_items,
            cursor=cursor,
            cursor_version=version,
            retry_base_seconds=self.retry_base_seconds,
            retry_max_seconds=self.retry_max_seconds,
            reconcile_interval=self.reconcile_interval,
        )

    def make_trigger(self, namespace: str, name: str, cursor: JSON = None, version: int = 0) -> IncrementalTrigger:
        kwargs = {**self.source_kwargs(), **self._settings(namespace, name, cursor, version).to_kwargs()}
        return self.trigger_class(**kwargs)

    def watch_identity(self, context: Any) -> tuple[str, str]:
        ti = context["ti"]
        namespace = self.state_namespace or ti.dag_id
        name = self.state_name or ti.task_id
        map_index = getattr(ti, "map_index", -1)
        if not self.state_name and map_index is not None and map_index >= 0:
            name = f"{name}.{map_index}"
        return namespace, name

    # -- one check on the worker --------------------------------------------------------------
    def check_once(self, context: Any) -> tuple[dict[str, Any] | None, JSON, int]:
        """Poll once from the committed cursor: (payload or None, cursor to wait from, its version)."""
        namespace, name = self.watch_identity(context)
        trigger = self.make_trigger(namespace, name)
        state = ProcessState(namespace, name)
        return run_sync(self._acheck_once(trigger, state))

    async def _acheck_once(
        self, trigger: IncrementalTrigger, state: ProcessState
    ) -> tuple[dict[str, Any] | None, JSON, int]:
        source = trigger.build_source()
        try:
            cursor, version = await self._load_cursor(state, source)
            try:
                batch: Batch = await poll_batch(
                    source, cursor, trigger.settings.max_items, trigger.settings.max_batch_items
                )
            except Exception as exc:
                if not is_transient(exc):
                    raise AirflowException(f"{type(exc).__name__}: {exc}") from exc
                self.log.warning("check before deferring failed transiently (%s); the trigger retries", exc)
                return None, cursor, version
            if not batch.items:
                return None, batch.cursor, version
            payload = trigger.payload(
                source,
                batch,
                cursor,
                commit={"key": CURSOR_KEY, "expected_version": version, "cursor": batch.cursor},
            )
            return payload, batch.cursor, version
        finally:
            await source.aclose()

    async def _load_cursor(self, state: ProcessState, source: Source) -> tuple[JSON, int]:
        while True:
            entry = await state.aget(CURSOR_KEY)
            if entry is not None:
                return entry.value, entry.version
            if self.start_from == "beginning":
                return None, 0
            baseline = await source.baseline()
            try:
                return baseline, await state.aset(CURSOR_KEY, baseline, expected_version=0)
            except StateConflict:
                continue

    # -- the three entry points Airflow calls ------------------------------------------------
    def poke(self, context: Any) -> PokeReturnValue:
        payload, _, _ = self.check_once(context)
        if payload is None:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self.finish(payload))

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        payload, cursor, version = self.check_once(context)
        if payload is not None:
            return self.finish(payload)
        namespace, name = self.watch_identity(context)
        self.log.info("no new data in %s/%s yet; deferring (worker slot released)", namespace, name)
        self.defer(
            trigger=self.make_trigger(namespace, name, cursor, version),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        if not event:
            raise AirflowException(f"{self.task_id}: the trigger ended without an event")
        if event.get("status") == "error":
            raise AirflowException(f"{self.task_id}: {event.get('message')}")
        return self.finish(event)

    def finish(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Commit (``commit="auto"``) and return the payload for XCom."""
        self.log.info(
            "%d item(s) detected in %s/%s",
            len(payload["items"]),
            payload["watch"]["namespace"],
            payload["watch"]["name"],
        )
        telemetry.sensor_finished(self, payload)
        if self.commit == "manual":
            return payload
        try:
            version = commit_watermark(payload)
        except StateConflict as exc:
            raise AirflowException(
                f"{self.task_id}: the watermark moved while this sensor waited ({exc}); nothing was committed, "
                "and the next run starts from the newer watermark"
            ) from exc
        result = dict(payload)
        result["commit"] = {"key": payload["commit"]["key"], "committed_version": version}
        return result
