"""Wiring a watcher trigger to an ``Asset`` through an ``AssetWatcher``."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetWatcher
from airflow.triggers.base import BaseEventTrigger

from airflow_trigger_kit.triggers.base import IncrementalTrigger


def watched_asset(
    name: str,
    trigger: IncrementalTrigger,
    *,
    uri: str | None = None,
    group: str = "asset",
    extra: dict[str, Any] | None = None,
) -> Asset:
    """An ``Asset`` named ``name`` whose ``AssetWatcher`` runs ``trigger`` (which must be a watcher)."""
    if trigger.settings.mode != "watcher" or not isinstance(trigger, BaseEventTrigger):
        raise ValueError(f"trigger must have mode='watcher' to drive an asset, got mode={trigger.settings.mode!r}")
    watcher = AssetWatcher(name=f"{name}_watcher", trigger=trigger)
    kwargs: dict[str, Any] = {"name": name, "group": group, "extra": extra or {}, "watchers": [watcher]}
    if uri is not None:
        kwargs["uri"] = uri
    return Asset(**kwargs)
