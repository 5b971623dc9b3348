"""The stored cursor: its envelope (version, layout) and its validation against the configuration."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow_trigger_kit.sources.base import JSON, PermanentSourceError
from airflow_trigger_kit.sources.s3.config import S3WatchConfig

CURSOR_VERSION = 1


def empty_cursor(config: S3WatchConfig) -> dict[str, JSON]:
    return {"v": CURSOR_VERSION, "layout": config.layout, "prefixes": {}}


def check_cursor(config: S3WatchConfig, cursor: JSON) -> dict[str, JSON]:
    """The stored cursor, validated against the configuration (a mismatch is permanent)."""
    if (
        not isinstance(cursor, dict)
        or cursor.get("v") != CURSOR_VERSION
        or not isinstance(cursor.get("prefixes"), dict)
    ):
        raise PermanentSourceError(
            f"the stored cursor is not an S3-watch cursor (version {CURSOR_VERSION}): {str(cursor)[:200]!r}; "
            "reset it with `trigger-kit state reset NAMESPACE NAME`"
        )
    if cursor.get("layout") != config.layout:
        raise PermanentSourceError(
            f"key_order/event_kinds changed: the stored cursor has the {cursor.get('layout')!r} layout but "
            f"key_order={config.key_order!r} with event_kinds={list(config.event_kinds)} needs {config.layout!r}; "
            "reset the watch with `trigger-kit state reset NAMESPACE NAME` (choosing start_from) to switch"
        )
    return cursor


def iso_seconds(seconds: Any) -> str | None:
    if not isinstance(seconds, int) or seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()
