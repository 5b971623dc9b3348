"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_trigger_kit import __version__
from airflow_trigger_kit.config import DEFAULTS

INTEGRATION = "Trigger Kit"

CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "state_conn_id": {
        "description": (
            "Airflow connection id of a PostgreSQL database that stores ProcessState (watermarks). "
            "Empty means the embedded SQLite file (see state_sqlite_path), which is per host: set this "
            "when workers or triggerers run on more than one host."
        ),
        "type": "string",
        "example": "trigger_kit_state",
    },
    "state_sqlite_path": {
        "description": "Path of the SQLite ProcessState file when state_conn_id is empty. "
        "Empty means $AIRFLOW_HOME/trigger_kit_state.db.",
        "type": "string",
        "example": "/var/lib/airflow/trigger_kit_state.db",
    },
    "state_max_value_bytes": {
        "description": "Largest JSON value, in bytes, that ProcessState accepts for one key.",
        "type": "integer",
        "example": "65536",
    },
    "state_table": {
        "description": "Name of the table that holds ProcessState, in SQLite or PostgreSQL.",
        "type": "string",
        "example": "trigger_kit_process_state",
    },
    "postgres_pool_size": {
        "description": "Most connections one process (a triggerer) opens to one Postgres connection for "
        "the Postgres watches: every watch naming that conn id shares one pool of this size.",
        "type": "integer",
        "example": "4",
    },
}

TRIGGER_MODULES: list[str] = [
    "airflow_trigger_kit.triggers.directory",
    "airflow_trigger_kit.triggers.s3",
    "airflow_trigger_kit.triggers.postgres",
]
SENSOR_MODULES: list[str] = [
    "airflow_trigger_kit.sensors.directory",
    "airflow_trigger_kit.sensors.s3",
    "airflow_trigger_kit.sensors.postgres",
]


PLUGINS: list[dict[str, str]] = [
    {"name": "trigger_kit_watches", "plugin-class": "airflow_trigger_kit.plugins.watches.TriggerKitWatchesPlugin"}
]
"""The Watches page; also registered as an ``airflow.plugins`` entry point (see its module docstring)."""


def get_provider_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "package-name": "airflow-trigger-kit",
        "name": "Trigger Kit",
        "description": "Deferrable triggers, sensors and AssetWatchers that watch directories, S3 "
        "prefixes and Postgres tables incrementally, with durable watermarks.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://pypi.org/project/airflow-trigger-kit/",
                "tags": ["software"],
            }
        ],
        "config": {
            "trigger_kit": {
                "description": "airflow-trigger-kit: where watchers keep their watermarks.",
                "options": {
                    name: {**option, "version_added": "0.1.0", "default": DEFAULTS[name]}
                    for name, option in CONFIG_OPTIONS.items()
                },
            }
        },
    }
    if PLUGINS:
        info["plugins"] = PLUGINS
    if TRIGGER_MODULES:
        info["triggers"] = [{"integration-name": INTEGRATION, "python-modules": TRIGGER_MODULES}]
    if SENSOR_MODULES:
        info["sensors"] = [{"integration-name": INTEGRATION, "python-modules": SENSOR_MODULES}]
    return info
