"""The snapshot layout's chunked memory: sizes, incremental rewrites, garbage collection, crashes.

Pure logic over :class:`MemoryChunkStore` (the ProcessState-backed store runs in the integration
tests). A "process" here is a :class:`SnapshotMemory`; a crash drops it with everything it had not
committed, exactly as a killed triggerer loses its in-memory batches.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError
from airflow_trigger_kit.sources.s3 import PrefixListing, S3Object, S3WatchConfig, check_cursor, empty_cursor
from airflow_trigger_kit.sources.s3.encodings import decode_entries, etag_hash
from airflow_trigger_kit.sources.s3.snapshot_chunks import (
    CHUNK_KEY_PREFIX,
    Chunking,
    PrefixSnapshot,
    apply_edits,
    build,
    new_ref_factory,
    ref_generation,
)
from airflow_trigger_kit.sources.s3.snapshot_memory import SnapshotMemory
from airflow_trigger_kit.sources.s3.snapshot_store import MemoryChunkStore, SnapshotSuperseded
from airflow_trigger_kit.state import StateConflict

pytestmark = pytest.mark.unit

T0 = 1_767_225_600
LIMIT = 65536


def obj(key: str, etag: str = "e1", lm: int = T0, size: int = 10) -> S3Object:
    iso = datetime.fromtimestamp(lm, tz=timezone.utc).isoformat()
    return S3Object(key=key, etag=etag, size=size, last_modified=lm, last_modified_iso=iso)


def listings(config: S3WatchConfig, objects: Iterable[S3Object]) -> list[PrefixListing]:
    result = []
    everything = sorted(objects, key=lambda o: o.key)
    for prefix in config.prefixes:
        objs = [o for o in everything if o.key.startswith(prefix)]
        result.append(PrefixListing(prefix=prefix, objects=objs, predecessors=[None] * len(objs), requests=1))
    return result


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def apoll(memory: SnapshotMemory, config: S3WatchConfig, cursor: JSON, objects: list[S3Object], n: int) -> Batch:
    """What S3Source.poll does for the snapshot layout, with a synthetic listing."""
    current = empty_cursor(config) if cursor is None else check_cursor(config, cursor)
    await memory.load(config, current)
    await memory.collect_garbage(current)
    return await memory.detect(config, current, listings(config, objects), n)


def stored_values(store: MemoryChunkStore) -> dict[str, str]:
    return {k: v for k, v in store.values.items() if k.startswith(CHUNK_KEY_PREFIX)}


def random_keys(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"data/{uuid.UUID(int=rng.getrandbits(128))}.json" for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# chunking
# --------------------------------------------------------------------------------------------------
def partition(snapshot: PrefixSnapshot) -> list[list[str]]:
    return [c.keys for c in snapshot.chunks]


def test_incremental_edits_give_the_same_chunks_as_building_from_scratch() -> None:
    rng = random.Random(3)
    chunking = Chunking(target=400, cap=1600)  # small chunks: many boundaries in a few thousand keys
    entries = {k: etag_hash(k) for k in random_keys(3000)}
    snapshot, _ = build(sorted(entries.items()), chunking, new_ref_factory(1))
    for step in range(30):
        edits: dict[str, bytes | None] = {}
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.4 and entries:
                key = rng.choice(sorted(entries))
                edits[key] = None if rng.random() < 0.5 else etag_hash(f"{key}-{step}")
            else:
                edits[f"data/{rng.getrandbits(64):016x}.json"] = etag_hash(str(step))
        for key, h in edits.items():
            if h is None:
                entries.pop(key, None)
            else:
                entries[key] = h
        snapshot, written = apply_edits(snapshot, edits, chunking, new_ref_factory(step + 2))
        scratch, _ = build(sorted(entries.items()), chunking, new_ref_factory(0))
        assert partition(snapshot) == partition(scratch)
        assert [k for c in snapshot.chunks for k in c.keys] == sorted(entries)
        for ref, value in written.items():
            assert ref_generation(ref) == step + 2
            if ref in {c.ref for c in snapshot.chunks}:
                keys, hashes = decode_entries(value)
                assert [(k, h) for k, h in zip(keys, hashes, strict=True)] == [(k, entries[k]) for k in keys]


def test_one_change_rewrites_one_chunk_and_the_page_of_a_100k_key_snapshot() -> None:
    chunking = Chunking.for_limit(LIMIT)
    keys = random_keys(100_000)
    snapshot, written = build([(k, etag_hash(k)) for k in sorted(keys)], chunking, new_ref_factory(1))
    sizes = [len(v) + 2 for v in written.values()]
    assert max(sizes) <= LIMIT  # every value fits the state limit
    assert len(snapshot.pages) == 1 and 300 < len(snapshot.chunks) < 1500
    per_key = sum(sizes) / len(keys)
    assert 25 < per_key < 45, per_key  # random UUID keys compress poorly
    one = {"data/00000000-new.json": etag_hash("x")}
    updated, rewritten = apply_edits(snapshot, one, chunking, new_ref_factory(2))
    assert len(rewritten) <= 3  # the chunk the key falls in (maybe split in two) and the page
    reused = {c.ref for c in snapshot.chunks} & {c.ref for c in updated.chunks}
    assert len(reused) >= len(snapshot.chunks) - 2


def test_a_key_of_the_maximum_length_fits_and_a_tiny_limit_is_refused_naming_the_option() -> None:
    with pytest.raises(PermanentSourceError, match=r"state_max_value_bytes=1000 is too small for the S3 snapshot"):
        Chunking.for_limit(1000)
    chunking = Chunking.for_limit(1600)
    long_keys = [("k" * 1020) + f"{i:04d}" for i in range(5)]
    snapshot, written = build([(k, etag_hash(k)) for k in long_keys], chunking, new_ref_factory(1))
    assert len(snapshot.chunks) == 5  # one key per chunk: each alone is near the cap
    assert max(len(v) + 2 for v in written.values()) <= 1600


# --------------------------------------------------------------------------------------------------
# the memory: cursor size, reads, writes, garbage
# --------------------------------------------------------------------------------------------------
def test_100k_random_keys_keep_a_tiny_cursor_and_idle_polls_read_and_write_nothing() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="data/", event_kinds="all")
    store = MemoryChunkStore()
    objects = [obj(k) for k in random_keys(100_000)]

    async def scenario() -> None:
        memory = SnapshotMemory(store)
        first = await apoll(memory, config, None, objects, 10**9)
        assert len(first.items) == 100_000
        cursor = first.cursor
        assert len(json.dumps(cursor)) < 300
        store.commit(cursor)
        reads, writes = store.reads, store.writes
        idle = await apoll(memory, config, cursor, objects, 500)
        assert idle.items == [] and idle.cursor == cursor
        assert (store.reads, store.writes) == (reads, writes)  # the decoded chunks are cached
        objects[10] = obj(objects[10].key, etag="e2", lm=T0 + 5)
        changed = await apoll(memory, config, cursor, objects, 500)
        assert [(i.data["kind"], i.data["key"]) for i in changed.items] == [("modified", objects[10].key)]
        assert store.writes - writes <= 3

    run(scenario())
    assert max(len(v) + 2 for v in stored_values(store).values()) <= LIMIT


def test_garbage_is_collected_after_commits_but_never_what_an_uncommitted_descendant_needs() -> None:
    """A watcher yields batch 1, then batch 2 derived from it; batch 1 commits; GC must keep batch 2's chunks."""
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all")
    store = MemoryChunkStore(max_value_bytes=2048)  # small chunks: many refs
    objects = [obj(f"in/{i:05d}") for i in range(400)]

    async def scenario() -> None:
        memory = SnapshotMemory(store)
        base = (await apoll(memory, config, None, objects, 10**9)).cursor
        store.commit(base)
        objects.append(obj("in/00100-a"))
        b1 = await apoll(memory, config, base, objects, 500)
        objects[5] = obj("in/00005", etag="e2")
        b2 = await apoll(memory, config, b1.cursor, objects, 500)
        store.commit(b1.cursor)  # Airflow confirmed batch 1
        objects.append(obj("in/00399-z"))
        await apoll(memory, config, b2.cursor, objects, 500)  # this poll collects garbage relative to b1
        # Batch 2 is still committable: a fresh process loads it completely.
        store.commit(b2.cursor)
        loaded = await SnapshotMemory(store).load(config, check_cursor(config, b2.cursor))
        assert len(loaded[0]) == 401
        # Once b2 is committed, everything else of generations <= its own is garbage.
        fresh = SnapshotMemory(store)
        await fresh.collect_garbage(check_cursor(config, b2.cursor))
        live = {r for s in loaded for r in s.refs()}
        generation = b2.cursor["g"]
        leftovers = {r for r in stored_values(store) if r not in live}
        assert all((ref_generation(r) or 0) > generation for r in leftovers), leftovers

    run(scenario())


