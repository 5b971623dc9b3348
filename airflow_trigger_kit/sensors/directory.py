"""MultiDirectorySensor: wait for files in several directories, without holding a worker slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_trigger_kit.sensors.base import IncrementalSensor
from airflow_trigger_kit.sources.directory import DEFAULT_IGNORE_PATTERNS, DirectoryWatchConfig
from airflow_trigger_kit.triggers.directory import MultiDirectoryTrigger


class MultiDirectorySensor(IncrementalSensor):
    """Succeeds when new files are found in any of ``directories``; returns them (XCom).

    Parameters as :class:`~airflow_trigger_kit.triggers.MultiDirectoryTrigger` (``directories``,
    ``patterns``, ``recursive``, ``ignore_patterns``, ``event_kinds``, ``settle_seconds``,
    ``lookback_seconds``, ``notify``) plus those of :class:`~airflow_trigger_kit.sensors.base.IncrementalSensor`.
    """

    trigger_class = MultiDirectoryTrigger
    template_fields: tuple[str, ...] = (*IncrementalSensor.template_fields, "directories", "patterns")

    def __init__(
        self,
        *,
        directories: str | Sequence[str],
        patterns: str | Sequence[str] = ("*",),
        recursive: bool = False,
        ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
        event_kinds: str | Sequence[str] = ("created",),
        settle_seconds: float = 5.0,
        lookback_seconds: float = 60.0,
        notify: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.directories = directories
        self.patterns = patterns
        self.recursive = recursive
        self.ignore_patterns = ignore_patterns
        self.event_kinds = event_kinds
        self.settle_seconds = settle_seconds
        self.lookback_seconds = lookback_seconds
        self.notify = notify
        if not _templated(directories) and not _templated(patterns):
            self.source_kwargs()  # validate at DAG parse time

    def source_kwargs(self) -> dict[str, Any]:
        return DirectoryWatchConfig.create(
            directories=self.directories,
            patterns=self.patterns,
            recursive=self.recursive,
            ignore_patterns=self.ignore_patterns,
            event_kinds=self.event_kinds,
            settle_seconds=self.settle_seconds,
            lookback_seconds=self.lookback_seconds,
            notify=self.notify,
        ).to_kwargs()


def _templated(value: Any) -> bool:
    values = [value] if isinstance(value, str) else list(value or [])
    return any(isinstance(v, str) and "{{" in v for v in values)
