"""The hub shares directory work between waits: counts of listings, stats and thread hops.

Every test runs real triggers (``run()`` in sensor mode, or the watcher's shared stream) on a real
filesystem in one event loop, as a triggerer runs them, and reads the hub's counters.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.sources.directory import Listing, ListingKey
from airflow_trigger_kit.sources.directory import listing as listing_module
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from tests.triggerer_harness import first_payload, wait_until

pytestmark = pytest.mark.integration

# These tests count the work of polling itself (stats, listings, hops per tick): notifications off, so
# every tick comes from poll_interval (tests/integration/test_directory_notifications.py covers them).
FAST = {
    "settle_seconds": 0.1,
    "poll_interval": 0.1,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "notify": False,
}


@pytest.fixture(autouse=True)
def short_quiet_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    # Directories count as quiet 0.2 s after their last change instead of 2 s, to keep tests short.
    monkeypatch.setattr(listing_module, "QUIET_MARGIN_NS", 200_000_000)


def make_dirs(root: Path, count: int, files: int) -> list[Path]:
    dirs = []
    for d in range(count):
        path = root / f"client_{d:02d}"
        path.mkdir()
        for n in range(files):
            (path / f"{n:04d}.csv").write_text("id\n1\n")
        dirs.append(path)
    return dirs


def sensor(dirs: list[Path], cursor: Any, **kw: Any) -> MultiDirectoryTrigger:
    params: dict[str, Any] = {
        "directories": [str(d) for d in dirs],
        "namespace": "hub-tests",
        "name": f"w-{uuid.uuid4().hex[:8]}",
        "mode": "sensor",
        "cursor": cursor,
        "cursor_version": 1,
        **FAST,
    }
    params.update(kw)
    return MultiDirectoryTrigger(**params)


def listings_of(dirs: list[Path], recursive: bool = False) -> list[Listing]:
    cache = get_hub().directories.listings
    found = [cache.get(ListingKey(str(d), recursive, ())) for d in dirs]
    assert all(listing is not None for listing in found)
    return [listing for listing in found if listing is not None]


async def test_a_hundred_waits_list_each_directory_once_and_idle_ticks_cost_one_hop(tmp_path: Path) -> None:
    dirs = make_dirs(tmp_path, 10, 50)
    await asyncio.sleep(0.4)
    cursor = await sensor(dirs, None).build_source().baseline()
    hub = get_hub().directories
    waits = [asyncio.ensure_future(first_payload(sensor(dirs, cursor))) for _ in range(100)]
    await wait_until(lambda: hub.ticker.ticks >= 1 and len(hub.ticker) == 100, what="the first shared tick")
    await wait_until(lambda: hub.ticker.ticks >= 3, what="two more ticks")
    assert [listing.listings for listing in listings_of(dirs)] == [1] * 10, "each directory listed once for 100 waits"

    # Idle ticks: one hop to the worker thread each, one stat per directory, no listing. Counters
    # are read right after each tick, when no other tick can be under way.
    snapshots: list[tuple[int, list[int], list[int]]] = []

    def snapshot() -> None:
        found = listings_of(dirs)
        snapshots.append((hub.hops, [x.stats for x in found], [x.listings for x in found]))

    hub.ticker.observers.append(snapshot)
    await wait_until(lambda: len(snapshots) >= 6, what="six idle ticks")
    hub.ticker.observers.remove(snapshot)
    for (hops, stats, listed), (next_hops, next_stats, next_listed) in itertools.pairwise(snapshots):
        assert next_hops - hops == 1, "an idle tick is one hop to the worker thread"
        assert [b - a for a, b in zip(stats, next_stats, strict=True)] == [1] * 10, "one stat per directory"
        assert next_listed == listed == [1] * 10, "no listing on an idle tick"
    assert not any(w.done() for w in waits)

    (dirs[3] / "new.csv").write_text("id\n2\n")
    payloads = await asyncio.wait_for(asyncio.gather(*waits), 20)
    assert {tuple(i["name"] for i in p["items"]) for p in payloads} == {("new.csv",)}
    assert len({p["items"][0]["dedup_id"] for p in payloads}) == 1, "every wait reports the same change"
    relisted = [listing.listings for listing in listings_of(dirs)]
    assert relisted[:3] + relisted[4:] == [1] * 9, "only the changed directory is listed again"
    assert 2 <= relisted[3] <= 4, relisted
    assert len(hub.ticker) == 0


async def test_waits_with_different_patterns_share_one_listing_and_see_only_their_files(tmp_path: Path) -> None:
    (tmp_path / "old.csv").write_text("x")
    await asyncio.sleep(0.4)
    cursor = await sensor([tmp_path], None, patterns="*").build_source().baseline()
    csv = asyncio.ensure_future(first_payload(sensor([tmp_path], cursor, patterns="*.csv")))
    json_ = asyncio.ensure_future(first_payload(sensor([tmp_path], cursor, patterns=["*.json"])))
    await wait_until(lambda: get_hub().directories.ticker.ticks >= 2, what="shared ticks")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.csv").write_text("x")
    found = await asyncio.wait_for(asyncio.gather(csv, json_), 20)
    assert [[i["name"] for i in p["items"]] for p in found] == [["b.csv"], ["a.json"]]
    (listing,) = listings_of([tmp_path])
    assert listing.listings <= 4, "one listing per change for both patterns"


async def test_quiet_directories_stay_known_when_a_trigger_is_recreated(tmp_path: Path) -> None:
    dirs = make_dirs(tmp_path, 3, 20)
    await asyncio.sleep(0.4)
    cursor = await sensor(dirs, None).build_source().baseline()
    hub = get_hub().directories
    first = asyncio.ensure_future(first_payload(sensor(dirs, cursor)))
    await wait_until(lambda: hub.ticker.ticks >= 2, what="the first trigger's ticks")
    first.cancel()  # the task is cleared, or the triggerer re-creates the trigger
    await asyncio.gather(first, return_exceptions=True)
    listed = [listing.listings for listing in listings_of(dirs)]
    ticks = hub.ticker.ticks
    again = asyncio.ensure_future(first_payload(sensor(dirs, cursor)))
    await wait_until(lambda: hub.ticker.ticks >= ticks + 3, what="the re-created trigger's ticks")
    assert [listing.listings for listing in listings_of(dirs)] == listed, "the re-created trigger listed again"
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def test_memory_stays_flat_across_ten_thousand_subscribe_and_cancel_cycles(tmp_path: Path) -> None:
    dirs = make_dirs(tmp_path, 4, 5)
    cursor = await sensor(dirs, None).build_source().baseline()
    hub = get_hub().directories

    async def cycles(count: int) -> None:
        for n in range(count):
            task = asyncio.ensure_future(first_payload(sensor(dirs[n % 4 :] or dirs, cursor)))
            for _ in range(3):
                await asyncio.sleep(0)  # subscribed and waiting
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    await cycles(1_000)  # warm up caches (listings, regex, the ticker)
    await hub.run(lambda: None)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await cycles(10_000)
        await hub.run(lambda: None)  # apply queued unsubscriptions
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(hub.ticker) == 0
    assert all(listing.subscribers == 0 for listing in listings_of(dirs))
    assert len(hub.listings) == 4
    assert after - before < 256 * 1024, f"memory grew by {after - before} bytes over 10,000 cycles"


async def test_a_watch_of_modifications_sees_in_place_writes_through_the_shared_listing(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("v1")
    await asyncio.sleep(0.4)
    cursor = await sensor([tmp_path], None, event_kinds="modified").build_source().baseline()
    created_only = asyncio.ensure_future(first_payload(sensor([tmp_path], cursor=None, start_from="beginning")))
    modified = asyncio.ensure_future(first_payload(sensor([tmp_path], cursor, event_kinds="modified")))
    first = await asyncio.wait_for(created_only, 20)
    assert [i["name"] for i in first["items"]] == ["report.csv"]
    await wait_until(lambda: get_hub().directories.ticker.ticks >= 3, what="ticks")

    def append() -> int:
        with open(target, "a") as f:  # in place: the directory's mtime does not move
            f.write("v2")
        return os.path.getsize(target)

    size = await asyncio.to_thread(append)
    event = await asyncio.wait_for(modified, 20)
    assert [(i["name"], i["kind"], i["size"]) for i in event["items"]] == [("report.csv", "modified", size)]
