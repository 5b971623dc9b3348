"""MultiDirectorySensor on a real filesystem: check before deferring, poke mode, commits, errors."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from airflow_trigger_kit.commit import commit_watermark
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sensors import MultiDirectorySensor
from airflow_trigger_kit.state import ProcessState, StateConflict

pytestmark = pytest.mark.integration


def context_for(task_id: str, dag_id: str = "sensor_tests") -> dict[str, Any]:
    return {"ti": SimpleNamespace(dag_id=dag_id, task_id=task_id, map_index=-1)}


def make_sensor(directory: Path, **kw: Any) -> MultiDirectorySensor:
    params: dict[str, Any] = {
        "task_id": f"t_{uuid.uuid4().hex[:8]}",
        "directories": [str(directory)],
        "patterns": "*.csv",
        "settle_seconds": 0.1,
        "deferrable": True,
        "poke_interval": 1,
        "timeout": 600,
    }
    params.update(kw)
    return MultiDirectorySensor(**params)


def settle() -> None:
    time.sleep(0.2)


def test_defers_with_the_baseline_cursor_when_nothing_is_there(tmp_path: Path) -> None:
    sensor = make_sensor(tmp_path)
    (tmp_path / "before.csv").write_text("x")
    settle()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context_for(sensor.task_id))
    trigger = deferred.value.trigger
    _, kwargs = trigger.serialize()
    assert kwargs["mode"] == "sensor" and kwargs["cursor_version"] == 1
    assert kwargs["poll_interval"] == 1.0
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=600)
    entry = ProcessState("sensor_tests", sensor.task_id).get(CURSOR_KEY)
    assert entry is not None and entry.version == 1 and entry.value == kwargs["cursor"]


def test_data_already_there_returns_without_deferring_and_commits(tmp_path: Path) -> None:
    sensor = make_sensor(tmp_path)
    ctx = context_for(sensor.task_id)
    with pytest.raises(TaskDeferred):
        sensor.execute(ctx)  # first run: baseline, nothing new
    (tmp_path / "new.csv").write_text("x")
    settle()
    result = sensor.execute(ctx)
    assert [i["name"] for i in result["items"]] == ["new.csv"]
    assert result["commit"] == {"key": CURSOR_KEY, "committed_version": 2}
    with pytest.raises(TaskDeferred):
        sensor.execute(ctx)  # the same file never fires twice


def test_execute_complete_commits_what_the_trigger_found(tmp_path: Path) -> None:
    sensor = make_sensor(tmp_path)
    ctx = context_for(sensor.task_id)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    (tmp_path / "late.csv").write_text("x")
    settle()
    import asyncio

    async def first_event() -> dict[str, Any]:
        gen = deferred.value.trigger.run()
        event = await gen.__anext__()
        await gen.aclose()
        return event.payload

    event = asyncio.run(first_event())
    result = sensor.execute_complete(ctx, event)
    assert [i["name"] for i in result["items"]] == ["late.csv"]
    assert result["commit"]["committed_version"] == 2
    # A retried execute_complete with the same event is accepted (same cursor already stored).
    assert sensor.execute_complete(ctx, event)["commit"]["committed_version"] == 2


def test_poke_mode_gives_the_same_results(tmp_path: Path) -> None:
    sensor = make_sensor(tmp_path, deferrable=False)
    ctx = context_for(sensor.task_id)
    assert sensor.poke(ctx).is_done is False
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "b.txt").write_text("ignored by pattern")
    settle()
    done = sensor.poke(ctx)
    assert done.is_done is True
    assert [i["name"] for i in done.xcom_value["items"]] == ["a.csv"]
    assert sensor.poke(ctx).is_done is False


def test_manual_commit_leaves_the_watermark_to_a_downstream_task(tmp_path: Path) -> None:
    sensor = make_sensor(tmp_path, commit="manual")
    ctx = context_for(sensor.task_id)
    with pytest.raises(TaskDeferred):
        sensor.execute(ctx)
    (tmp_path / "a.csv").write_text("x")
    settle()
    payload = sensor.execute(ctx)
    assert payload["commit"]["expected_version"] == 1
    again = sensor.execute(ctx)  # processing failed, nothing committed: the same data comes back
    assert again["dedup_ids"] == payload["dedup_ids"]
    assert commit_watermark(payload) == 2
    assert commit_watermark(payload) == 2, "a retried commit of the same payload is accepted"
    (tmp_path / "b.csv").write_text("x")
    settle()
    stale = dict(payload, commit={**payload["commit"], "cursor": {"other": True}})
    with pytest.raises(StateConflict):
        commit_watermark(stale)
    with pytest.raises(TaskDeferred):
        make_sensor(tmp_path, task_id=sensor.task_id, patterns="*.json").execute(ctx)


def test_error_event_fails_the_task_with_its_message(tmp_path: Path) -> None:
    sensor = make_sensor(tmp_path)
    with pytest.raises(AirflowException, match="not a directory"):
        sensor.execute_complete(context_for(sensor.task_id), {"status": "error", "message": "'/x' is not a directory"})


@pytest.mark.parametrize(("soft_fail", "expected"), [(False, AirflowSensorTimeout), (True, AirflowSkipException)])
def test_trigger_timeout_behaves_as_airflow_sensors(tmp_path: Path, soft_fail: bool, expected: type) -> None:
    sensor = make_sensor(tmp_path, soft_fail=soft_fail)
    with pytest.raises(expected):
        sensor.resume_execution("__fail__", {"error": "Trigger timeout"}, context_for(sensor.task_id))


def test_bad_input_fails_at_dag_parse_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"directories must be absolute paths.*'uploads'"):
        make_sensor(tmp_path, directories=["uploads"])
    with pytest.raises(ValueError, match="commit must be 'auto' or 'manual', got 'later'"):
        make_sensor(tmp_path, commit="later")
    with pytest.raises(ValueError, match="max_items must be an integer >= 1"):
        make_sensor(tmp_path, max_items=0)
