"""Deferrable S3 sensor: wait for new objects under a landing prefix, then process exactly those.

Each run waits (in the triggerer, without holding a worker slot) until objects that no earlier run
reported appear under the prefix, hands them to ``process`` and ends; ``@continuous`` starts the
next wait right away. The watermark is committed when the sensor finishes (``commit="auto"``), so
a crash before that makes the same objects (with the same ``dedup_id``) come back. The bucket is
never modified: nothing is deleted or moved to avoid re-triggering.

Configuration comes from environment variables so that the DAG parses without S3 and without the
connection (it is looked up only when the sensor runs):

- ``TRIGGER_KIT_S3_BUCKET`` (default ``landing-bucket``)
- ``TRIGGER_KIT_S3_PREFIX`` (default ``landing/``)
- ``TRIGGER_KIT_S3_CONN_ID`` (default ``aws_default``; a missing ``aws_default`` means botocore's
  default credential chain)
- ``TRIGGER_KIT_S3_POKE_INTERVAL`` (seconds between polls, default 60: one LIST request per 1,000
  objects under the prefix per poll with ``key_order="any"``)
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor

BUCKET = os.environ.get("TRIGGER_KIT_S3_BUCKET", "landing-bucket")
PREFIX = os.environ.get("TRIGGER_KIT_S3_PREFIX", "landing/")
CONN_ID = os.environ.get("TRIGGER_KIT_S3_CONN_ID", "aws_default")
POKE_INTERVAL = float(os.environ.get("TRIGGER_KIT_S3_POKE_INTERVAL", "60"))

with DAG(
    dag_id="trigger_kit_s3_sensor",
    schedule="@continuous",
    max_active_runs=1,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["trigger-kit", "s3"],
    doc_md=__doc__,
) as dag:
    wait_for_objects = S3ObjectsSensor(
        task_id="wait_for_objects",
        bucket=BUCKET,
        prefixes=PREFIX,
        glob=["*.csv", "*.json"],
        min_size=1,
        key_order="any",
        aws_conn_id=CONN_ID,
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=24 * 3600,
        max_items=500,
    )

    @task
    def process(payload: dict[str, Any]) -> list[str]:
        """Handle the reported objects; ``dedup_id`` makes a repeat after a crash recognisable."""
        keys = []
        for item in payload["items"]:
            print(f"{item['kind']}: {item['uri']} ({item['size']} bytes, ETag {item['etag']}, id {item['dedup_id']})")
            keys.append(item["key"])
        return keys

    process(wait_for_objects.output)
