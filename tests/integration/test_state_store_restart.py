"""Faults: the PostgreSQL ProcessState store is restarted (a real ``pg_ctl``) while watches run.

The state store gets a cluster of its own (the session's PostgreSQL serves other tests and must not
be restarted under them), named through ``[trigger_kit] state_conn_id`` exactly as in production.
While it is down every read and write raises ``StateStoreUnavailable``: the watcher retries with
backoff (and, once its commit attempts are spent, ends its stream so the triggerer re-creates it,
which this harness does as Airflow would), and the sensor fails its task loudly. After the store is
back, both resume from the committed watermark: nothing is lost, nothing fires again from an empty
state, and no watermark moves backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_trigger_kit._sync import run_sync
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sensors import MultiDirectorySensor
from airflow_trigger_kit.state import ProcessState, StateStoreUnavailable
from airflow_trigger_kit.state.factory import aclose_backends
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from devtools.services import PgServer, find_pg_bindir, throwaway_postgres
from tests.services import PG_INSTALL_HINT
from tests.triggerer_harness import TriggererHarness, wait_until

pytestmark = pytest.mark.integration

CONN_ID = "fault_state"
FEED = 90
FAST = {"settle_seconds": 0.2, "poll_interval": 0.05, "retry_base_seconds": 0.05, "retry_max_seconds": 0.5}


@pytest.fixture(scope="module")
def state_server() -> Iterator[PgServer]:
    if find_pg_bindir() is None:
        pytest.fail(PG_INSTALL_HINT, pytrace=False)
    with throwaway_postgres() as server:
        yield server


@pytest.fixture
def pg_state(state_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> PgServer:
    """ProcessState on ``state_server``, configured the way a deployment does it."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", state_server.dsn())
    monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__STATE_CONN_ID", CONN_ID)
    return state_server


def watcher(directory: Path, name: str) -> MultiDirectoryTrigger:
    return MultiDirectoryTrigger(
        directories=[str(directory)],
        patterns="*.csv",
        namespace="fault",
        name=name,
        mode="watcher",
        start_from="beginning",
        **FAST,
    )


