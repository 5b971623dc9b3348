"""The multi-directory watch on a real filesystem: trigger loop, sensor mode and watcher delivery."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.sources.directory import DirectoryWatchConfig, scan_directory
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from tests.triggerer_harness import TriggererHarness, wait_until

pytestmark = pytest.mark.integration

FAST = {"settle_seconds": 0.3, "poll_interval": 0.05, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2}


@pytest.fixture
def ten_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path / f"client_{n:02d}" for n in range(10)]
    for d in dirs:
        d.mkdir()
    return dirs


def unique_name() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


async def first_event(trigger: MultiDirectoryTrigger, timeout: float = 20) -> dict[str, Any]:
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), timeout)
    finally:
        await gen.aclose()
    return event.payload


def sensor_trigger(dirs: list[Path], cursor: Any, **kw: Any) -> MultiDirectoryTrigger:
    params: dict[str, Any] = {
        "directories": [str(d) for d in dirs],
        "namespace": "test",
        "name": unique_name(),
        "mode": "sensor",
        "cursor": cursor,
        "cursor_version": 1,
        **FAST,
    }
    params.update(kw)
    return MultiDirectoryTrigger(**params)


async def baseline_of(dirs: list[Path], **kw: Any) -> Any:
    return await sensor_trigger(dirs, None, **kw).build_source().baseline()


async def test_reports_which_file_was_found_where_across_ten_directories(ten_dirs: list[Path]) -> None:
    kw = {"patterns": ["*.csv", "*.json"]}
    (ten_dirs[0] / "existing.csv").write_text("old")
    await asyncio.sleep(0.4)
    cursor = await baseline_of(ten_dirs, **kw)
    expected = set()
    for n, d in enumerate(ten_dirs):
        if n % 3 == 0:
            (d / f"orders_{n}.csv").write_text("id\n1\n")
            expected.add((str(d), f"orders_{n}.csv"))
        if n % 4 == 1:
            (d / f"meta_{n}.json").write_text("{}")
            expected.add((str(d), f"meta_{n}.json"))
        for ignored in (".hidden.csv", "upload.csv.part", "x.tmp", "~lock.csv", "notes.txt"):
            (d / ignored).write_text("ignored")
    await asyncio.sleep(0.4)
    payload = await first_event(sensor_trigger(ten_dirs, cursor, **kw))
    found = {(i["directory"], i["name"]) for i in payload["items"]}
    assert found == expected
    assert all(
        i["kind"] == "created" and i["path"] == os.path.join(i["directory"], i["name"]) for i in payload["items"]
    )
    assert payload["source"] == "directory" and len(payload["dedup_ids"]) == len(expected)
    assert payload["commit"]["expected_version"] == 1


async def test_half_written_file_is_reported_once_complete(tmp_path: Path) -> None:
    target = tmp_path / "big.csv"
    stop = threading.Event()

    def writer() -> None:
        with open(target, "w") as f:
            for n in range(15):
                f.write(f"{n},{'x' * 100}\n")
                f.flush()
                time.sleep(0.1)
        stop.set()

    cursor = await baseline_of([tmp_path], settle_seconds=0.5)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        payload = await first_event(sensor_trigger([tmp_path], cursor, settle_seconds=0.5))
    finally:
        thread.join()
    assert stop.is_set(), "reported before the writer finished"
    assert payload["items"][0]["size"] == target.stat().st_size


async def test_rename_into_place_of_a_copy_with_an_old_mtime_is_detected(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    staged = tmp_path / "staged.csv"
    staged.write_text("data")
    os.utime(staged, (1_000_000_000, 1_000_000_000))  # mtime in 2001, as `cp -p` would keep it
    cursor = await baseline_of([incoming], settle_seconds=0.1)
    os.rename(staged, incoming / "published.csv")
    await asyncio.sleep(0.2)
    payload = await first_event(sensor_trigger([incoming], cursor, settle_seconds=0.1))
    assert [i["name"] for i in payload["items"]] == ["published.csv"]
    assert payload["items"][0]["mtime"].startswith("2001-")


async def test_missing_directory_is_waited_for(tmp_path: Path) -> None:
    later = tmp_path / "not_yet"
    cursor = await baseline_of([later])
    assert cursor["dirs"] == {}

    async def create_later() -> None:
        await asyncio.sleep(0.5)
        later.mkdir()
        (later / "first.csv").write_text("1")

    task = asyncio.create_task(create_later())
    payload = await first_event(sensor_trigger([later], cursor))
    await task
    assert [i["name"] for i in payload["items"]] == ["first.csv"]


async def test_not_a_directory_fails_with_an_error_event_naming_it(tmp_path: Path) -> None:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    payload = await first_event(sensor_trigger([a_file], None))
    assert payload["status"] == "error"
    assert str(a_file) in payload["message"] and "not a directory" in payload["message"]


def _scan_unprivileged(directory: str, conn: Any) -> None:
    """Child process: drop to 'nobody' when root (root reads everything), then scan."""
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    try:
        config = DirectoryWatchConfig.create(directories=[directory])
        scan_directory(config, config.directories[0])
        conn.send("no error")
    except PermanentSourceError as exc:
        conn.send(f"permanent: {exc}")
    except BaseException as exc:
        conn.send(f"other: {type(exc).__name__}: {exc}")


def test_unreadable_directory_is_a_permanent_error(tmp_path: Path) -> None:
    import multiprocessing

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    tmp_path.chmod(0o755)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_scan_unprivileged, args=(str(locked), child))
    proc.start()
    try:
        assert parent.poll(30), "the scanning process did not answer"
        answer = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        locked.chmod(0o700)
    assert answer.startswith("permanent:"), answer
    assert "permission denied" in answer and str(locked) in answer


def test_scan_as_root_of_a_missing_path_reports_absent(tmp_path: Path) -> None:
    config = DirectoryWatchConfig.create(directories=[str(tmp_path / "nope")])
    assert scan_directory(config, config.directories[0]).exists is False
    with pytest.raises(PermanentSourceError):
        file_path = tmp_path / "f"
        file_path.write_text("")
        scan_directory(DirectoryWatchConfig.create(directories=[str(file_path)]), str(file_path))


async def test_scanning_never_runs_on_the_event_loop_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    real_scandir = os.scandir

    def recording_scandir(path: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    cursor = await baseline_of([tmp_path])
    (tmp_path / "a.csv").write_text("1")
    await asyncio.sleep(0.4)
    await first_event(sensor_trigger([tmp_path], cursor))
    assert threads and threading.main_thread().name not in threads


# --------------------------------------------------------------------------------------------------
# Watcher delivery through Airflow's real SharedStreamManager
# --------------------------------------------------------------------------------------------------
def watcher(dirs: list[Path], name: str, **kw: Any) -> MultiDirectoryTrigger:
    return MultiDirectoryTrigger(
        directories=[str(d) for d in dirs], namespace="test", name=name, mode="watcher", **{**FAST, **kw}
    )


async def test_watermark_moves_only_after_airflow_confirms_the_event_was_stored(tmp_path: Path) -> None:
    name = unique_name()
    state = ProcessState("test", name)
    harness = TriggererHarness()
    harness.start(watcher([tmp_path], name))
    await wait_until(lambda: state.aget(CURSOR_KEY), what="baseline")
    baseline = await state.aget(CURSOR_KEY)
    assert baseline is not None and baseline.version == 1
    for n in range(3):
        (tmp_path / f"f{n}.csv").write_text("x")
    await wait_until(lambda: len(harness.items()) == 3, what="3 files delivered")
    await asyncio.sleep(0.5)
    entry = await state.aget(CURSOR_KEY)
    assert entry is not None and entry.version == 1, "watermark moved before the event was stored"
    harness.confirm_stored()

    async def committed() -> bool:
        e = await state.aget(CURSOR_KEY)
        return e is not None and e.version == 2

    await wait_until(committed, what="commit after confirmation")
    await harness.crash()
    assert harness.errors == []


async def test_crash_before_confirmation_redelivers_with_the_same_dedup_ids(tmp_path: Path) -> None:
    name = unique_name()
    first = TriggererHarness()
    first.start(watcher([tmp_path], name))
    await wait_until(lambda: ProcessState("test", name).aget(CURSOR_KEY), what="baseline")
    for n in range(4):
        (tmp_path / f"f{n}.csv").write_text("x")
    await wait_until(lambda: len(first.items()) == 4, what="first delivery")
    await first.crash()  # killed before the metadata database confirmed anything

    second = TriggererHarness()
    second.start(watcher([tmp_path], name))
    await wait_until(lambda: len(second.items()) == 4, what="redelivery after the crash")
    assert sorted(i["dedup_id"] for i in second.items()) == sorted(i["dedup_id"] for i in first.items())
    second.confirm_stored()

    async def committed() -> bool:
        e = await ProcessState("test", name).aget(CURSOR_KEY)
        return e is not None and e.version == 2

    await wait_until(committed, what="commit")
    await second.crash()

    third = TriggererHarness()
    third.start(watcher([tmp_path], name))
    await asyncio.sleep(1.5)
    assert third.events == [], "a restart without new data fired again"
    (tmp_path / "new.csv").write_text("x")
    await wait_until(lambda: len(third.items()) == 1, what="only the new file")
    assert third.items()[0]["name"] == "new.csv"
    await third.crash()


async def test_unconfirmed_event_times_out_and_the_watermark_stays(tmp_path: Path) -> None:
    name = unique_name()
    harness = TriggererHarness(ack_timeout=0.5)
    harness.start(watcher([tmp_path], name))
    await wait_until(lambda: ProcessState("test", name).aget(CURSOR_KEY), what="baseline")
    (tmp_path / "a.csv").write_text("x")
    await wait_until(lambda: harness.errors, timeout=10, what="ack timeout to fail the trigger")
    entry = await ProcessState("test", name).aget(CURSOR_KEY)
    assert entry is not None and entry.version == 1
    await harness.crash()


async def test_two_triggerers_lose_nothing_and_never_move_the_watermark_backwards(tmp_path: Path) -> None:
    """High availability: two triggerers run the same watcher while files keep arriving."""
    name = unique_name()
    state = ProcessState("test", name)
    await state.aset(CURSOR_KEY, await watcher([tmp_path], name).build_source().baseline(), expected_version=0)
    harnesses = [TriggererHarness(), TriggererHarness()]
    stop = asyncio.Event()
    restarts = 0

    async def keep_running(h: TriggererHarness, base_id: int) -> None:
        nonlocal restarts
        trigger_id = base_id
        while not stop.is_set():
            task = h.start(watcher([tmp_path], name), trigger_id)
            while not task.done() and not stop.is_set():
                h.confirm_stored()
                await asyncio.sleep(0.05)
            if task.done() and not stop.is_set():
                restarts += 1  # Airflow re-creates a failed watcher; so do we
                trigger_id += 1
        await h.crash()

    hwms: list[int] = []

    async def watch_watermark() -> None:
        last_version = 0
        while not stop.is_set():
            entry = await state.aget(CURSOR_KEY)
            if entry is not None and entry.version != last_version:
                last_version = entry.version
                hwms.append(entry.value["dirs"].get(str(tmp_path), {}).get("hwm", 0))
            await asyncio.sleep(0.01)

    runners = [asyncio.create_task(keep_running(h, 100 * (n + 1))) for n, h in enumerate(harnesses)]
    monitor = asyncio.create_task(watch_watermark())
    names = [f"f{n:03d}.csv" for n in range(60)]
    for n in names:
        (tmp_path / n).write_text("x")
        await asyncio.sleep(0.03)

    def delivered() -> set[str]:
        return {i["name"] for h in harnesses for i in h.items()}

    await wait_until(lambda: delivered() >= set(names), timeout=30, what="every file delivered")
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*runners, monitor)
    assert delivered() == set(names)
    assert hwms == sorted(hwms), f"watermark moved backwards: {hwms}"
    final = await state.aget(CURSOR_KEY)
    assert final is not None
    total = sum(len(h.items()) for h in harnesses)
    print(f"\nHA: {len(names)} files, {total} deliveries ({total - len(names)} duplicates), {restarts} restarts")


async def test_quiet_directories_are_not_listed_again_and_new_files_are_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """created-only watches skip listing a directory whose mtime shows no new entry."""
    from airflow_trigger_kit.sources.directory import listing as directory_module

    monkeypatch.setattr(directory_module, "QUIET_MARGIN_NS", 100_000_000)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        listed.append(str(path))
        return real_scandir(path)

    for n in range(20):
        (tmp_path / f"old{n}.csv").write_text("x")
    await asyncio.sleep(0.3)
    source = sensor_trigger([tmp_path], None).build_source()
    cursor = await source.baseline()
    monkeypatch.setattr(os, "scandir", counting_scandir)
    batch = await source.poll(cursor, 100)  # the baseline's listing is still valid: not listed again
    assert batch.items == [] and listed == []
    for _ in range(5):
        assert (await source.poll(batch.cursor, 100)).items == []
    assert listed == [], "a quiet directory was listed again"
    (tmp_path / "new.csv").write_text("x")
    await asyncio.sleep(0.4)
    found = await source.poll(batch.cursor, 100)
    assert [i["name"] for i in (it.to_json() for it in found.items)] == ["new.csv"]
    assert len(listed) == 1
