"""The S3 example DAGs: the sensor DAG defers, resumes and commits under dag.test(); the asset DAG
parses without S3 or a connection and its task reads the objects behind the triggering events."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from airflow_trigger_kit.payload import CURSOR_KEY
from tests.s3_support import create_bucket, s3_client, unique_bucket, use_connection

pytestmark = pytest.mark.integration

DAGS = Path(__file__).parents[2] / "dags"


def load_dag_module(path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    name = f"s3_example_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_s3_dags_parse_without_s3_or_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT", raising=False)
    sensor_module = load_dag_module(DAGS / "s3_sensor_dag.py", monkeypatch)
    asset_module = load_dag_module(DAGS / "s3_asset_dag.py", monkeypatch)
    sensor = sensor_module.dag.get_task("wait_for_objects")
    assert (sensor.bucket, sensor.prefixes, sensor.aws_conn_id) == ("landing-bucket", "landing/", "aws_default")
    assert sensor.deferrable is True
    (watcher,) = asset_module.landing_objects.watchers
    _, kwargs = watcher.trigger.serialize()
    assert (kwargs["bucket"], kwargs["prefixes"], kwargs["aws_conn_id"]) == (
        "landing-bucket",
        ["events/"],
        "aws_default",
    )
    assert kwargs["mode"] == "watcher" and kwargs["namespace"] == "assets"


async def test_asset_dag_task_reads_the_objects_of_the_triggering_events(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = unique_bucket("asset")
    await create_bucket(s3_endpoint, bucket, ["events/a.parquet", "events/skip.csv"])
    conn_id = use_connection(monkeypatch, s3_endpoint, conn_id="s3_asset_example")
    module = load_dag_module(
        DAGS / "s3_asset_dag.py", monkeypatch, TRIGGER_KIT_S3_BUCKET=bucket, TRIGGER_KIT_S3_CONN_ID=conn_id
    )
    asset = module.landing_objects
    (watcher,) = asset.watchers
    t = watcher.trigger
    src = t.build_source()
    try:
        first = await src.poll(None, 100)
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key="events/b.parquet", Body=b"pq")
        second = await src.poll(first.cursor, 100)
    finally:
        await src.aclose()
    # What Airflow stores for a watcher event: extra = {"from_trigger": True, "payload": ...}.
    events = [
        SimpleNamespace(extra={"from_trigger": True, "payload": t.payload(src, batch, None)}, timestamp=n)
        for n, batch in enumerate([first, second, first])  # the last one: a redelivery after a crash
    ]
    load = module.dag.get_task("load")
    uris = load.python_callable(triggering_asset_events={asset: events})
    assert uris == [f"s3://{bucket}/events/a.parquet", f"s3://{bucket}/events/b.parquet"]


def test_sensor_dag_defers_resumes_and_hands_the_new_objects_to_the_task(
    airflow_db: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_trigger_kit.state import ProcessState

    bucket = unique_bucket("sensor-dag")
    asyncio.run(create_bucket(s3_endpoint, bucket, ["landing/before.csv"]))
    conn_id = use_connection(monkeypatch, s3_endpoint, conn_id="s3_sensor_example")
    module = load_dag_module(
        DAGS / "s3_sensor_dag.py",
        monkeypatch,
        TRIGGER_KIT_S3_BUCKET=bucket,
        TRIGGER_KIT_S3_CONN_ID=conn_id,
        TRIGGER_KIT_S3_POKE_INTERVAL="0.5",
    )
    expected = ["landing/2026/orders.csv", "landing/2026/refunds.json"]
    deferred = threading.Event()
    finished = threading.Event()
    caplog.set_level(logging.INFO, logger="airflow.sdk.definitions.dag")

    def trigger_started() -> bool:
        return any("running trigger in line" in r.getMessage() for r in list(caplog.records))

    def land_once_deferred() -> None:
        """Upload only once the sensor deferred, so the trigger (not the worker's check) finds them."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not finished.is_set():
            if trigger_started():
                deferred.set()
                time.sleep(0.5)
                break
            time.sleep(0.1)

        async def upload() -> None:
            async with s3_client(s3_endpoint) as client:
                await client.put_object(Bucket=bucket, Key="landing/2026/notes.txt", Body=b"not matched")
                for key in expected:
                    await client.put_object(Bucket=bucket, Key=key, Body=b"id\n1\n")

        asyncio.run(upload())  # also on timeout, so that a failing test cannot hang

    lander = threading.Thread(target=land_once_deferred, daemon=True)
    lander.start()
    try:
        dag_run: Any = module.dag.test()
    finally:
        finished.set()
        lander.join()
    assert deferred.is_set(), "the sensor never deferred"
    assert dag_run.state == "success"
    sensor_ti = dag_run.get_task_instance("wait_for_objects")
    assert sensor_ti.next_method is None and sensor_ti.try_number >= 1
    first_keys = dag_run.get_task_instance("process").xcom_pull(task_ids="process")
    # The trigger may poll between the two uploads: then the second object comes with the next run.
    # Never before.csv (there before the first run) nor notes.txt (not matched).
    assert first_keys and set(first_keys) <= set(expected), first_keys
    entry = ProcessState("trigger_kit_s3_sensor", "wait_for_objects").get(CURSOR_KEY)
    assert entry is not None and entry.version == 2, "baseline, then the committed watermark"

    # The next run starts from the committed watermark: nothing reported comes back, nothing is missed.
    def land_one() -> None:
        async def upload() -> None:
            async with s3_client(s3_endpoint) as client:
                await client.put_object(Bucket=bucket, Key="landing/2026/late.csv", Body=b"id\n2\n")

        asyncio.run(upload())

    land_one()  # before the run: found by the check on the worker, no deferral needed
    caplog.clear()
    second: Any = module.dag.test()
    assert not trigger_started(), "the second run should have found the object without deferring"
    assert second.state == "success"
    second_keys = second.get_task_instance("process").xcom_pull(task_ids="process")
    assert sorted(first_keys + second_keys) == sorted([*expected, "landing/2026/late.csv"])  # each once
    assert ProcessState("trigger_kit_s3_sensor", "wait_for_objects").get(CURSOR_KEY).version == 3
