"""Kernel file notifications (inotify) wake directory watches; polling stays the truth.

Real filesystem, real inotify, the hub of the test's event loop. No timed assertions: where a test
must prove that a notification (not a poll) found a file, ``poll_interval`` and
``reconcile_interval`` are 3600 s, so only a notification explains a detection within the wait.
Failure seams are the listener's and the watches' own (``fail``, ``deaf``, ``max_watches``,
``no_event_fs_types``): no configuration, nothing mocked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.hub.directories import DirectoryHub, DirectorySubscription
from airflow_trigger_kit.hub.inotify import NO_EVENT_FS_TYPES, fs_type_of, parse_mountinfo
from airflow_trigger_kit.sources.base import JSON, Batch
from airflow_trigger_kit.sources.directory import DirectoryWatchConfig
from airflow_trigger_kit.sources.directory import listing as listing_module
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from tests.triggerer_harness import wait_until

pytestmark = pytest.mark.integration

NEVER = 3600.0
"""poll_interval / reconcile_interval that no test waits for: only a notification explains a detection."""


@pytest.fixture(autouse=True)
def short_quiet_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing_module, "QUIET_MARGIN_NS", 200_000_000)


def hub() -> DirectoryHub:
    return get_hub().directories


def kernel_watches() -> int:
    """Watches the kernel holds on the hub's inotify descriptor (``/proc/self/fdinfo``)."""
    fd = hub().listener.fd
    if fd is None:
        return 0
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return sum(1 for line in f if line.startswith("inotify wd:"))


def subscribe(dirs: list[Path], **kw: Any) -> DirectorySubscription:
    params: dict[str, Any] = {"directories": [str(d) for d in dirs], "settle_seconds": 0.2, **kw}
    return hub().subscribe(DirectoryWatchConfig.create(**params))


def wait(
    sub: DirectorySubscription, cursor: JSON, *, poll: float = NEVER, reconcile: float = NEVER, max_items: int = 500
) -> asyncio.Future[Batch]:
    return asyncio.ensure_future(sub.next_batch(cursor, max_items, poll, reconcile_interval=reconcile))


async def live(sub: DirectorySubscription) -> None:
    await wait_until(lambda: sub.listener is not None and sub.listener.live, what="the watch's notifications live")


def names(batch: Batch) -> list[str]:
    return sorted(str(i.data["relative_path"]) for i in batch.items)


