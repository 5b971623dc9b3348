"""An event-driven DAG: runs whenever orders are inserted or updated in Postgres.

The asset's AssetWatcher runs a PostgresRowsTrigger in the triggerer. It commits its cursor only
after Airflow stored each event, so rows are never lost across triggerer restarts; a batch
delivered again after a crash carries the same dedup ids, which ``items_from_events`` folds.
Several events may have queued up before a run starts: the task reads the rows of all of them.

The connection (``TRIGGER_KIT_DEMO_PG_CONN_ID``, default ``trigger_kit_orders``) is looked up by the
triggerer, so this file parses without a database. The table is the one described in
``postgres_sensor_dag.py``.

Change notifications: the table's statement-level trigger (``docs/postgres.md``, "Change
notifications") calls ``pg_notify('trigger_kit_orders', ...)`` after each insert or update, and the
triggerer LISTENs on that channel, so a run starts tens of milliseconds after the COMMIT. Without
the trigger, rows are still found, by the poll every ``reconcile_interval`` (60 s) while the
listener is up, or every ``poll_interval`` while it is down.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_trigger_kit.assets import items_from_events
from airflow_trigger_kit.assets.postgres import postgres_asset

POSTGRES_CONN_ID = os.environ.get("TRIGGER_KIT_DEMO_PG_CONN_ID", "trigger_kit_orders")

order_rows = postgres_asset(
    "trigger_kit_order_rows",
    table="public.orders",
    columns=["id", "customer", "amount", "status", "updated_at"],
    watermark_columns=["updated_at", "id"],
    postgres_conn_id=POSTGRES_CONN_ID,
    notify_channel="trigger_kit_orders",
    poll_interval=5,
    max_items=500,
)

with DAG(
    dag_id="trigger_kit_postgres_asset",
    description="Loads the order rows named in the Postgres watcher's asset events.",
    schedule=[order_rows],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["trigger-kit", "example"],
) as dag:

    @task
    def load_orders(**context: Any) -> dict[str, Any]:
        """Upsert-style processing: the latest version of each order wins, repeats fold by dedup id."""
        latest: dict[str, dict[str, Any]] = {}
        for item in items_from_events(context, order_rows):
            latest[item["key"]["id"]] = item["row"]
        cancelled = sorted(int(k) for k, row in latest.items() if row["status"] == "cancelled")
        summary = {"orders": len(latest), "cancelled": cancelled}
        print(f"loaded {summary['orders']} order(s); cancelled: {cancelled}")
        return summary

    load_orders()
