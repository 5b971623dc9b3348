"""Faults: a watcher with a permanent error backs off across its re-creations, and recovers.

Each watcher runs the way Airflow's triggerer runs it: through the real ``SharedStreamManager``
(``tests/triggerer_harness.py``), re-created from its serialized kwargs whenever its stream fails.
Airflow re-creates it about a second later; :class:`Triggerer` here does it after
:data:`PAUSE` seconds (a faster triggerer), so without the backoff the attempts in a window would
number about ``window / PAUSE``. The tests count attempts, log lines and metric values against the
bound the backoff schedule sets, never time single delays, and check that the committed watermark
does not move while the watch fails and that what landed meanwhile is delivered after the fix.

The unreadable directory is a real ``chmod 000`` checked by the kernel: as root, the directory
hub's worker thread first drops root's permission bypass (``tests/privileges.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.base import BaseEventTrigger

from airflow_trigger_kit import telemetry
from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.hub.streaks import JITTER_FLOOR
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.state import ProcessState, StateEntry
from airflow_trigger_kit.status import STATUS_KEY
from airflow_trigger_kit.triggers import MultiDirectoryTrigger
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import ORDERS_DDL, execute, trigger, use_connection
from tests.privileges import can_read, drop_file_permission_bypass, restore_file_permission_bypass
from tests.statsd_receiver import StatsdReceiver
from tests.triggerer_harness import TriggererHarness, wait_until

pytestmark = pytest.mark.integration

NAMESPACE = "backoff-test"
PAUSE = 0.05
"""Seconds between a failed watcher and its re-creation (Airflow's triggerer: about 1)."""
BASE, CAP = 0.2, 2.0
"""``retry_base_seconds`` and ``retry_max_seconds`` of the failing watches."""
WINDOW = 4.5
"""Seconds the watches fail before the cause is fixed."""
BACKING_OFF = "backing off, next retry at"
RECOVERED = "recovered after"


def unique_name() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


class Triggerer:
    """One watcher, re-created from its serialized kwargs whenever its stream fails (as Airflow does);
    every event it yields is confirmed stored, as a healthy metadata database would."""

    def __init__(self, make: Callable[[], BaseEventTrigger]) -> None:
        classpath, self.kwargs = make().serialize()
        module, _, cls = classpath.rpartition(".")
        self.trigger_class: Any = getattr(importlib.import_module(module), cls)
        self.harness = TriggererHarness()
        self.created = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def failures(self) -> int:
        return len(self.harness.errors)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.created += 1
            task = self.harness.start(self.trigger_class(**self.kwargs), trigger_id=1)
            while not task.done() and not self._stop.is_set():
                self.harness.confirm_stored()
                await asyncio.sleep(0.02)
            if task.done() and not self._stop.is_set():
                await asyncio.sleep(PAUSE)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.harness.crash()


def most_attempts(elapsed: float, base: float = BASE, cap: float = CAP) -> int:
    """The most attempts the backoff allows in ``elapsed`` seconds from the first failure: attempt
    n+1 comes at least ``JITTER_FLOOR * min(cap, base * 2**(n-1))`` after attempt n."""
    attempts, spent = 1, 0.0
    while True:
        spent += JITTER_FLOOR * min(cap, base * 2 ** (attempts - 1))
        if spent > elapsed:
            return attempts
        attempts += 1


def lines(out: str, name: str, marker: str) -> list[str]:
    return [line for line in out.splitlines() if f"{NAMESPACE}/{name}" in line and marker in line]


async def status_of(state: ProcessState) -> dict[str, Any]:
    await telemetry.flush()
    entry = await state.aget(STATUS_KEY)
    return dict(entry.value) if entry is not None else {}


async def committed(state: ProcessState, version: int) -> bool:
    entry = await state.aget(CURSOR_KEY)
    return entry is not None and entry.version >= version


class CursorWatch:
    """Samples the committed cursor in the background: every distinct entry seen."""

    def __init__(self, state: ProcessState) -> None:
        self.state = state
        self.seen: list[StateEntry | None] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            entry = await self.state.aget(CURSOR_KEY)
            if not self.seen or entry != self.seen[-1]:
                self.seen.append(entry)
            await asyncio.sleep(0.05)

    async def stop(self) -> list[StateEntry | None]:
        self._stop.set()
        await self._task
        return self.seen


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdReceiver]:
    """Airflow's own StatsD client, pointed at a UDP socket on loopback for this test."""
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk.observability.metrics import stats_utils

    receiver = StatsdReceiver()
    for option, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(receiver.port),
        "STATSD_PREFIX": "airflow",
        "STATSD_INFLUXDB_ENABLED": "True",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{option}", value)
    saved = (stats._factory, stats._backend, stats._export_legacy_names)
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    try:
        yield receiver
    finally:
        stats._factory, stats._backend, stats._export_legacy_names = saved
        receiver.close()


