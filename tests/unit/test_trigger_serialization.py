"""Every trigger serializes to JSON-safe kwargs that rebuild it exactly."""

from __future__ import annotations

import json

import pytest
from airflow._shared.module_loading import import_string  # what the triggerer uses
from airflow.triggers.base import BaseEventTrigger

from airflow_trigger_kit.triggers import (
    IncrementalTrigger,
    MultiDirectoryTrigger,
    PostgresRowsTrigger,
    S3ObjectsTrigger,
)

pytestmark = pytest.mark.unit

CASES = [
    {"directories": ["/data/a"], "namespace": "n", "name": "w"},
    {
        "directories": ["/data/a", "/data/b", "/data/c", "/data/d", "/data/e"],
        "namespace": "dags",
        "name": "uploads",
        "patterns": ["*.csv", "*.json"],
        "recursive": True,
        "ignore_patterns": [".*"],
        "event_kinds": "all",
        "settle_seconds": 0.5,
        "lookback_seconds": 10,
        "start_from": "beginning",
        "poll_interval": 1,
        "max_items": 50,
        "retry_base_seconds": 0.5,
        "retry_max_seconds": 5,
        "notify": False,
        "reconcile_interval": 30,
    },
    {
        "directories": "/data/a",
        "namespace": "n",
        "name": "w",
        "mode": "sensor",
        "cursor": {"v": 1, "layout": "watermark", "dirs": {"/data/a": {"hwm": 5, "edge": {}}}},
        "cursor_version": 3,
    },
]


@pytest.mark.parametrize("kwargs", CASES)
def test_round_trip_is_exact_and_json_safe(kwargs: dict[str, object]) -> None:
    trigger = MultiDirectoryTrigger(**kwargs)  # type: ignore[arg-type]
    classpath, serialized = trigger.serialize()
    assert classpath == "airflow_trigger_kit.triggers.directory.MultiDirectoryTrigger"
    assert json.loads(json.dumps(serialized)) == serialized
    rebuilt = MultiDirectoryTrigger(**serialized)
    assert rebuilt.serialize() == (classpath, serialized)


def test_watcher_shares_a_stream_keyed_by_its_identity_and_sensor_does_not() -> None:
    watcher = MultiDirectoryTrigger(directories=["/a"], namespace="n", name="w")
    assert watcher.shared_stream_key() == (
        "airflow_trigger_kit",
        "airflow_trigger_kit.triggers.directory.MultiDirectoryTrigger",
        "n",
        "w",
    )
    sensor = MultiDirectoryTrigger(directories=["/a"], namespace="n", name="w", mode="sensor")
    assert not hasattr(sensor, "shared_stream_key")


@pytest.mark.parametrize("trigger_class", [MultiDirectoryTrigger, S3ObjectsTrigger, PostgresRowsTrigger])
def test_only_watchers_are_event_triggers_so_the_triggerer_counts_sensors_as_triggers(
    trigger_class: type[IncrementalTrigger],
) -> None:
    """The triggerer counts every BaseEventTrigger as a watcher (is_watcher = isinstance(...))."""
    source = {
        MultiDirectoryTrigger: {"directories": ["/a"]},
        S3ObjectsTrigger: {"bucket": "landing"},
        PostgresRowsTrigger: {"table": "orders", "watermark_columns": "id"},
    }[trigger_class]
    sensor = trigger_class(**source, namespace="n", name="w", mode="sensor")  # type: ignore[call-arg]
    watcher = trigger_class(**source, namespace="n", name="w")  # type: ignore[call-arg]
    assert isinstance(sensor, trigger_class) and not isinstance(sensor, BaseEventTrigger)
    assert isinstance(watcher, trigger_class) and isinstance(watcher, BaseEventTrigger)
    # The watcher serializes under the public class, so the triggerer re-creates the same variant.
    classpath, kwargs = watcher.serialize()
    assert classpath == f"{trigger_class.__module__}.{trigger_class.__name__}"
    rebuilt = import_string(classpath)(**kwargs)
    assert type(rebuilt) is type(watcher)
    assert type(trigger_class(**sensor.serialize()[1])) is trigger_class


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "daemon"}, "mode must be 'watcher' or 'sensor', got 'daemon'"),
        ({"start_from": "yesterday"}, "start_from must be 'now' or 'beginning', got 'yesterday'"),
        ({"poll_interval": 0}, "poll_interval must be a number > 0, got 0"),
        ({"max_items": 0}, "max_items must be an integer >= 1, got 0"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"cursor": {"x": 1}}, "cursor and cursor_version are for mode='sensor'"),
    ],
)
def test_invalid_common_settings_name_parameter_and_value(kwargs: dict[str, object], message: str) -> None:
    params: dict[str, object] = {"directories": ["/a"], "namespace": "n", "name": "w", **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiDirectoryTrigger(**params)  # type: ignore[arg-type]


async def test_watcher_mode_refuses_to_run_outside_a_shared_stream() -> None:
    trigger = MultiDirectoryTrigger(directories=["/a"], namespace="n", name="w")
    with pytest.raises(RuntimeError, match="runs only through the triggerer's shared stream"):
        async for _ in trigger.run():
            pass
