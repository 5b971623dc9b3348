"""``directory_asset``: an asset fed by a multi-directory watch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset

from airflow_trigger_kit.assets.base import watched_asset
from airflow_trigger_kit.settings import ASSET_NAMESPACE, DEFAULT_MIN_EVENT_SPACING
from airflow_trigger_kit.sources.directory import (
    DEFAULT_IGNORE_PATTERNS,
    DEFAULT_LOOKBACK_SECONDS,
    DEFAULT_SETTLE_SECONDS,
)
from airflow_trigger_kit.triggers.directory import MultiDirectoryTrigger


def directory_asset(
    name: str,
    *,
    directories: str | Sequence[str],
    patterns: str | Sequence[str] = ("*",),
    recursive: bool = False,
    ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
    event_kinds: str | Sequence[str] = ("created",),
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    start_from: str = "now",
    poll_interval: float = 5.0,
    max_items: int = 500,
    reconcile_interval: float = 60.0,
    min_event_spacing: float = DEFAULT_MIN_EVENT_SPACING,
    notify: bool = True,
    uri: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Asset:
    """An asset that receives an event whenever files land in ``directories``.

    The watermark is kept in ProcessState under namespace ``"assets"`` and the asset's name.
    """
    trigger = MultiDirectoryTrigger(
        directories=directories,
        patterns=patterns,
        recursive=recursive,
        ignore_patterns=ignore_patterns,
        event_kinds=event_kinds,
        settle_seconds=settle_seconds,
        lookback_seconds=lookback_seconds,
        namespace=ASSET_NAMESPACE,
        name=name,
        mode="watcher",
        start_from=start_from,  # type: ignore[arg-type]
        poll_interval=poll_interval,
        max_items=max_items,
        reconcile_interval=reconcile_interval,
        min_event_spacing=min_event_spacing,
        notify=notify,
    )
    return watched_asset(name, trigger, uri=uri, extra=extra)
