"""The status record next to each cursor: written at the engine's hook points, never touching the watermark."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_trigger_kit import telemetry
from airflow_trigger_kit.commit import acommit_watermark
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.state.factory import configured_backend
from airflow_trigger_kit.status import STATUS_KEY, alist_watches, arewind
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from tests.triggerer_harness import TriggererHarness, wait_until

pytestmark = pytest.mark.integration

FAST = {"settle_seconds": 0.2, "poll_interval": 0.05, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2}


def unique_name() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def watcher(dirs: list[Path], name: str, **kw: Any) -> MultiDirectoryTrigger:
    return MultiDirectoryTrigger(
        directories=[str(d) for d in dirs], namespace="status-test", name=name, mode="watcher", **{**FAST, **kw}
    )


async def status_of(name: str) -> dict[str, Any]:
    await telemetry.flush()
    entry = await ProcessState("status-test", name).aget(STATUS_KEY)
    return entry.value if entry is not None else {}


async def test_watcher_status_counts_committed_items_and_never_moves_the_cursor_version(tmp_path: Path) -> None:
    name = unique_name()
    state = ProcessState("status-test", name)
    harness = TriggererHarness()
    harness.start(watcher([tmp_path], name))
    await wait_until(lambda: state.aget(CURSOR_KEY), what="baseline")
    opened = await status_of(name)
    assert opened["kind"] == "watcher" and opened["source"] == "directory"
    assert str(tmp_path) in opened["watching"] and opened["committed_version"] == 1
    assert opened["items_delivered"] == 0

    for n in range(3):
        (tmp_path / f"a{n}.csv").write_text("x")
    await wait_until(lambda: len(harness.items()) == 3, what="3 files delivered")
    (tmp_path / "b.csv").write_text("x")
    await wait_until(lambda: len(harness.items()) == 4, what="a 4th file in a second batch")
    harness.confirm_stored()  # two batches confirmed at once: one commit covers both

    async def committed() -> bool:
        entry = await state.aget(CURSOR_KEY)
        return entry is not None and entry.version >= 2

    await wait_until(committed, what="commit")
    await harness.crash()
    status = await status_of(name)
    cursor = await state.aget(CURSOR_KEY)
    assert cursor is not None
    assert status["items_delivered"] == 4 and status["events_delivered"] == len(harness.events)
    assert status["committed_version"] == cursor.version
    assert status["history"][-1]["version"] == cursor.version and status["history"][-1]["items"] >= 1
    assert status["newest_item_at"] and status["last_detection_at"] and status["last_commit_at"]
    assert "last_error" not in status
    # The status key has its own versions: the cursor's version counts only cursor commits.
    assert cursor.version == 1 + sum(1 for h in status["history"])


async def test_missing_then_unreadable_directory_is_the_last_error(tmp_path: Path) -> None:
    name = unique_name()
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    harness = TriggererHarness()
    harness.start(watcher([not_a_dir], name, start_from="beginning"))
    await wait_until(lambda: harness.errors, what="the permanent error to end the watcher")
    await harness.crash()
    status = await status_of(name)
    assert status["last_error"]["transient"] is False
    assert str(not_a_dir) in status["last_error"]["message"]
    # Nothing was committed by a failing watch.
    assert await ProcessState("status-test", name).aget(CURSOR_KEY) is None


async def test_sensor_commit_records_delivery_and_listing_and_rewind(tmp_path: Path) -> None:
    name = unique_name()
    state = ProcessState("status-test", name)
    trigger = MultiDirectoryTrigger(
        directories=[str(tmp_path)], namespace="status-test", name=name, mode="sensor", start_from="beginning", **FAST
    )
    (tmp_path / "x.csv").write_text("x")
    await asyncio.sleep(0.3)
    gen = trigger.run()
    event = (await asyncio.wait_for(gen.__anext__(), 20)).payload
    await gen.aclose()
    version = await acommit_watermark(event, state=state)
    status = (await state.aget(STATUS_KEY)).value  # type: ignore[union-attr]
    assert status["items_delivered"] == 1 and status["committed_version"] == version == 1

    listed = {(w.namespace, w.name): w for w in await alist_watches(configured_backend(), "status-test")}
    row = listed[("status-test", name)].to_json()
    assert row["cursor_version"] == 1 and row["items_delivered"] == 1 and row["healthy"] is True

    deleted = await arewind(state, by="tester")
    assert deleted == 2  # the cursor and the status record
    assert await state.aget(CURSOR_KEY) is None
    after = (await state.aget(STATUS_KEY)).value  # type: ignore[union-attr]
    assert after["rewound_by"] == "tester" and after["items_delivered"] == 0 and after["history"] == []