def streak_gauges(receiver: StatsdReceiver, source: str, name: str) -> list[float]:
    tags = {"source": source, "namespace": NAMESPACE, "name": name}
    return [m.value for m in receiver.matching("airflow.trigger_kit.failure_streak", tags=tags)]


@dataclass
class FaultRun:
    """What :func:`break_then_fix` saw."""

    attempts: int
    """Failed attempts in the window."""
    elapsed: float
    """Seconds from the first failure to the end of the window."""
    failures: int
    """Failed attempts in all (the window, and until the fix took effect)."""
    failed_lines: list[str]
    """This package's log lines about failed attempts."""


async def break_then_fix(
    triggerer: Triggerer,
    state: ProcessState,
    capsys: pytest.CaptureFixture[str],
    *,
    land: Callable[[str], Awaitable[None]],
    break_source: Callable[[], Awaitable[None]],
    fix_source: Callable[[], Awaitable[None]],
    landed: Callable[[list[dict[str, Any]]], set[str]],
) -> FaultRun:
    """Run the watcher; deliver one item; break its source for :data:`WINDOW` seconds while another
    item lands; fix it. Checks what every permanent fault must show and returns the counts."""
    name = state.name
    try:
        triggerer.start()
        await wait_until(lambda: state.aget(CURSOR_KEY), what="the baseline")
        await land("before")
        await wait_until(lambda: committed(state, 2), what="the first item committed")
        good = await state.aget(CURSOR_KEY)

        await break_source()
        await land("while-broken")
        cursors = CursorWatch(state)
        await wait_until(lambda: triggerer.failures >= 1, what="the first failure")
        first_failure = time.monotonic()
        await asyncio.sleep(WINDOW)
        attempts = triggerer.failures
        failing = await status_of(state)
        assert attempts <= failing["backoff"]["failures"] <= triggerer.failures, (attempts, failing)
        elapsed = time.monotonic() - first_failure
        seen = await cursors.stop()
        out = capsys.readouterr().out

        await fix_source()
        await wait_until(
            lambda: "while-broken" in landed(triggerer.harness.items()),
            timeout=30,
            what="the item that landed while the source was broken",
        )
        await wait_until(lambda: committed(state, 3), what="the commit after recovery")
        recovered = await status_of(state)
    finally:
        await triggerer.stop()
    out += capsys.readouterr().out
    failures = triggerer.failures

    # Attempts follow the backoff schedule, not the re-creation pace.
    assert 3 <= attempts <= most_attempts(elapsed), (attempts, most_attempts(elapsed))
    assert attempts * 5 < elapsed / PAUSE
    # The watermark never moved while the source was broken; the status record said why.
    assert seen == [good], "the watermark moved while the watch was failing"
    assert failing["last_error"]["transient"] is False and "recovered_at" not in failing
    assert failing["backoff"]["next_retry_at"] > failing["backoff"]["since"]
    # Exactly one line per failed attempt, with the count and the next retry time; one recovery.
    failed_lines = lines(out, name, BACKING_OFF)
    assert len(failed_lines) == failures
    assert [f"failed ({n} in a row since" in line for n, line in enumerate(failed_lines, 1)] == [True] * failures
    assert len(lines(out, name, RECOVERED)) == 1
    assert "backoff" not in recovered and recovered["recovered_at"]
    # Nothing lost, nothing repeated: the item from before once, the one from the outage once.
    delivered = [key for item in triggerer.harness.items() for key in landed([item])]
    assert sorted(delivered) == ["before", "while-broken"], delivered
    return FaultRun(attempts, elapsed, failures, failed_lines)


