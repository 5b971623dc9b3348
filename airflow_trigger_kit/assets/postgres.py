"""``postgres_asset``: an ``Asset`` that receives an event whenever rows of a table are inserted or updated.

```python
from airflow.sdk import DAG, task
from airflow_trigger_kit.assets import items_from_events
from airflow_trigger_kit.assets.postgres import postgres_asset

orders = postgres_asset(
    "orders_rows", table="public.orders", watermark_columns=["updated_at", "id"], postgres_conn_id="orders_db"
)

with DAG("process_orders", schedule=[orders]):
    @task
    def process(**context):
        for item in items_from_events(context, orders):
            ...  # item["row"], item["key"], item["watermark"], item["dedup_id"]
```

The watcher commits its cursor only after Airflow stored each event, so rows are never lost across
triggerer restarts; a batch delivered again after a crash carries the same dedup ids, which
``items_from_events`` folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset

from airflow_trigger_kit.assets.base import watched_asset
from airflow_trigger_kit.settings import ASSET_NAMESPACE, DEFAULT_MIN_EVENT_SPACING, StartFrom
from airflow_trigger_kit.sources.postgres import DEFAULT_STATEMENT_TIMEOUT
from airflow_trigger_kit.triggers.postgres import DEFAULT_POSTGRES_CONN_ID, PostgresRowsTrigger


def postgres_asset(
    name: str,
    *,
    table: str | Sequence[str] | None = None,
    detection: str = "watermark",
    columns: str | Sequence[str] | None = None,
    watermark_columns: str | Sequence[str] | None = None,
    key_columns: str | Sequence[str] | None = None,
    filter: str | None = None,
    query: str | None = None,
    xid_column: str | None = None,
    lookback: float | None = None,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
    notify_channel: str | None = None,
    start_from: StartFrom = "now",
    poll_interval: float = 30.0,
    max_items: int = 500,
    reconcile_interval: float = 60.0,
    min_event_spacing: float = DEFAULT_MIN_EVENT_SPACING,
    backlog_max_items: int | None = None,
    retry_base_seconds: float = 1.0,
    retry_max_seconds: float = 60.0,
    uri: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Asset:
    """An asset whose ``AssetWatcher`` runs a :class:`PostgresRowsTrigger` in the triggerer.

    Parameters as :class:`~airflow_trigger_kit.triggers.postgres.PostgresRowsTrigger`; ``uri`` and
    ``extra`` are the asset's. The cursor is kept in ProcessState under namespace ``"assets"`` and
    the asset's name, so renaming the asset starts a new watch (from ``start_from``).
    """

    trigger = PostgresRowsTrigger(
        namespace=ASSET_NAMESPACE,
        name=name,
        table=table,
        detection=detection,
        columns=columns,
        watermark_columns=watermark_columns,
        key_columns=key_columns,
        filter=filter,
        query=query,
        xid_column=xid_column,
        lookback=lookback,
        statement_timeout=statement_timeout,
        postgres_conn_id=postgres_conn_id,
        notify_channel=notify_channel,
        mode="watcher",
        start_from=start_from,
        poll_interval=poll_interval,
        max_items=max_items,
        reconcile_interval=reconcile_interval,
        min_event_spacing=min_event_spacing,
        backlog_max_items=backlog_max_items,
        retry_base_seconds=retry_base_seconds,
        retry_max_seconds=retry_max_seconds,
    )
    return watched_asset(name, trigger, uri=uri, extra=extra)


__all__ = ["postgres_asset"]
