"""Event-driven DAG on an S3 asset: runs whenever objects land under a prefix, and reads them.

``s3_asset`` builds an ``Asset`` whose ``AssetWatcher`` runs an ``S3ObjectsTrigger`` in the
triggerer. The trigger lists the prefix every ``poll_interval`` seconds (or, with an SQS queue of
the bucket's event notifications, whenever one arrives) and emits one asset event
per batch of new objects; its watermark is committed only after Airflow stored that event, so no
object is lost across triggerer restarts (a repeat after a crash carries the same ``dedup_id``).
The task reads the objects behind its run with ``items_from_events``.

Configuration comes from environment variables so that the DAG parses without S3 and without the
connection (it is looked up only in the triggerer):

- ``TRIGGER_KIT_S3_BUCKET`` (default ``landing-bucket``)
- ``TRIGGER_KIT_S3_ASSET_PREFIX`` (default ``events/``)
- ``TRIGGER_KIT_S3_CONN_ID`` (default ``aws_default``)
- ``TRIGGER_KIT_S3_SQS_QUEUE_URL`` (default: none) — an SQS queue receiving the bucket's event
  notifications: a new object wakes the watch at once, and the prefix is listed only every
  ``reconcile_interval`` (60 s) otherwise; without it, every ``poll_interval``.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_trigger_kit.assets import items_from_events
from airflow_trigger_kit.assets.s3 import s3_asset

BUCKET = os.environ.get("TRIGGER_KIT_S3_BUCKET", "landing-bucket")
PREFIX = os.environ.get("TRIGGER_KIT_S3_ASSET_PREFIX", "events/")
CONN_ID = os.environ.get("TRIGGER_KIT_S3_CONN_ID", "aws_default")
SQS_QUEUE_URL = os.environ.get("TRIGGER_KIT_S3_SQS_QUEUE_URL") or None

landing_objects = s3_asset(
    "trigger_kit_s3_landing_objects",
    bucket=BUCKET,
    prefixes=PREFIX,
    glob="*.parquet",
    aws_conn_id=CONN_ID,
    sqs_queue_url=SQS_QUEUE_URL,
    poll_interval=30,
    max_items=200,
)

with DAG(
    dag_id="trigger_kit_s3_asset",
    schedule=[landing_objects],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["trigger-kit", "s3"],
    doc_md=__doc__,
) as dag:

    @task
    def load(**context: Any) -> list[str]:
        """Load every object reported by the asset events that triggered this run (deduplicated)."""
        uris = []
        for item in items_from_events(context, landing_objects):
            print(f"loading {item['uri']} ({item['size']} bytes, ETag {item['etag']}, id {item['dedup_id']})")
            uris.append(item["uri"])
        return uris

    load()