async def gauges_back_to_zero(receiver: StatsdReceiver, source: str, name: str, failures: int) -> None:
    """The ``failure_streak`` gauge went 1, 2, ... ``failures``, then 0."""
    gauges = await wait_until(
        lambda: (g := streak_gauges(receiver, source, name)) and g[-1] == 0 and g, what="the gauge back to 0"
    )
    assert [g for g in gauges if g] == [float(n) for n in range(1, failures + 1)], gauges


# --------------------------------------------------------------------------------------------------
async def test_unreadable_directory_backs_off_across_recreations_then_recovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], statsd: StatsdReceiver
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    name = unique_name()
    hub = get_hub()
    triggerer = Triggerer(
        lambda: MultiDirectoryTrigger(
            directories=[str(uploads)],
            namespace=NAMESPACE,
            name=name,
            mode="watcher",
            settle_seconds=0.1,
            poll_interval=0.05,
            retry_base_seconds=BASE,
            retry_max_seconds=CAP,
        )
    )

    async def land(stem: str) -> None:
        (uploads / f"{stem}.csv").write_text("x")  # this thread keeps root's rights: it lands while unreadable

    async def break_source() -> None:
        uploads.chmod(0o000)
        assert not await hub.directories.run(lambda: can_read(str(uploads))), "the hub thread still reads it"

    async def fix_source() -> None:
        uploads.chmod(0o755)

    await hub.directories.run(drop_file_permission_bypass)
    try:
        run = await break_then_fix(
            triggerer,
            ProcessState(NAMESPACE, name),
            capsys,
            land=land,
            break_source=break_source,
            fix_source=fix_source,
            landed=lambda items: {i["name"].removesuffix(".csv") for i in items},
        )
    finally:
        await hub.directories.run(restore_file_permission_bypass)
        uploads.chmod(0o755)

    assert all("permission denied" in line and str(uploads) in line for line in run.failed_lines)
    streak = hub.failure_streaks.get((NAMESPACE, name))
    assert streak is not None and not streak.active, "the streak ends, and stays on probation"
    await gauges_back_to_zero(statsd, "directory", name, run.failures)
    print(
        f"\nunreadable directory: {run.attempts} attempts in {run.elapsed:.1f}s (the backoff allows at most "
        f"{most_attempts(run.elapsed)}; re-creating every {PAUSE}s would make ~{run.elapsed / PAUSE:.0f}), "
        f"{triggerer.created} watcher objects, {run.failures} failures in all, then recovered"
    )


async def test_dropped_table_backs_off_and_a_recreated_table_is_delivered(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], statsd: StatsdReceiver
) -> None:
    conn_id = use_connection(monkeypatch, "pg_backoff", pg_db.dsn)
    await execute(pg_db.dsn, ORDERS_DDL)
    name = unique_name()
    triggerer = Triggerer(
        lambda: trigger(
            conn_id,
            namespace=NAMESPACE,
            name=name,
            mode="watcher",
            table="orders",
            watermark_columns=["updated_at", "id"],
            poll_interval=0.05,
            retry_base_seconds=BASE,
            retry_max_seconds=CAP,
        )
    )
    dropped = False

    async def land(customer: str) -> None:
        if not dropped:
            await execute(pg_db.dsn, f"INSERT INTO orders (customer, amount) VALUES ('{customer}', 1)")

    async def break_source() -> None:
        nonlocal dropped
        await execute(pg_db.dsn, "DROP TABLE orders")
        dropped = True

    async def fix_source() -> None:
        # The table comes back (a restore, a migration finished) with the row written meanwhile.
        await execute(pg_db.dsn, ORDERS_DDL, "INSERT INTO orders (customer, amount) VALUES ('while-broken', 2)")

    run = await break_then_fix(
        triggerer,
        ProcessState(NAMESPACE, name),
        capsys,
        land=land,
        break_source=break_source,
        fix_source=fix_source,
        landed=lambda items: {i["row"]["customer"] for i in items},
    )
    assert all("orders" in line and "does not exist" in line for line in run.failed_lines), run.failed_lines
    await gauges_back_to_zero(statsd, "postgres", name, run.failures)
    print(f"\ndropped table: {run.attempts} attempts in {run.elapsed:.1f}s (at most {most_attempts(run.elapsed)})")


