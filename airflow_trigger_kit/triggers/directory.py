"""MultiDirectoryTrigger: one trigger over many directories and patterns."""

from __future__ import annotations

from collections.abc import Sequence

from typing_extensions import Unpack

from airflow_trigger_kit.settings import CommonTriggerKwargs, WatchSettings
from airflow_trigger_kit.sources.base import Source
from airflow_trigger_kit.sources.directory import (
    DEFAULT_IGNORE_PATTERNS,
    DEFAULT_LOOKBACK_SECONDS,
    DEFAULT_SETTLE_SECONDS,
    DirectorySource,
    DirectoryWatchConfig,
)
from airflow_trigger_kit.triggers.base import IncrementalTrigger
from airflow_trigger_kit.triggers.session import Subscription


class MultiDirectoryTrigger(IncrementalTrigger):
    """Fires when files appear, change or vanish in any of several directories.

    Reports which file was found where (directory, path, relative path, size, mtime, kind) and
    reports a file only after it stopped changing for ``settle_seconds``. With ``notify=True`` (the
    default) kernel change notifications wake the watch early where the platform and file system
    send them (:mod:`airflow_trigger_kit.hub.inotify`); what it reports is always what a poll
    finds. Parameters are listed in
    ``docs/directory.md``; the common ones (``namespace``, ``name``, ``mode``, ``start_from``,
    ``poll_interval``, ``max_items``, retries) in :class:`~airflow_trigger_kit.settings.WatchSettings`.

    Errors: a directory that does not exist is waited for (logged once); a directory that cannot be
    read, or a path that is not a directory, is permanent and fails the trigger with its path.
    Filesystem errors of single files (vanished between listing and stat) are skipped.
    """

    source_kind = "directory"

    def __init__(
        self,
        *,
        directories: str | Sequence[str],
        namespace: str,
        name: str,
        patterns: str | Sequence[str] = ("*",),
        recursive: bool = False,
        ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
        event_kinds: str | Sequence[str] = ("created",),
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
        poll_interval: float = 5.0,
        notify: bool = True,
        **common: Unpack[CommonTriggerKwargs],
    ) -> None:
        self.config = DirectoryWatchConfig.create(
            directories=directories,
            patterns=patterns,
            recursive=recursive,
            ignore_patterns=ignore_patterns,
            event_kinds=event_kinds,
            settle_seconds=settle_seconds,
            lookback_seconds=lookback_seconds,
            notify=notify,
        )
        settings = WatchSettings(namespace=namespace, name=name, poll_interval=poll_interval, **common)
        super().__init__(source_kwargs=self.config.to_kwargs(), settings=settings)

    def build_source(self) -> Source:
        return DirectorySource(self.config)

    async def subscribe(self) -> Subscription:
        """Directory watches share the hub's listings: each directory listed once for all waits."""
        from airflow_trigger_kit.hub import get_hub

        return get_hub().directories.subscribe(self.config)