async def test_a_notification_alone_wakes_the_wait(tmp_path: Path) -> None:
    sub = subscribe([tmp_path])
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor)
        await live(sub)
        (tmp_path / "a.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["a.csv"]
        assert hub().listener.events >= 1 and hub().listener.flushes >= 2, "the connect hint, then the file's"
    finally:
        sub.close()


async def test_the_trigger_is_woken_by_a_notification_and_notify_false_polls_without_a_listener(
    tmp_path: Path,
) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    on.mkdir()
    off.mkdir()

    def trigger(d: Path, cursor: JSON, **kw: Any) -> MultiDirectoryTrigger:
        return MultiDirectoryTrigger(
            directories=[str(d)],
            namespace="notify-tests",
            name=f"w-{uuid.uuid4().hex[:8]}",
            mode="sensor",
            cursor=cursor,
            cursor_version=1,
            settle_seconds=0.2,
            **kw,
        )

    async def first(t: MultiDirectoryTrigger) -> dict[str, Any]:
        gen = t.run()
        try:
            return (await gen.__anext__()).payload
        finally:
            await gen.aclose()

    base_on = await trigger(on, None).build_source().baseline()
    base_off = await trigger(off, None).build_source().baseline()
    notified = asyncio.ensure_future(first(trigger(on, base_on, poll_interval=NEVER, reconcile_interval=NEVER)))
    polled = asyncio.ensure_future(
        first(trigger(off, base_off, notify=False, poll_interval=0.2, reconcile_interval=NEVER))
    )
    await wait_until(lambda: hub().listener.live and kernel_watches() == 1, what="one watch, for the notified one")
    (on / "a.csv").write_text("x")
    (off / "b.csv").write_text("x")
    got_on, got_off = await asyncio.wait_for(asyncio.gather(notified, polled), 30)
    assert [i["name"] for i in got_on["items"]] == ["a.csv"]
    assert [i["name"] for i in got_off["items"]] == ["b.csv"]


async def test_dropped_notifications_lose_nothing_the_reconcile_poll_finds_it(tmp_path: Path) -> None:
    sub = subscribe([tmp_path])
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor, reconcile=0.5)
        await live(sub)
        hub().listener.deaf = True  # every event from now on is read and dropped
        events = hub().listener.events
        (tmp_path / "a.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["a.csv"]
        assert hub().listener.events > events, "the kernel sent events; they were dropped"
    finally:
        hub().listener.deaf = False
        sub.close()


async def test_a_burst_of_10000_file_events_coalesces_into_few_polls(tmp_path: Path) -> None:
    sub = subscribe([tmp_path], settle_seconds=0.5)
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor, max_items=20_000)
        await live(sub)
        ticks = hub().ticker.ticks

        def burst() -> None:
            for n in range(10_000):
                (tmp_path / f"f{n:05d}.csv").touch()

        await asyncio.to_thread(burst)
        found: set[str] = set()
        while len(found) < 10_000:
            batch = await asyncio.wait_for(waiting, 60)
            found.update(names(batch))
            cursor = batch.cursor
            if len(found) < 10_000:
                waiting = wait(sub, cursor, max_items=20_000)
        polls = hub().ticker.ticks - ticks
        assert len(found) == 10_000
        assert hub().listener.events >= 10_000, "at least one kernel event per file"
        assert polls <= 20, f"{hub().listener.events} events made {polls} polls"
    finally:
        sub.close()


async def test_a_settling_file_is_polled_again_when_it_settles_not_at_the_reconcile(tmp_path: Path) -> None:
    sub = subscribe([tmp_path], settle_seconds=1.0)
    try:
        cursor = await sub.baseline()
        (tmp_path / "a.csv").write_text("x")  # before any watch: no event will ever announce it
        waiting = wait(sub, cursor)
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["a.csv"]
        assert hub().listener.events == 0, "no notification: the poll at its settle time found it"
    finally:
        sub.close()