async def test_a_restarted_triggerer_continues_the_recorded_backoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No streak in this process (a restart, an HA takeover): the status record's backoff is continued."""
    not_a_dir = tmp_path / "plain.txt"
    not_a_dir.write_text("x")
    name = unique_name()
    state = ProcessState(NAMESPACE, name)
    now = datetime.now(timezone.utc)
    retry_at = now + timedelta(seconds=1.5)
    await state.aset(
        STATUS_KEY,
        {
            "kind": "watcher",
            "last_error": {
                "message": "PermanentSourceError: not a directory",
                "at": now.isoformat(),
                "transient": False,
            },
            "backoff": {
                "failures": 3,
                "since": (now - timedelta(minutes=5)).isoformat(),
                "next_retry_at": retry_at.isoformat(),
            },
        },
        expected_version=0,
    )
    triggerer = Triggerer(
        lambda: MultiDirectoryTrigger(
            directories=[str(not_a_dir)],
            namespace=NAMESPACE,
            name=name,
            mode="watcher",
            start_from="beginning",
            retry_base_seconds=BASE,
            retry_max_seconds=CAP,
        )
    )
    try:
        triggerer.start()
        await wait_until(lambda: triggerer.failures >= 1, what="the first attempt of this process")
        first_attempt_done = datetime.now(timezone.utc)
        status = await status_of(state)
    finally:
        await triggerer.stop()
    out = capsys.readouterr().out
    assert first_attempt_done >= retry_at, "the recorded retry time was not waited for"
    assert len(lines(out, name, "continuing the backoff recorded by another process")) == 1
    assert "failed (4 in a row since" in out
    assert status["backoff"]["failures"] == triggerer.failures + 3
    assert await state.aget(CURSOR_KEY) is None, "a failing watch wrote a cursor"


async def test_a_recorded_retry_time_far_ahead_is_capped_by_retry_max_seconds(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plain.txt"
    not_a_dir.write_text("x")
    name = unique_name()
    state = ProcessState(NAMESPACE, name)
    now = datetime.now(timezone.utc)
    backoff = {"failures": 9, "since": now.isoformat(), "next_retry_at": (now + timedelta(hours=1)).isoformat()}
    await state.aset(STATUS_KEY, {"backoff": backoff}, expected_version=0)
    triggerer = Triggerer(
        lambda: MultiDirectoryTrigger(
            directories=[str(not_a_dir)],
            namespace=NAMESPACE,
            name=name,
            mode="watcher",
            start_from="beginning",
            retry_base_seconds=0.1,
            retry_max_seconds=0.5,
        )
    )
    try:
        triggerer.start()
        await wait_until(lambda: triggerer.failures >= 1, timeout=30, what="an attempt within the cap, not in an hour")
    finally:
        await triggerer.stop()
    assert (await status_of(state))["backoff"]["failures"] >= 10


async def test_a_sensor_with_a_permanent_error_still_fails_its_task_without_backing_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "plain.txt"
    not_a_dir.write_text("x")
    name = unique_name()
    sensor_trigger = MultiDirectoryTrigger(
        directories=[str(not_a_dir)], namespace=NAMESPACE, name=name, mode="sensor", cursor=None, cursor_version=0
    )
    gen = sensor_trigger.run()
    event = (await asyncio.wait_for(gen.__anext__(), 20)).payload
    await gen.aclose()
    assert event["status"] == "error" and "not a directory" in event["message"]
    assert get_hub().failure_streaks.get((NAMESPACE, name)) is None
    assert not lines(capsys.readouterr().out, name, BACKING_OFF)
