"""``s3_asset``: an ``Asset`` that receives an event whenever objects land under S3 prefixes.

```python
from airflow.sdk import DAG, task
from airflow_trigger_kit.assets import items_from_events
from airflow_trigger_kit.assets.s3 import s3_asset

landing = s3_asset("landing_objects", bucket="data-lake", prefixes="landing/", glob="*.parquet")

with DAG("load_landing", schedule=[landing]):
    @task
    def load(**context):
        for item in items_from_events(context, landing):
            ...  # item["bucket"], item["key"], item["etag"], item["dedup_id"], ...
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset

from airflow_trigger_kit.assets.base import watched_asset
from airflow_trigger_kit.aws_connection import DEFAULT_AWS_CONN_ID
from airflow_trigger_kit.settings import ASSET_NAMESPACE, DEFAULT_MIN_EVENT_SPACING, StartFrom
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger


def s3_asset(
    name: str,
    *,
    bucket: str,
    prefixes: str | Sequence[str] = "",
    glob: str | Sequence[str] | None = None,
    regex: str | None = None,
    min_size: int = 0,
    event_kinds: str | Sequence[str] = ("created",),
    key_order: str = "any",
    lookback_seconds: float = 3600,
    legacy_bucket_name: bool = False,
    sqs_queue_url: str | None = None,
    aws_conn_id: str | None = DEFAULT_AWS_CONN_ID,
    start_from: StartFrom = "now",
    poll_interval: float = 30.0,
    max_items: int = 500,
    reconcile_interval: float = 60.0,
    min_event_spacing: float = DEFAULT_MIN_EVENT_SPACING,
    uri: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Asset:
    """An asset whose ``AssetWatcher`` runs an :class:`~airflow_trigger_kit.triggers.s3.S3ObjectsTrigger`.

    The S3 parameters (``sqs_queue_url`` included: S3 event notifications through SQS wake the
    watch at once, see ``docs/s3.md``) are those of the trigger; ``reconcile_interval`` the seconds
    between polls while those notifications are live; ``start_from``, ``poll_interval`` and
    ``max_items`` those of :class:`~airflow_trigger_kit.settings.WatchSettings`. The watermark is
    kept in ProcessState under namespace ``"assets"`` and the asset's name, and is committed only
    after Airflow stored the asset event that reports the objects (at-least-once; a repeat after a
    crash carries the same dedup ids). ``uri`` and ``extra`` are passed to the ``Asset``.
    """

    trigger = S3ObjectsTrigger(
        bucket=bucket,
        prefixes=prefixes,
        glob=glob,
        regex=regex,
        min_size=min_size,
        event_kinds=event_kinds,
        key_order=key_order,
        lookback_seconds=lookback_seconds,
        legacy_bucket_name=legacy_bucket_name,
        sqs_queue_url=sqs_queue_url,
        aws_conn_id=aws_conn_id,
        namespace=ASSET_NAMESPACE,
        name=name,
        mode="watcher",
        start_from=start_from,
        poll_interval=poll_interval,
        max_items=max_items,
        reconcile_interval=reconcile_interval,
        min_event_spacing=min_event_spacing,
    )
    return watched_asset(name, trigger, uri=uri, extra=extra)


__all__ = ["s3_asset"]