async def test_the_listener_failing_mid_stream_falls_back_to_polling_and_recovers(tmp_path: Path) -> None:
    sub = subscribe([tmp_path])
    listener = hub().listener
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor, poll=0.3)
        await live(sub)
        listener.fail(OSError(9, "Bad file descriptor"))
        await wait_until(lambda: listener.failures == 1 and not listener.live, what="the failure")
        # Down: the waiter polls every poll_interval (short here) and finds the file.
        (tmp_path / "a.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["a.csv"]
        # Back up after the backoff: the watch is added to the new inotify instance, and only a
        # notification explains the next detection.
        await wait_until(lambda: listener.connects == 2, what="the reconnect")
        waiting = wait(sub, batch.cursor)
        await live(sub)
        assert kernel_watches() == 1
        (tmp_path / "b.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["b.csv"]
    finally:
        sub.close()


async def test_watches_refused_by_the_kernel_poll_and_are_retried(tmp_path: Path) -> None:
    watches = hub().watches
    watches.max_watches = 0  # the kernel's answer past fs.inotify.max_user_watches: ENOSPC
    sub = subscribe([tmp_path])
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor, poll=0.3)
        await wait_until(lambda: watches.refusals >= 1, what="a refused watch")
        assert sub.listener is not None and not sub.listener.live, "not live: polls every poll_interval"
        (tmp_path / "a.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["a.csv"]
        watches.max_watches = None  # room again: the next poll adds the watch
        waiting = wait(sub, batch.cursor, poll=0.3)
        await live(sub)
        assert kernel_watches() == 1
        waiting.cancel()
    finally:
        watches.max_watches = None
        sub.close()


async def test_directories_on_file_systems_without_events_are_polled(tmp_path: Path) -> None:
    def local_fs_type() -> str | None:
        with open("/proc/self/mountinfo") as f:
            return fs_type_of(os.path.realpath(tmp_path), parse_mountinfo(f.read()))

    local_type = await asyncio.to_thread(local_fs_type)
    assert local_type is not None
    hub().watches.no_event_fs_types = NO_EVENT_FS_TYPES | {local_type}  # as if tmp_path were on NFS
    sub = subscribe([tmp_path])
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor, poll=0.3)
        await wait_until(lambda: hub().listener.live and hub().ticker.ticks >= 2, what="ticks while live")
        assert sub.listener is not None and not sub.listener.live, "the watch itself is not live"
        assert kernel_watches() == 0
        (tmp_path / "a.csv").write_text("x")
        assert names(await asyncio.wait_for(waiting, 30)) == ["a.csv"]
    finally:
        hub().watches.no_event_fs_types = NO_EVENT_FS_TYPES
        sub.close()


async def test_one_kernel_watch_per_directory_for_100_waits_on_10_directories(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{n}" for n in range(10)]
    for d in dirs:
        d.mkdir()
    subs = [
        subscribe([dirs[n % 10]], patterns="*.csv" if n % 2 else "*", settle_seconds=0.2 + (n % 3) / 10)
        for n in range(100)
    ]
    try:
        cursors = [await s.baseline() for s in subs]
        waits = [wait(s, c) for s, c in zip(subs, cursors, strict=True)]
        await wait_until(lambda: all(s.listener is not None and s.listener.live for s in subs), what="all live")
        assert kernel_watches() == 10
        assert len(hub().watches) == 10
        (dirs[7] / "x.csv").write_text("x")
        woken = [w for n, w in enumerate(waits) if n % 10 == 7]
        assert all(names(b) == ["x.csv"] for b in await asyncio.wait_for(asyncio.gather(*woken), 30))
        assert not any(w.done() for n, w in enumerate(waits) if n % 10 != 7)
        for w in waits:
            w.cancel()
    finally:
        for s in subs:
            s.close()
    await wait_until(lambda: hub().listener.fd is None, what="the listener stopped with its last watch")


async def test_a_removed_and_recreated_directory_is_watched_again(tmp_path: Path) -> None:
    d = tmp_path / "incoming"
    d.mkdir()
    sub = subscribe([d])
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor, poll=0.3)
        await live(sub)
        shutil.rmtree(d)  # IN_DELETE_SELF, IN_IGNORED: a hint, the watch is gone, the waiter polls
        await wait_until(lambda: sub.listener is not None and not sub.listener.live, what="no longer live")
        assert kernel_watches() == 0
        d.mkdir()
        (d / "a.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["a.csv"]
        waiting = wait(sub, batch.cursor, poll=0.3)
        await live(sub)
        assert kernel_watches() == 1, "watched again once it reappeared"
        waiting.cancel()
    finally:
        sub.close()


async def test_a_subdirectory_created_after_start_is_watched_by_a_recursive_watch(tmp_path: Path) -> None:
    sub = subscribe([tmp_path], recursive=True)
    try:
        cursor = await sub.baseline()
        waiting = wait(sub, cursor)
        await live(sub)
        assert kernel_watches() == 1
        # A new subtree, with a file written before its watches can exist: IN_CREATE|IN_ISDIR hints,
        # the recursive listing finds the file, the new watches make the listing run once more.
        (tmp_path / "sub" / "inner").mkdir(parents=True)
        (tmp_path / "sub" / "inner" / "early.csv").write_text("x")
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["sub/inner/early.csv"]
        waiting = wait(sub, batch.cursor)
        await wait_until(lambda: kernel_watches() == 3, what="watches on sub and sub/inner")
        await live(sub)
        (tmp_path / "sub" / "inner" / "late.csv").write_text("x")  # only its event explains a detection
        batch = await asyncio.wait_for(waiting, 30)
        assert names(batch) == ["sub/inner/late.csv"]
    finally:
        sub.close()
