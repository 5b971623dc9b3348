"""Wait for files from five clients with one deferrable sensor, then validate them.

The sensor holds no worker slot while it waits (it defers to the triggerer), reports which file
landed in which client's directory, and commits its watermark when it finishes, so the next run
only sees files that arrived after these.

Set TRIGGER_KIT_DEMO_ROOT to move the upload directories (default /tmp/trigger-kit-demo).
"""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_trigger_kit.sensors import MultiDirectorySensor

ROOT = os.environ.get("TRIGGER_KIT_DEMO_ROOT", "/tmp/trigger-kit-demo")
CLIENTS = ["acme", "globex", "initech", "umbrella", "wayne"]
UPLOAD_DIRS = [os.path.join(ROOT, "sensor_uploads", client) for client in CLIENTS]

with DAG(
    dag_id="trigger_kit_directory_sensor",
    description="A deferrable sensor over five client upload directories hands the files to a validator.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["trigger-kit", "example"],
) as dag:
    wait_for_uploads = MultiDirectorySensor(
        task_id="wait_for_uploads",
        directories=UPLOAD_DIRS,
        patterns=["*.csv", "*.json"],
        settle_seconds=2,
        deferrable=True,
        poke_interval=2,
        timeout=60 * 60,
    )

    @task
    def validate_files(found: dict[str, Any]) -> dict[str, Any]:
        """Check every reported file parses; a bad file fails the task (and names the client)."""
        report: dict[str, Any] = {"valid": [], "invalid": []}
        for item in found["items"]:
            client = os.path.basename(item["directory"])
            try:
                with open(item["path"], newline="") as f:
                    if item["name"].endswith(".json"):
                        json.load(f)
                    else:
                        header = next(csv.reader(f), None)
                        if not header:
                            raise ValueError("empty CSV")
                report["valid"].append({"client": client, "file": item["name"], "size": item["size"]})
            except (OSError, ValueError) as exc:
                report["invalid"].append({"client": client, "file": item["name"], "error": str(exc)})
        if report["invalid"]:
            raise ValueError(f"invalid uploads: {report['invalid']}")
        return report

    validate_files(wait_for_uploads.output)
