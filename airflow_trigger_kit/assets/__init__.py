"""Event-driven DAGs: build an ``Asset`` with its ``AssetWatcher`` wired, and read what it reported.

```python
from airflow.sdk import DAG, task
from airflow_trigger_kit.assets import directory_asset, items_from_events

uploads = directory_asset("client_uploads", directories=["/data/in/a", "/data/in/b"], patterns="*.csv")

with DAG("process_uploads", schedule=[uploads]):
    @task
    def process(**context):
        for item in items_from_events(context, uploads):
            ...  # item["path"], item["dedup_id"], ...
```

A watcher's trigger event is stored by Airflow as an asset event whose ``extra`` is
``{"from_trigger": True, "payload": <the event payload>}``; the helpers below read it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, AssetWatcher

from airflow_trigger_kit.sources.directory import DEFAULT_IGNORE_PATTERNS
from airflow_trigger_kit.triggers.base import IncrementalTrigger
from airflow_trigger_kit.triggers.directory import MultiDirectoryTrigger

ASSET_NAMESPACE = "assets"
"""ProcessState namespace of watchers built here; the state name is the asset name."""


def watched_asset(
    name: str,
    trigger: IncrementalTrigger,
    *,
    uri: str | None = None,
    group: str = "asset",
    extra: dict[str, Any] | None = None,
) -> Asset:
    """An ``Asset`` named ``name`` whose ``AssetWatcher`` runs ``trigger`` (which must be a watcher)."""
    if trigger.settings.mode != "watcher":
        raise ValueError(f"trigger must have mode='watcher' to drive an asset, got mode={trigger.settings.mode!r}")
    watcher = AssetWatcher(name=f"{name}_watcher", trigger=trigger)
    kwargs: dict[str, Any] = {"name": name, "group": group, "extra": extra or {}, "watchers": [watcher]}
    if uri is not None:
        kwargs["uri"] = uri
    return Asset(**kwargs)


def directory_asset(
    name: str,
    *,
    directories: str | Sequence[str],
    patterns: str | Sequence[str] = ("*",),
    recursive: bool = False,
    ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
    event_kinds: str | Sequence[str] = ("created",),
    settle_seconds: float = 5.0,
    lookback_seconds: float = 60.0,
    start_from: str = "now",
    poll_interval: float = 5.0,
    max_items: int = 500,
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
    )
    return watched_asset(name, trigger, uri=uri, extra=extra)


def payloads_from_events(source: Mapping[Any, Any] | Any, asset: Asset | None = None) -> list[dict[str, Any]]:
    """The event payloads behind a run: from a task context or its ``triggering_asset_events``.

    Only events emitted by this package's watchers are returned, oldest first; pass ``asset`` to
    keep one asset's events.
    """
    events_by_asset = source.get("triggering_asset_events", source) if isinstance(source, Mapping) else source
    if events_by_asset is None:
        return []
    keys: Iterable[Any] = [asset] if asset is not None else list(events_by_asset.keys())
    payloads: list[tuple[Any, dict[str, Any]]] = []
    for key in keys:
        for event in events_by_asset[key]:
            extra = getattr(event, "extra", None) or {}
            payload = extra.get("payload")
            if isinstance(payload, dict) and "items" in payload and "watch" in payload:
                payloads.append((getattr(event, "timestamp", None), payload))
    payloads.sort(key=lambda pair: (pair[0] is None, pair[0]))
    return [payload for _, payload in payloads]


def items_from_events(
    source: Mapping[Any, Any] | Any, asset: Asset | None = None, *, dedup: bool = True
) -> list[dict[str, Any]]:
    """Every item reported by the events that triggered this run, oldest first.

    With ``dedup=True`` an item delivered twice (a redelivery after a crash carries the same
    ``dedup_id``) appears once.
    """
    seen: set[str] = set()
    items: list[dict[str, Any]] = []
    for payload in payloads_from_events(source, asset):
        for item in payload["items"]:
            if dedup:
                if item["dedup_id"] in seen:
                    continue
                seen.add(item["dedup_id"])
            items.append(item)
    return items


from airflow_trigger_kit.assets.postgres import postgres_asset  # noqa: E402 - defined on top of watched_asset
from airflow_trigger_kit.assets.s3 import s3_asset  # noqa: E402 - defined on top of watched_asset

__all__ = [
    "ASSET_NAMESPACE",
    "directory_asset",
    "items_from_events",
    "payloads_from_events",
    "postgres_asset",
    "s3_asset",
    "watched_asset",
]
