"""The event payload: one shape for every source, for sensors (XCom) and watchers (asset events).

```
{
  "source": "directory" | "s3" | "postgres",
  "watch": {"namespace": ..., "name": ...},          # the ProcessState identity
  "items": [{..., "dedup_id": ...}, ...],            # at most max_items
  "dedup_ids": [...],
  "cursor_range": {"from": <summary>, "to": <summary>},
  "detected_at": "2026-01-01T00:00:00+00:00",
  "more": false,                                     # true: more items follow in the next event
  "commit": {"key": "cursor", "expected_version": n, "cursor": <cursor>}   # sensors only
}
```
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Batch

CURSOR_KEY = "cursor"
"""The ProcessState key under which every watch keeps its cursor."""


def build_payload(
    *,
    source_kind: str,
    namespace: str,
    name: str,
    batch: Batch,
    cursor_from: JSON,
    cursor_to: JSON,
    commit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    items = [item.to_json() for item in batch.items]
    payload: dict[str, Any] = {
        "source": source_kind,
        "watch": {"namespace": namespace, "name": name},
        "items": items,
        "dedup_ids": [item.dedup_id for item in batch.items],
        "cursor_range": {"from": cursor_from, "to": cursor_to},
        "detected_at": datetime.now(timezone.utc).isoformat(),
        "more": batch.more,
    }
    if commit is not None:
        payload["commit"] = commit
    return payload


def error_payload(*, source_kind: str, namespace: str, name: str, message: str) -> dict[str, Any]:
    return {
        "status": "error",
        "source": source_kind,
        "watch": {"namespace": namespace, "name": name},
        "message": message,
    }
