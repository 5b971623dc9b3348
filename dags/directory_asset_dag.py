"""An event-driven DAG: runs whenever files land in the client upload directories.

The asset's AssetWatcher runs a MultiDirectoryTrigger in the triggerer. It commits its watermark
only after Airflow stored each event, so files are never lost across triggerer restarts; a file
delivered twice after a crash carries the same dedup id, which `items_from_events` folds.

Set TRIGGER_KIT_DEMO_ROOT to move the upload directories (default /tmp/trigger-kit-demo).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_trigger_kit.assets import directory_asset, items_from_events

ROOT = os.environ.get("TRIGGER_KIT_DEMO_ROOT", "/tmp/trigger-kit-demo")
CLIENTS = ["acme", "globex", "initech", "umbrella", "wayne"]

client_uploads = directory_asset(
    "trigger_kit_client_uploads",
    directories=[os.path.join(ROOT, "asset_uploads", client) for client in CLIENTS],
    patterns=["*.csv", "*.json"],
    settle_seconds=2,
    poll_interval=2,
    # inotify wakes the watch about settle_seconds after a file is closed; the poll every
    # reconcile_interval catches anything no notification announced (NFS shares poll every poll_interval).
    notify=True,
    reconcile_interval=60,
)

with DAG(
    dag_id="trigger_kit_directory_asset",
    description="Processes the files named in the directory watcher's asset events.",
    schedule=[client_uploads],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["trigger-kit", "example"],
) as dag:

    @task
    def process_files(**context: Any) -> list[dict[str, Any]]:
        processed = []
        for item in items_from_events(context, client_uploads):
            with open(item["path"], "rb") as f:
                lines = sum(1 for _ in f)
            processed.append({"path": item["path"], "lines": lines, "dedup_id": item["dedup_id"]})
        print(f"processed {len(processed)} file(s): {processed}")
        return processed

    process_files()