async def test_watcher_rides_out_a_state_store_restart(
    pg_state: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    state = ProcessState("fault", name)
    early = [f"early-{n}.csv" for n in range(5)]
    for file in early:
        (tmp_path / file).write_text("x")
    harness = TriggererHarness()
    stop = asyncio.Event()
    recreated = 0

    async def triggerer() -> None:
        """Confirm every event as stored; re-create the watcher when it ends, as Airflow does."""
        nonlocal recreated
        trigger_id = 1
        while not stop.is_set():
            task = harness.start(watcher(tmp_path, name), trigger_id)
            while not task.done() and not stop.is_set():
                harness.confirm_stored()
                await asyncio.sleep(0.02)
            if task.done() and not stop.is_set():
                recreated += 1
                trigger_id += 1
                await asyncio.sleep(0.2)  # Airflow re-creates a finished watcher about a second later
        await harness.crash()

    versions: list[int] = []
    unreadable = 0

    async def sample_versions() -> None:
        nonlocal unreadable
        while not stop.is_set():
            try:
                entry = await state.aget(CURSOR_KEY)
            except StateStoreUnavailable:
                unreadable += 1
            else:
                if entry is not None and (not versions or versions[-1] != entry.version):
                    versions.append(entry.version)
            await asyncio.sleep(0.02)

    running = [asyncio.create_task(triggerer()), asyncio.create_task(sample_versions())]
    try:
        delivered = lambda: {i["name"] for i in harness.items()}  # noqa: E731
        await wait_until(lambda: set(early) <= delivered(), what="the files that were there first")
        await wait_until(lambda: versions and versions[-1] >= 1, what="their commit")
        before_restart = len(harness.items())

        fed: list[str] = []

        async def feed() -> None:
            for n in range(FEED):
                name_n = f"late-{n:03d}.csv"
                (tmp_path / name_n).write_text("x")
                fed.append(name_n)
                await asyncio.sleep(0.03)

        feeding = asyncio.create_task(feed())
        # 1. A real restart while files land: commits fail for a moment and are retried with backoff.
        await wait_until(lambda: len(fed) >= FEED // 4, what="a quarter of the feed")
        await asyncio.to_thread(pg_state.pg_ctl, "restart", "-m", "fast")
        # 2. A longer outage: the watcher spends its commit attempts, ends its stream and is re-created;
        #    the new one must wait for its committed cursor, never start over from an empty state.
        await wait_until(lambda: len(fed) >= FEED // 2, what="half of the feed")
        await asyncio.to_thread(pg_state.pg_ctl, "stop", "-m", "fast")
        try:
            await wait_until(lambda: recreated >= 1, timeout=60, what="the watcher to end its stream")
            await asyncio.sleep(1.5)  # the re-created watcher retries loading its cursor meanwhile
        finally:
            await asyncio.to_thread(pg_state.pg_ctl, "start")
        await feeding
        await wait_until(lambda: set(fed) <= delivered(), timeout=60, what="every file after the restart")
        final_names = set(early) | set(fed)

        async def all_committed() -> bool:
            entry = await state.aget(CURSOR_KEY)
            hwm = entry.value["dirs"][str(tmp_path)]["hwm"] if entry else 0
            newest = max((tmp_path / f).stat().st_mtime_ns for f in fed)
            return entry is not None and hwm >= newest and not harness.unconfirmed

        await wait_until(all_committed, timeout=30, what="the last batch committed")
    finally:
        stop.set()
        await asyncio.gather(*running)
        await aclose_backends()

    names = [i["name"] for i in harness.items()]
    assert set(names) == final_names, f"lost: {sorted(final_names - set(names))}"
    after_restart = names[before_restart:]
    assert not set(early) & set(after_restart), "the watcher fired again from an empty state after the restart"
    assert versions == sorted(versions), f"the watermark version moved backwards: {versions}"
    ids: dict[str, set[str]] = {}
    for item in harness.items():
        ids.setdefault(item["name"], set()).add(item["dedup_id"])
    assert all(len(v) == 1 for v in ids.values()), "a repeat carried another dedup id than its first delivery"
    # The triggers log through Airflow's structlog setup, which writes to stdout.
    logged = capsys.readouterr().out.splitlines()
    store_errors = [line for line in logged if f"conn_id='{CONN_ID}' is unavailable" in line]
    store_errors += [repr(e) for e in harness.errors if isinstance(e, StateStoreUnavailable)]
    assert store_errors, "the restart never reached the watcher: this test proved nothing"
    assert any("commit failed" in m and "retrying in" in m for m in store_errors), "no commit backoff logged"
    assert any("loading the watermark failed" in m for m in store_errors), "the re-created watcher never waited"
    assert recreated >= 1
    print(
        f"\nstate store restart: {len(names)} deliveries of {len(final_names)} files "
        f"({len(names) - len(final_names)} repeats), {recreated} watcher re-creations, "
        f"{unreadable} unreadable samples, versions {versions[0]}..{versions[-1]}"
    )


def test_sensor_fails_loudly_while_the_store_is_down_and_resumes_from_its_watermark(
    pg_state: PgServer, tmp_path: Path
) -> None:
    task_id = f"s_{uuid.uuid4().hex[:8]}"
    ctx: dict[str, Any] = {"ti": SimpleNamespace(dag_id="fault", task_id=task_id, map_index=-1)}
    sensor = MultiDirectorySensor(
        task_id=task_id,
        directories=[str(tmp_path)],
        patterns="*.csv",
        settle_seconds=0.1,
        start_from="beginning",
        deferrable=True,
        poke_interval=0.1,
        timeout=600,
    )
    state = ProcessState("fault", task_id)
    try:
        (tmp_path / "first.csv").write_text("x")
        wait_settled()
        assert [i["name"] for i in sensor.execute(ctx)["items"]] == ["first.csv"]
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(ctx)
        (tmp_path / "second.csv").write_text("x")
        event = run_sync(first_event(deferred.value.trigger))  # the trigger never touches the state store
        assert [i["name"] for i in event["items"]] == ["second.csv"]

        pg_state.pg_ctl("stop", "-m", "fast")
        try:
            with pytest.raises(StateStoreUnavailable, match=f"conn_id='{CONN_ID}'"):
                sensor.execute_complete(ctx, event)  # the worker cannot commit: the task fails
            with pytest.raises(StateStoreUnavailable):
                sensor.execute(ctx)  # a retry while the store is still down fails too, reading nothing
        finally:
            pg_state.pg_ctl("start")

        entry = state.get(CURSOR_KEY)
        assert entry is not None and entry.version == 1, "a failed run moved the watermark"
        retried = sensor.execute(ctx)  # the task's retry, once the store is back
        assert [i["name"] for i in retried["items"]] == ["second.csv"], "re-fired from an empty state or lost"
        assert retried["commit"]["committed_version"] == 2
    finally:
        run_sync(aclose_backends())


def wait_settled() -> None:
    import time

    time.sleep(0.3)  # the sensor's settle_seconds: files younger than that are not reported yet


async def first_event(trigger: MultiDirectoryTrigger) -> dict[str, Any]:
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), 20)
    finally:
        with contextlib.suppress(Exception):
            await gen.aclose()
    return dict(event.payload)