def test_a_cursor_whose_chunks_a_newer_commit_collected_is_superseded_not_damaged() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all")
    store = MemoryChunkStore(max_value_bytes=2048)
    objects = [obj(f"in/{i:04d}") for i in range(200)]

    async def scenario() -> None:
        base = (await apoll(SnapshotMemory(store), config, None, objects, 10**9)).cursor
        store.commit(base)
        objects[3] = obj("in/0003", etag="e2")
        # Two triggerers (HA) poll from the same committed cursor; A commits first and collects garbage.
        a, b = SnapshotMemory(store), SnapshotMemory(store)
        batch_a = await apoll(a, config, base, objects, 500)
        batch_b = await apoll(b, config, base, objects, 500)
        assert batch_a.items[0].dedup_id == batch_b.items[0].dedup_id
        store.commit(batch_a.cursor)
        await apoll(a, config, batch_a.cursor, objects, 500)
        # B's batch can never commit (compare-and-set against the old version); a fresh process that
        # tries to poll from it finds its chunks gone and gets a conflict, not a "damaged" error.
        with pytest.raises(SnapshotSuperseded, match=r"superseded by a newer commit.*now version 2") as info:
            await apoll(SnapshotMemory(store), config, batch_b.cursor, objects, 500)
        assert isinstance(info.value, StateConflict)
        # Damage to the committed cursor's own chunks is permanent and says how to repair it.
        victim = next(r for r in stored_values(store) if r in json.dumps(batch_a.cursor))
        del store.values[victim]
        with pytest.raises(PermanentSourceError, match=r"snapshot of memory is damaged.*trigger-kit state reset"):
            await apoll(SnapshotMemory(store), config, batch_a.cursor, objects, 500)

    run(scenario())


