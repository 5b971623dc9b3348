"""The Postgres example DAGs: the sensor DAG under dag.test(), the asset DAG on a real watcher event."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers.delivery import WatermarkProducer
from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger
from devtools.feeders import ORDERS_NOTIFY_SQL
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import execute, use_connection

pytestmark = pytest.mark.integration

DAGS = Path(__file__).parents[2] / "dags"
ORDERS = """
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_updated_at_id ON public.orders (updated_at, id);
INSERT INTO orders (customer, amount) VALUES ('before', 100);
"""


def load_dag_module(path: Path) -> ModuleType:
    name = f"pg_example_dag_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_example_dags_parse_without_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TRIGGER_KIT_ORDERS", raising=False)
    sensor_dag = load_dag_module(DAGS / "postgres_sensor_dag.py").dag
    assert sensor_dag.task_dict["wait_for_orders"].deferrable is True
    asset_module = load_dag_module(DAGS / "postgres_asset_dag.py")
    (watcher,) = asset_module.order_rows.watchers
    assert isinstance(watcher.trigger, PostgresRowsTrigger) and watcher.trigger.settings.mode == "watcher"
    assert watcher.trigger.serialize()[1]["postgres_conn_id"] == "trigger_kit_orders"
    assert watcher.trigger.serialize()[1]["notify_channel"] == "trigger_kit_orders"


def test_sensor_dag_defers_resumes_and_totals_the_new_orders(
    airflow_db: str,
    pg_db: PgDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    use_connection(monkeypatch, "trigger_kit_orders", pg_db.dsn)
    asyncio.run(execute(pg_db.dsn, ORDERS))
    module = load_dag_module(DAGS / "postgres_sensor_dag.py")
    state = ProcessState("trigger_kit_postgres_sensor", "wait_for_orders")

    def insert_orders_once_deferred() -> None:
        """Insert after the sensor stored its "now" baseline and deferred (always, so dag.test ends)."""
        deadline = time.monotonic() + 120
        while state.get(CURSOR_KEY) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # the first poll, right after the baseline, finds nothing and defers
        asyncio.run(
            execute(
                pg_db.dsn,
                "INSERT INTO orders (customer, amount, status) VALUES ('acme', 10.50, 'new'), ('acme', 4.25, 'new'), "
                "('globex', 7, 'paid'), ('initech', 99, 'cancelled')",
            )
        )

    inserter = threading.Thread(target=insert_orders_once_deferred, daemon=True)
    inserter.start()
    try:
        dag_run: Any = module.dag.test()
    finally:
        inserter.join(timeout=150)
    assert dag_run.state == "success"
    logged = caplog.text + capsys.readouterr().out
    assert "running trigger in line" in logged, "the sensor deferred to its trigger"
    sensor_ti = dag_run.get_task_instance("wait_for_orders")
    assert sensor_ti.next_method is None
    report = dag_run.get_task_instance("process_orders").xcom_pull(task_ids="process_orders")
    assert report == {"orders": 3, "totals": {"acme": "14.75", "globex": "7.00"}, "more_waiting": False}
    entry = state.get(CURSOR_KEY)
    assert entry is not None and entry.version == 2, "baseline, then the committed watermark"
    assert entry.value["pos"][1] == "4", "the last reported order (id 5 is cancelled, outside the filter)"


async def test_asset_dag_loads_the_rows_of_a_real_watcher_event(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, "trigger_kit_orders", pg_db.dsn)
    await execute(pg_db.dsn, ORDERS + ORDERS_NOTIFY_SQL)  # the DAG listens: the table notifies
    module = load_dag_module(DAGS / "postgres_asset_dag.py")
    (watcher,) = module.order_rows.watchers
    _, kwargs = watcher.trigger.serialize()
    kwargs["name"] = f"order-rows-{pg_db.name}"  # a fresh watermark for this test
    producer = WatermarkProducer(PostgresRowsTrigger(**{**kwargs, "poll_interval": 0.1}))
    stream = producer.open_stream()
    first = asyncio.ensure_future(stream.__anext__())
    try:
        await asyncio.sleep(0.5)
        await execute(
            pg_db.dsn,
            "BEGIN; INSERT INTO orders (customer, amount) VALUES ('acme', 1), ('globex', 2); "
            "UPDATE orders SET status = 'cancelled', updated_at = clock_timestamp() WHERE customer = 'globex'; "
            "COMMIT",
        )
        raw_event, _ = await asyncio.wait_for(first, 15)
    finally:
        if not first.done():
            first.cancel()
        await stream.aclose()
    event = SimpleNamespace(extra={"from_trigger": True, "payload": raw_event}, timestamp=datetime.now(timezone.utc))
    repeat = SimpleNamespace(extra={"from_trigger": True, "payload": raw_event}, timestamp=datetime.now(timezone.utc))
    context = {"triggering_asset_events": {module.order_rows: [event, repeat]}}
    summary = module.dag.get_task("load_orders").python_callable(**context)
    assert summary == {"orders": 2, "cancelled": [3]}
