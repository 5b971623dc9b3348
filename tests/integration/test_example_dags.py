"""Every example DAG parses cleanly; the directory sensor DAG runs to success under dag.test()."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.integration

DAGS = Path(__file__).parents[2] / "dags"


def load_module(path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TRIGGER_KIT_DEMO_ROOT", str(demo_root))
    name = f"example_dag_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_every_dag_file_parses_without_errors_or_warnings(airflow_db: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    ours = [w for w in caught if "airflow_trigger_kit" in str(w.filename) or str(DAGS) in str(w.filename)]
    assert ours == [], [str(w.message) for w in ours]
    files = sorted(p.name for p in DAGS.glob("*.py"))
    assert len(bag.dag_ids) >= len(files), (bag.dag_ids, files)
    for dag_id in bag.dag_ids:
        assert bag.get_dag(dag_id).tags, f"{dag_id} has no tags"


def test_directory_sensor_dag_defers_resumes_and_hands_files_to_the_validator(
    airflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_trigger_kit.payload import CURSOR_KEY
    from airflow_trigger_kit.state import ProcessState

    module = load_module(DAGS / "directory_sensor_dag.py", tmp_path, monkeypatch)
    for d in module.UPLOAD_DIRS:
        os.makedirs(d)
    expected = {
        ("acme", "orders.csv"),
        ("initech", "customers.csv"),
        ("wayne", "meta.json"),
    }

    state = ProcessState("trigger_kit_directory_sensor", "wait_for_uploads")
    stop = threading.Event()

    def drop_files_after_deferral() -> None:
        # The sensor stores its baseline, polls once, then defers: drop the files after that.
        deadline = time.monotonic() + 120
        while state.get(CURSOR_KEY) is None and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.1)
        stop.wait(2.0)
        for client, name in expected:
            path = Path(tmp_path, "sensor_uploads", client, name)
            path.write_text('{"ok": true}' if name.endswith(".json") else "id,amount\n1,9.5\n")
        # dag.test() waits for the trigger forever: if the files went unnoticed, unblock it with a
        # file the assertions below reject, so a regression fails instead of hanging.
        if not stop.wait(120):
            Path(tmp_path, "sensor_uploads", "acme", "watchdog.csv").write_text("id\n")

    deferrals: list[str] = []
    real_defer = module.MultiDirectorySensor.defer

    def recording_defer(self: Any, **kwargs: Any) -> Any:
        deferrals.append(kwargs["method_name"])
        return real_defer(self, **kwargs)

    monkeypatch.setattr(module.MultiDirectorySensor, "defer", recording_defer)
    dropper = threading.Thread(target=drop_files_after_deferral, daemon=True)
    dropper.start()
    try:
        dag_run: Any = module.dag.test()
    finally:
        stop.set()
        dropper.join()
    assert deferrals == ["execute_complete"], "the sensor did not defer"
    assert dag_run.state == "success"
    report = dag_run.get_task_instance("validate_files").xcom_pull(task_ids="validate_files")
    assert {(v["client"], v["file"]) for v in report["valid"]} == expected
    entry = state.get(CURSOR_KEY)
    assert entry is not None and entry.version == 2, "baseline, then the committed watermark"
