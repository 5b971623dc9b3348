"""Wait for new or updated orders with one deferrable sensor, then total them per customer.

The sensor frees its worker slot while it waits (it defers to the triggerer), reports each order
row once, and commits its watermark when it finishes, so the next run sees only orders inserted
or updated after these. Orders committed late by slow transactions are still reported: the
default ``lookback`` window re-checks the last five minutes of ``updated_at``.

The connection (``TRIGGER_KIT_DEMO_PG_CONN_ID``, default ``trigger_kit_orders``) is looked up when
the sensor runs, so this file parses without a database. The table it watches::

    CREATE TABLE public.orders (
        id bigserial PRIMARY KEY,
        customer text NOT NULL,
        amount numeric(12, 2) NOT NULL,
        status text NOT NULL DEFAULT 'new',
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX orders_updated_at_id ON public.orders (updated_at, id);
"""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal
from typing import Any

from airflow.sdk import DAG, task

from airflow_trigger_kit.sensors.postgres import PostgresRowsSensor

POSTGRES_CONN_ID = os.environ.get("TRIGGER_KIT_DEMO_PG_CONN_ID", "trigger_kit_orders")

with DAG(
    dag_id="trigger_kit_postgres_sensor",
    description="A deferrable sensor waits for new orders in Postgres; a task totals them per customer.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["trigger-kit", "example"],
) as dag:
    wait_for_orders = PostgresRowsSensor(
        task_id="wait_for_orders",
        postgres_conn_id=POSTGRES_CONN_ID,
        table="public.orders",
        columns=["id", "customer", "amount", "status", "updated_at"],
        watermark_columns=["updated_at", "id"],
        filter="status <> 'cancelled'",
        max_items=1000,
        deferrable=True,
        poke_interval=5,
        timeout=60 * 60,
    )

    @task
    def process_orders(found: dict[str, Any]) -> dict[str, Any]:
        """Total the reported orders per customer (amounts arrive as exact decimal strings)."""
        totals: dict[str, Decimal] = {}
        for item in found["items"]:
            row = item["row"]
            totals[row["customer"]] = totals.get(row["customer"], Decimal("0")) + Decimal(row["amount"])
        report = {
            "orders": len(found["items"]),
            "totals": {customer: str(total) for customer, total in sorted(totals.items())},
            "more_waiting": found["more"],
        }
        print(f"processed {report['orders']} order(s): {report['totals']}")
        return report

    process_orders(wait_for_orders.output)
