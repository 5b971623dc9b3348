"""Settings every watch shares (identity, delivery mode, polling, retries), validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from airflow_trigger_kit.sources.base import JSON
from airflow_trigger_kit.state.model import InvalidStateInput, validate_id

Mode = Literal["watcher", "sensor"]

ASSET_NAMESPACE = "assets"
"""ProcessState namespace of the watchers that the asset helpers build; the state name is the asset name."""

DEFAULT_BACKLOG_ITEMS = 5000
"""The default ``backlog_max_items`` is ``10 * max_items`` up to this (never below ``max_items``)."""
MAX_BACKLOG_ITEMS = 100_000
"""The largest ``backlog_max_items`` accepted: an event carries its items (trigger event, XCom, asset event)."""


def default_backlog_max_items(max_items: int) -> int:
    return min(10 * max_items, max(max_items, DEFAULT_BACKLOG_ITEMS))


StartFrom = Literal["now", "beginning"]


class CommonTriggerKwargs(TypedDict, total=False):
    """The keyword arguments every trigger passes through to :class:`WatchSettings` unchanged."""

    mode: Mode
    start_from: StartFrom
    max_items: int
    backlog_max_items: int | None
    cursor: JSON
    cursor_version: int
    retry_base_seconds: float
    retry_max_seconds: float
    reconcile_interval: float
    min_event_spacing: float


DEFAULT_MIN_EVENT_SPACING = 2.0
"""Seconds between two events of one watcher, by default (see ``min_event_spacing``)."""


@dataclass(frozen=True)
class WatchSettings:
    """The source-independent kwargs of every trigger in this package.

    :param namespace: ProcessState namespace of the watch's cursor.
    :param name: ProcessState name of the watch's cursor.
    :param mode: ``"watcher"`` (AssetWatcher: runs forever, commits after Airflow stored each event)
        or ``"sensor"`` (deferred sensor: one event from ``cursor``, never writes state).
    :param start_from: first run only: ``"now"`` reports only what appears later; ``"beginning"``
        reports what already exists.
    :param poll_interval: seconds between polls that found nothing.
    :param reconcile_interval: seconds between polls that found nothing while the watch's change
        notifications are live (inotify for directories, ``notify_channel`` for Postgres,
        ``sqs_queue_url`` for S3): a notification wakes the watch at once, and this rarer poll
        finds whatever no notification announced. Without live notifications, ``poll_interval``
        applies.
    :param min_event_spacing: watchers only: the least seconds between two events of the watch;
        items found meanwhile go into the next event. The first event after a quiet spell goes out
        at once. Airflow 3.3 can leave the later of two asset events that arrive while the
        scheduler is queueing a run for the first without a DAG run until the asset's next event
        (apache/airflow#62501, #54659); with change notifications a burst would otherwise become
        events milliseconds apart. ``0`` sends every batch as soon as it is found.
    :param max_items: most items in one event while the watch is caught up; the rest follow in the
        next events.
    :param backlog_max_items: most items in one event while a backlog drains (a poll came back
        full and the source has more): the batch then takes further pages, up to this many items.
        Default: ``10 * max_items``, but no more than ``max(max_items, 5000)``; set it to
        ``max_items`` to keep every event at ``max_items``.
    :param cursor: sensor mode: the cursor to start from (``None``: from the beginning).
    :param cursor_version: sensor mode: ProcessState version of ``cursor`` (0: none stored yet).
    :param retry_base_seconds: first backoff delay after a transient error.
    :param retry_max_seconds: longest backoff delay.
    """

    namespace: str
    name: str
    mode: Mode = "watcher"
    start_from: StartFrom = "now"
    poll_interval: float = 5.0
    max_items: int = 500
    backlog_max_items: int | None = None
    cursor: JSON = None
    cursor_version: int = 0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    reconcile_interval: float = 60.0
    min_event_spacing: float = DEFAULT_MIN_EVENT_SPACING

    def __post_init__(self) -> None:
        try:
            validate_id("namespace", self.namespace)
            validate_id("name", self.name)
        except InvalidStateInput as exc:
            raise ValueError(str(exc)) from None
        if self.mode not in ("watcher", "sensor"):
            raise ValueError(f"mode must be 'watcher' or 'sensor', got {self.mode!r}")
        if self.start_from not in ("now", "beginning"):
            raise ValueError(f"start_from must be 'now' or 'beginning', got {self.start_from!r}")
        _positive("poll_interval", self.poll_interval)
        _positive("retry_base_seconds", self.retry_base_seconds)
        _positive("retry_max_seconds", self.retry_max_seconds)
        _positive("reconcile_interval", self.reconcile_interval)
        if (
            isinstance(self.min_event_spacing, bool)
            or not isinstance(self.min_event_spacing, (int, float))
            or not 0 <= self.min_event_spacing <= 3600
        ):
            raise ValueError(
                f"min_event_spacing must be a number of seconds from 0 to 3600, got {self.min_event_spacing!r}"
            )
        if isinstance(self.max_items, bool) or not isinstance(self.max_items, int) or self.max_items < 1:
            raise ValueError(f"max_items must be an integer >= 1, got {self.max_items!r}")
        if self.backlog_max_items is not None and (
            isinstance(self.backlog_max_items, bool)
            or not isinstance(self.backlog_max_items, int)
            or not self.max_items <= self.backlog_max_items <= max(MAX_BACKLOG_ITEMS, self.max_items)
        ):
            raise ValueError(
                f"backlog_max_items must be an integer from max_items ({self.max_items}) to "
                f"{max(MAX_BACKLOG_ITEMS, self.max_items)}, "
                f"got {self.backlog_max_items!r}"
            )
        if isinstance(self.cursor_version, bool) or not isinstance(self.cursor_version, int) or self.cursor_version < 0:
            raise ValueError(f"cursor_version must be an integer >= 0, got {self.cursor_version!r}")
        if self.mode == "watcher" and (self.cursor is not None or self.cursor_version):
            raise ValueError(
                "cursor and cursor_version are for mode='sensor'; a watcher reads its cursor from ProcessState"
            )

    def to_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "namespace": self.namespace,
            "name": self.name,
            "mode": self.mode,
            "start_from": self.start_from,
            "poll_interval": self.poll_interval,
            "max_items": self.max_items,
            "retry_base_seconds": self.retry_base_seconds,
            "retry_max_seconds": self.retry_max_seconds,
            "reconcile_interval": self.reconcile_interval,
        }
        if self.backlog_max_items is not None:
            kwargs["backlog_max_items"] = self.backlog_max_items
        if self.min_event_spacing != DEFAULT_MIN_EVENT_SPACING:
            kwargs["min_event_spacing"] = self.min_event_spacing
        if self.mode == "sensor":
            kwargs["cursor"] = self.cursor
            kwargs["cursor_version"] = self.cursor_version
        return kwargs

    @property
    def max_batch_items(self) -> int:
        """The most items one event takes while a backlog drains (see ``backlog_max_items``)."""
        if self.backlog_max_items is not None:
            return self.backlog_max_items
        return default_backlog_max_items(self.max_items)

    @staticmethod
    def max_cursor_bytes() -> int:
        from airflow_trigger_kit.config import StateSettings

        return StateSettings.from_config().max_value_bytes


def _positive(param: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{param} must be a number > 0, got {value!r}")
    return float(value)
