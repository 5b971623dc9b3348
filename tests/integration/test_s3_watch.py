"""S3ObjectsTrigger on moto: sensor-mode events, watcher delivery, restarts and the cursor size limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers.delivery import WatermarkProducer
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger
from airflow_trigger_kit.triggers.session import open_session
from tests.s3_support import (
    create_bucket,
    put_many,
    s3_client,
    trigger,
    unique_bucket,
    unique_name,
    use_connection,
)
from tests.triggerer_harness import TriggererHarness, wait_until

pytestmark = pytest.mark.integration

CLEAN = AdvanceOutcome(acked=1, failed=0)


@pytest.fixture(autouse=True)
def s3_connection(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_connection(monkeypatch, s3_endpoint)


def watcher(bucket: str, name: str, **kw: Any) -> S3ObjectsTrigger:
    return trigger(bucket, namespace="s3-watch-tests", name=name, mode="watcher", **kw)


def restarted(t: S3ObjectsTrigger) -> S3ObjectsTrigger:
    """The trigger as the triggerer re-creates it: from its serialized kwargs."""
    path, kwargs = t.serialize()
    assert path == "airflow_trigger_kit.triggers.s3.S3ObjectsTrigger"
    return S3ObjectsTrigger(**kwargs)


def keys_of(raw_event: dict[str, Any]) -> list[str]:
    return sorted(item["key"] for item in raw_event["items"])


async def test_sensor_mode_yields_one_event_carrying_the_cursor_to_commit(s3_endpoint: str) -> None:
    bucket = unique_bucket("sensor")
    await create_bucket(s3_endpoint, bucket, ["in/old.csv"])
    baseline = await trigger(bucket, prefixes="in/").build_source().baseline()
    t = trigger(bucket, prefixes="in/", cursor=baseline, cursor_version=4)

    async def land_later() -> None:
        await asyncio.sleep(0.5)
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key="in/new.csv", Body=b"1,2")

    landing = asyncio.create_task(land_later())
    gen = t.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), 30)
    finally:
        await gen.aclose()
        await landing
    payload = event.payload
    assert payload["source"] == "s3" and [i["key"] for i in payload["items"]] == ["in/new.csv"]
    item = payload["items"][0]
    assert set(item) >= {"bucket", "key", "uri", "size", "etag", "last_modified", "kind", "dedup_id"}
    assert item["bucket"] == bucket and item["size"] == 3 and item["kind"] == "created"
    assert payload["commit"]["expected_version"] == 4 and payload["commit"]["key"] == CURSOR_KEY
    assert payload["cursor_range"]["to"]["in/"]["edge"] >= 1


async def test_restart_resumes_from_the_committed_cursor_without_refiring(s3_endpoint: str) -> None:
    """Drive the watcher's producer the way Airflow's shared-stream manager does."""
    bucket = unique_bucket("restart")
    await create_bucket(s3_endpoint, bucket, [f"in/{n}.csv" for n in range(5)])
    name = unique_name()
    first = watcher(bucket, name, prefixes="in/", start_from="beginning", max_items=3, backlog_max_items=3)
    state = ProcessState("s3-watch-tests", name)

    producer = WatermarkProducer(first, state=state)
    stream = producer.open_stream()
    raw1, pending1 = await asyncio.wait_for(stream.__anext__(), 30)
    assert keys_of(raw1) == ["in/0.csv", "in/1.csv", "in/2.csv"] and raw1["more"]
    await producer.advance([AdvanceItem(pending1, CLEAN)])  # Airflow confirmed event 1 stored
    raw2, _pending2 = await asyncio.wait_for(stream.__anext__(), 30)
    assert keys_of(raw2) == ["in/3.csv", "in/4.csv"]
    await stream.aclose()  # the triggerer dies before event 2 is confirmed
    entry = await state.aget(CURSOR_KEY)
    assert entry is not None and entry.version == 1

    # Restart: event 2 comes again, with the same dedup ids, and nothing of event 1.
    second = WatermarkProducer(restarted(first), state=state)
    stream = second.open_stream()
    again, pending = await asyncio.wait_for(stream.__anext__(), 30)
    assert again["dedup_ids"] == raw2["dedup_ids"]
    await second.advance([AdvanceItem(pending, CLEAN)])
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stream.__anext__(), 1.0)  # polled ~10 times: nothing re-fires
    await stream.aclose()
    entry = await state.aget(CURSOR_KEY)
    assert entry is not None and entry.version == 2

    # Another restart after everything was committed: the first event is the object that lands later.
    third = WatermarkProducer(restarted(first), state=state)
    stream = third.open_stream()

    async def land_later() -> None:
        await asyncio.sleep(0.5)
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key="in/5.csv", Body=b"x")

    landing = asyncio.create_task(land_later())
    try:
        raw, pending = await asyncio.wait_for(stream.__anext__(), 30)
        assert keys_of(raw) == ["in/5.csv"]
        await third.advance([AdvanceItem(pending, CLEAN)])
    finally:
        await stream.aclose()
        await landing
    entry = await state.aget(CURSOR_KEY)
    assert entry is not None and entry.version == 3


async def test_crash_before_confirmation_redelivers_through_the_real_shared_stream(s3_endpoint: str) -> None:
    """Airflow's SharedStreamManager drives a lexicographic watcher (the restart test above: the window)."""
    key_order = "lexicographic"
    bucket = unique_bucket("crash")
    await create_bucket(s3_endpoint, bucket, ["in/existing.csv"])
    name = unique_name()
    state = ProcessState("s3-watch-tests", name)
    first = TriggererHarness()
    first.start(watcher(bucket, name, prefixes="in/", key_order=key_order))
    await wait_until(lambda: state.aget(CURSOR_KEY), what="baseline (start_from='now')")
    async with s3_client(s3_endpoint) as client:
        await put_many(client, bucket, [f"in/new-{n}.csv" for n in range(4)])
    await wait_until(lambda: len(first.items()) == 4, what="first delivery")
    await first.crash()

    second = TriggererHarness()
    second.start(watcher(bucket, name, prefixes="in/", key_order=key_order))
    await wait_until(lambda: len(second.items()) == 4, what="redelivery")
    assert sorted(i["dedup_id"] for i in second.items()) == sorted(i["dedup_id"] for i in first.items())
    assert "in/existing.csv" not in {i["key"] for i in second.items()}
    second.confirm_stored()

    async def committed() -> bool:
        entry = await state.aget(CURSOR_KEY)
        return entry is not None and entry.version == 2

    await wait_until(committed, what="commit after confirmation")
    await second.crash()

    third = TriggererHarness()
    third.start(watcher(bucket, name, prefixes="in/", key_order=key_order))
    await asyncio.sleep(1.0)
    assert third.events == [], "a restart without new objects fired again"
    await third.crash()
    assert first.errors == second.errors == third.errors == []


async def test_a_cursor_over_the_state_limit_fails_loudly(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = unique_bucket("limit")
    await create_bucket(s3_endpoint, bucket, [f"in/{n:03d}.csv" for n in range(40)])
    monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__STATE_MAX_VALUE_BYTES", "300")
    t = trigger(bucket, prefixes="in/", start_from="beginning")
    async with open_session(t) as session:
        with pytest.raises(PermanentSourceError, match="state_max_value_bytes=300") as info:
            await session.next_batch(None)
    assert "cursor size notes" in str(info.value)
