"""Watchers space their events by ``min_event_spacing`` (Airflow 3.3's race on close asset events).

Driven the way Airflow's shared-stream manager drives a watcher: events read from the producer's
stream, each confirmed with ``advance``. Files land right after an event; with spacing they come
in one later event, without it each poll that finds one sends it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from airflow_trigger_kit.triggers.delivery import WatermarkProducer

pytestmark = pytest.mark.integration

CLEAN = AdvanceOutcome(acked=1, failed=0)


def names(raw_event: dict[str, Any]) -> list[str]:
    return sorted(item["name"] for item in raw_event["items"])


async def test_files_found_within_the_spacing_go_into_one_later_event(tmp_path: Path) -> None:
    name = f"spacing-{uuid.uuid4().hex[:8]}"
    trigger = MultiDirectoryTrigger(
        directories=[str(tmp_path)],
        namespace="spacing-tests",
        name=name,
        mode="watcher",
        start_from="beginning",
        settle_seconds=0,
        poll_interval=0.05,
        notify=False,
        min_event_spacing=1.5,
    )
    assert trigger.serialize()[1]["min_event_spacing"] == 1.5
    (tmp_path / "a.csv").write_text("1")
    producer = WatermarkProducer(trigger, state=ProcessState("spacing-tests", name))
    stream = producer.open_stream()
    try:
        raw, pending = await asyncio.wait_for(stream.__anext__(), 30)
        assert names(raw) == ["a.csv"]
        await producer.advance([AdvanceItem(pending, CLEAN)])
        following = asyncio.ensure_future(stream.__anext__())  # the triggerer reads the stream eagerly
        await asyncio.sleep(0.1)
        (tmp_path / "b.csv").write_text("2")  # polls every 50 ms would send b and c apart...
        await asyncio.sleep(0.3)
        (tmp_path / "c.csv").write_text("3")
        raw, pending = await asyncio.wait_for(following, 30)
        assert names(raw) == ["b.csv", "c.csv"], "...the spacing holds the next event back: both in one"
        await producer.advance([AdvanceItem(pending, CLEAN)])
    finally:
        await stream.aclose()


def test_min_event_spacing_is_checked_at_parse_time_and_kept_out_of_kwargs_at_its_default(tmp_path: Path) -> None:
    common: dict[str, Any] = {"directories": [str(tmp_path)], "namespace": "spacing-tests", "name": "x"}
    with pytest.raises(ValueError, match=r"min_event_spacing must be a number of seconds from 0 to 3600, got -1"):
        MultiDirectoryTrigger(**common, min_event_spacing=-1)
    assert "min_event_spacing" not in MultiDirectoryTrigger(**common).serialize()[1]
    spaced = MultiDirectoryTrigger(**common, min_event_spacing=0)
    assert MultiDirectoryTrigger(**spaced.serialize()[1]).settings.min_event_spacing == 0
