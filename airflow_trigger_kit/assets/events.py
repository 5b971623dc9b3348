"""Reading back what a watcher reported, in the task a triggering asset event started."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset


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
