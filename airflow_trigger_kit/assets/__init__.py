"""Event-driven DAGs: build an ``Asset`` with its ``AssetWatcher`` wired, and read what it reported.

```python
from airflow.sdk import DAG, task
from airflow_trigger_kit.assets import directory_asset, items_from_events

uploads = directory_asset("client_uploads", directories=["/data/in/a", "/data/in/b"], patterns="*.csv")

with DAG("process_uploads", schedule=[uploads]):
    @task
    def process(**context):
        for item in items_from_events(context, uploads):
            ...  # item["path"], item["dedup_id"], ...
```

A watcher's trigger event is stored by Airflow as an asset event whose ``extra`` is
``{"from_trigger": True, "payload": <the event payload>}``; the helpers below read it back.
"""

from airflow_trigger_kit import settings as _settings
from airflow_trigger_kit.assets.base import watched_asset
from airflow_trigger_kit.assets.directory import directory_asset
from airflow_trigger_kit.assets.events import items_from_events, payloads_from_events
from airflow_trigger_kit.assets.postgres import postgres_asset
from airflow_trigger_kit.assets.s3 import s3_asset

ASSET_NAMESPACE = _settings.ASSET_NAMESPACE
"""ProcessState namespace of the watchers built by these helpers; the state name is the asset name."""

__all__ = [
    "ASSET_NAMESPACE",
    "directory_asset",
    "items_from_events",
    "payloads_from_events",
    "postgres_asset",
    "s3_asset",
    "watched_asset",
]