# --------------------------------------------------------------------------------------------------
# crashes at any point: a model of the bucket against watcher and sensor runs
# --------------------------------------------------------------------------------------------------
def test_random_crashes_commits_and_races_never_lose_a_change_nor_break_the_committed_snapshot() -> None:
    """Objects are created, overwritten and deleted while processes poll, commit and crash.

    Model: a "process" polls from the committed cursor, keeps up to three uncommitted batches in
    flight (as a watcher in ack mode), commits a prefix of them with compare-and-set, or crashes
    (dropping everything uncommitted); sometimes two processes race from the same version (HA, or
    a sensor and a retried run). Checked after every step: the committed cursor loads completely in
    a fresh process; and at the end, every change that existed at some poll was reported in a
    committed batch (or superseded by a later change to the same key), with its first dedup id.
    """
    rng = random.Random(20)
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes=["a/", "b/"], event_kinds="all")
    store = MemoryChunkStore(max_value_bytes=2048)
    bucket: dict[str, S3Object] = {f"{p}{i:03d}": obj(f"{p}{i:03d}") for p in ("a/", "b/") for i in range(60)}

    async def scenario() -> None:
        base = (await apoll(SnapshotMemory(store), config, None, list(bucket.values()), 10**9)).cursor
        store.commit(base)
        # What the consumer knows: the committed state of every key, from committed batches only.
        known = {k: o.etag for k, o in bucket.items()}
        first_ids: dict[tuple[str, str, str | None], str] = {}
        processes: list[dict[str, Any]] = []
        for step in range(600):
            action = rng.random()
            if action < 0.35:  # the bucket changes
                for _ in range(rng.randint(1, 4)):
                    key = f"{rng.choice(['a/', 'b/'])}{rng.randint(0, 90):03d}"
                    if key in bucket and rng.random() < 0.3:
                        del bucket[key]
                    else:
                        bucket[key] = obj(key, etag=f"e{step}", lm=T0 + step)
            elif not processes or (action < 0.42 and len(processes) < 2):  # a process starts (HA: two at once)
                cursor, version = store.cursor  # type: ignore[misc]
                processes.append({"memory": SnapshotMemory(store), "version": version, "base": cursor, "batches": []})
            elif action < 0.70:  # a process polls (its next batch derives from its last one)
                process = rng.choice(processes)
                if len(process["batches"]) < 3:
                    cursor = process["batches"][-1].cursor if process["batches"] else process["base"]
                    try:
                        batch = await apoll(process["memory"], config, cursor, list(bucket.values()), rng.randint(1, 6))
                    except SnapshotSuperseded:
                        processes.remove(process)  # restarts later from the committed cursor
                        continue
                    if batch.items or batch.cursor != cursor:
                        process["batches"].append(batch)
            elif action < 0.95:  # a process commits its oldest batches (compare-and-set)
                process = rng.choice(processes)
                if process["batches"]:
                    count = rng.randint(1, len(process["batches"]))
                    committed, version = store.cursor  # type: ignore[misc]
                    if version != process["version"]:
                        processes.remove(process)  # StateConflict: nothing committed
                        continue
                    for batch in process["batches"][:count]:
                        for item in batch.items:
                            data = item.data
                            if data["kind"] != "deleted":  # a deletion's id names the hash it deleted
                                change = (data["key"], data["kind"], data["etag"])
                                assert first_ids.setdefault(change, item.dedup_id) == item.dedup_id
                            if data["kind"] == "deleted":
                                known.pop(data["key"], None)
                            else:
                                known[data["key"]] = data["etag"]
                    process["base"] = process["batches"][count - 1].cursor  # the next poll derives from here
                    process["version"] = store.commit(process["base"])
                    process["batches"] = process["batches"][count:]
            else:  # a process crashes
                processes.remove(rng.choice(processes))
            committed = check_cursor(config, store.cursor[0])  # type: ignore[index]
            loaded = await SnapshotMemory(store).load(config, committed)
            assert sum(len(s) for s in loaded) == sum(p["n"] for p in committed["prefixes"].values())

        # Drain: one last process catches up and commits; the consumer then knows the bucket exactly.
        memory = SnapshotMemory(store)
        cursor, version = store.cursor  # type: ignore[misc]
        while True:
            batch = await apoll(memory, config, cursor, list(bucket.values()), 7)
            for item in batch.items:
                data = item.data
                if data["kind"] == "deleted":
                    known.pop(data["key"], None)
                else:
                    known[data["key"]] = data["etag"]
            version = store.commit(batch.cursor)
            cursor = batch.cursor
            if not batch.more:
                break
        assert known == {k: o.etag for k, o in bucket.items()}
        await memory.collect_garbage(check_cursor(config, cursor))
        live = {r for s in await SnapshotMemory(store).load(config, check_cursor(config, cursor)) for r in s.refs()}
        # Only chunks of crashed processes' generations above the committed one may remain, until a
        # later commit's generation reaches theirs.
        leftovers = set(stored_values(store)) - live
        assert all((ref_generation(r) or 0) > cursor["g"] for r in leftovers), leftovers

    run(scenario())
