"""The snapshot layout (``modified``/``deleted``) on moto with its chunks in a real ProcessState.

The per-key memory lives in chunks next to the cursor; these tests check, over HTTP and against
SQLite and PostgreSQL, that the cursor, the sensor's event and trigger kwargs stay small, that a
commit (by the sensor, by a downstream task later, or by the watcher after Airflow's confirmation)
always names a complete snapshot, and that crashes lose nothing and leave no garbage behind.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

from airflow_trigger_kit.commit import acommit_watermark
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sources.s3 import S3Source
from airflow_trigger_kit.sources.s3.snapshot_chunks import CHUNK_KEY_PREFIX
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.state.backends.postgres import PostgresBackend
from airflow_trigger_kit.state.backends.sqlite import SQLiteBackend
from airflow_trigger_kit.triggers.delivery import WatermarkProducer
from airflow_trigger_kit.triggers.s3 import ProcessStateChunkStore, S3ObjectsTrigger
from tests.s3_support import (
    create_bucket,
    put_many_plain,
    s3_client,
    trigger,
    unique_bucket,
    unique_name,
    use_connection,
)
from tests.triggerer_harness import wait_until

pytestmark = pytest.mark.integration

CLEAN = AdvanceOutcome(acked=1, failed=0)
LIMIT = 65536


@pytest.fixture(autouse=True)
def s3_connection(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_connection(monkeypatch, s3_endpoint)


@pytest.fixture(params=["sqlite", "postgres"])
async def state(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[ProcessState]:
    """The watch's ProcessState on each backend."""
    if request.param == "sqlite":
        backend: Any = SQLiteBackend(str(tmp_path / "state.db"))
    else:
        dsn = request.getfixturevalue("pg_db").dsn

        async def kwargs() -> dict[str, Any]:
            return {"dsn": dsn}

        backend = PostgresBackend(kwargs, label="postgres test")
    yield ProcessState("s3-snapshot-tests", unique_name(), backend=backend, max_value_bytes=LIMIT)
    await backend.aclose()


def snapshot_trigger(bucket: str, st: ProcessState, **kw: Any) -> S3ObjectsTrigger:
    return trigger(bucket, namespace=st.namespace, name=st.name, prefixes="data/", event_kinds="all", **kw)


def source_on(t: S3ObjectsTrigger, st: ProcessState) -> S3Source:
    """The trigger's source, with its chunks in ``st`` (the trigger itself uses the configured store)."""
    src = t.build_source()
    assert isinstance(src, S3Source)
    src._chunk_store = lambda: ProcessStateChunkStore(st)
    return src


async def chunk_keys(st: ProcessState) -> set[str]:
    return set(await st.alist_keys(CHUNK_KEY_PREFIX))


async def live_refs(src: S3Source, st: ProcessState) -> set[str]:
    entry = await st.aget(CURSOR_KEY)
    assert entry is not None
    snapshots = await src.memory.load(src.config, entry.value)
    return {r for s in snapshots for r in s.refs()}


def size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


async def test_3000_random_keys_fit_with_a_small_cursor_and_changes_are_exact(
    s3_endpoint: str, state: ProcessState
) -> None:
    """The case that overflowed the 64 KiB limit before: 3,000 random keys made a 129 KB cursor."""
    bucket = unique_bucket("uuids")
    keys = [f"data/{uuid.uuid4()}.json" for _ in range(3000)]
    await create_bucket(s3_endpoint, bucket)
    await put_many_plain(s3_endpoint, bucket, keys)
    src = source_on(snapshot_trigger(bucket, state), state)
    try:
        baseline = await src.baseline()
        await state.aset(CURSOR_KEY, baseline, expected_version=0)
        assert size(baseline) < 400, baseline
        values = await state.aget_many(sorted(await chunk_keys(state)))
        assert values and max(size(v) for v in values.values()) <= LIMIT
        per_key = sum(size(v) for v in values.values()) / 3000
        assert per_key < 50, per_key
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key=keys[7], Body=b"changed")
            await client.delete_object(Bucket=bucket, Key=keys[8])
            await client.put_object(Bucket=bucket, Key="data/new.json", Body=b"{}")
        batch = await src.poll(baseline, 500)
        assert sorted((i.data["kind"], i.data["key"]) for i in batch.items) == sorted(
            [("modified", keys[7]), ("deleted", keys[8]), ("created", "data/new.json")]
        )
        assert size(batch.cursor) < 400
        assert (await src.poll(batch.cursor, 500)).items == []
    finally:
        await src.aclose()


async def test_sensor_event_and_kwargs_stay_small_and_a_manual_commit_later_finds_its_chunks(
    s3_endpoint: str, state: ProcessState
) -> None:
    """Sensor path: the trigger stores the new chunks, the event carries a small cursor to commit.

    With ``commit="manual"`` the commit comes later from a downstream task; meanwhile other polls
    collect garbage relative to the committed cursor, and must not touch the pending batch's chunks.
    """
    bucket = unique_bucket("sensor-snap")
    keys = [f"data/{uuid.uuid4()}.json" for _ in range(600)]
    await create_bucket(s3_endpoint, bucket)
    await put_many_plain(s3_endpoint, bucket, keys)
    baseline_src = source_on(snapshot_trigger(bucket, state), state)
    baseline = await baseline_src.baseline()
    await baseline_src.aclose()
    version = await state.aset(CURSOR_KEY, baseline, expected_version=0)

    t = snapshot_trigger(bucket, state, cursor=baseline, cursor_version=version)
    _, kwargs = t.serialize()
    assert size(kwargs) < 1000, kwargs  # the start cursor in the trigger kwargs (metadata DB) is small
    t = S3ObjectsTrigger(**kwargs)
    t.build_source = t.build_shared_source = lambda: source_on(S3ObjectsTrigger(**kwargs), state)  # type: ignore[method-assign]

    # Both changes land before the trigger's first poll, so its one event holds both.
    async with s3_client(s3_endpoint) as client:
        await client.put_object(Bucket=bucket, Key=keys[0], Body=b"v2")
        await client.delete_object(Bucket=bucket, Key=keys[1])
    gen = t.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), 30)
    finally:
        await gen.aclose()
    payload = event.payload
    assert sorted(i["kind"] for i in payload["items"]) == ["deleted", "modified"]
    assert size(payload) < 4000 and size(payload["commit"]["cursor"]) < 400
    pending_refs = (await chunk_keys(state)) - await live_refs(baseline_src, state)
    assert pending_refs, "the trigger stores the new chunks before it yields the event"

    # Before the downstream task commits, another run polls from the committed cursor (and collects garbage).
    other = source_on(snapshot_trigger(bucket, state), state)
    again = await other.poll(baseline, 500)
    assert [i.dedup_id for i in again.items] == payload["dedup_ids"]  # a repeat carries the first dedup ids
    await other.aclose()
    assert pending_refs <= await chunk_keys(state)

    committed_version = await acommit_watermark(payload, state=state)  # the downstream task
    assert committed_version == version + 1
    fresh = source_on(snapshot_trigger(bucket, state), state)
    try:
        assert (await fresh.poll(payload["commit"]["cursor"], 500)).items == []  # complete, nothing re-fires
        # That poll collected everything the committed cursor does not reference, the other run's too.
        assert await chunk_keys(state) == await live_refs(fresh, state)
    finally:
        await fresh.aclose()


async def test_watcher_commits_only_after_confirmation_and_a_crash_redelivers_with_the_same_ids(
    s3_endpoint: str, state: ProcessState
) -> None:
    bucket = unique_bucket("watch-snap")
    await create_bucket(s3_endpoint, bucket, [f"data/{n:04d}.csv" for n in range(300)])
    # Batches of at most 3 items, backlog or not (backlog batches would take all six changes at once).
    t = snapshot_trigger(bucket, state, mode="watcher", max_items=3, backlog_max_items=3)
    rebuilt = snapshot_trigger(bucket, state, mode="watcher", max_items=3, backlog_max_items=3)
    # The hub builds the watch's shared source (its chunks in the test's store).
    t.build_source = t.build_shared_source = lambda: source_on(rebuilt, state)  # type: ignore[method-assign]

    producer = WatermarkProducer(t, state=state)
    stream = producer.open_stream()
    baseline_task = asyncio.ensure_future(stream.__anext__())
    await wait_until(lambda: state.aget(CURSOR_KEY), what="baseline (start_from='now')")
    async with s3_client(s3_endpoint) as client:
        for n in range(5):
            await client.put_object(Bucket=bucket, Key=f"data/{n:04d}.csv", Body=b"v2")
        await client.delete_object(Bucket=bucket, Key="data/0299.csv")
    # The watcher polls while the changes land, so how they split into batches of at most 3 varies.
    raw1, pending1 = await asyncio.wait_for(baseline_task, 30)
    raw2, _pending2 = await asyncio.wait_for(stream.__anext__(), 30)  # in flight, never confirmed
    await producer.advance([AdvanceItem(pending1, CLEAN)])
    entry = await state.aget(CURSOR_KEY)
    assert entry is not None and entry.value == pending1.cursor and entry.version == 2
    await stream.aclose()  # the triggerer dies before batch 2 is confirmed

    # The restarted watcher delivers everything after batch 1 again; batch 2's items carry their ids.
    restarted = WatermarkProducer(t, state=state)
    stream = restarted.open_stream()
    redelivered: list[dict[str, Any]] = []
    try:
        while True:
            try:
                raw, pending = await asyncio.wait_for(stream.__anext__(), 3.0)
            except asyncio.TimeoutError:
                break  # polled for 3 s (about 30 polls) without anything new
            redelivered.append(raw)
            await restarted.advance([AdvanceItem(pending, CLEAN)])
    finally:
        await stream.aclose()
    ids = {i for raw in redelivered for i in raw["dedup_ids"]}
    assert set(raw2["dedup_ids"]) <= ids, (raw2["dedup_ids"], ids)
    assert not set(raw1["dedup_ids"]) & ids  # batch 1 was committed: it never comes back
    seen = [i["key"] for raw in (raw1, *redelivered) for i in raw["items"]]
    assert sorted(seen) == sorted([f"data/{n:04d}.csv" for n in range(5)] + ["data/0299.csv"])

    # Garbage of the crashed run and of the superseded cursors is collected by the next poll.
    check = source_on(snapshot_trigger(bucket, state), state)
    try:
        entry = await state.aget(CURSOR_KEY)
        assert entry is not None
        assert (await check.poll(entry.value, 10)).items == []
        leftovers = await chunk_keys(state) - await live_refs(check, state)
        assert all(int(k.split(".")[1]) > entry.value["g"] for k in leftovers), leftovers
    finally:
        await check.aclose()
