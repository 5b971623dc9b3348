"""The lookback window on a real PostgreSQL: what a poll checks (counts), late rows deep in the window,
the final check when a segment leaves it, backlogs taken in large batches, and queries that would write.

Time for the check schedule is the source's wall clock, replaced here by a clock the test moves, so
"not due yet" and "due" are deterministic; the database's own clock is untouched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.sources.postgres import (
    CHECK_ROWS_PER_POLL,
    MAX_EXACT_ROWS,
    PostgresSource,
    PostgresWatchConfig,
)
from airflow_trigger_kit.sources.postgres import watermark as watermark_module
from airflow_trigger_kit.sources.postgres.window import CHECK_ROWS_PER_SECOND
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers.delivery import WatermarkProducer
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import (
    ORDERS_DDL,
    drain,
    execute,
    fetchval,
    ids,
    persisted,
    source,
    trigger,
    use_connection,
)

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(watermark_module, "wall_clock", fake)
    return fake


async def insert_rows(dsn: str, count: int, customer: str = "fast") -> None:
    await execute(
        dsn, f"INSERT INTO orders (customer, amount) SELECT '{customer}', g FROM generate_series(1, {count}) AS g"
    )


async def test_an_empty_poll_checks_the_exact_rows_and_a_bounded_share_of_a_large_window(
    pg_db: PgDatabase, clock: Clock
) -> None:
    await execute(pg_db.dsn, ORDERS_DDL)
    src = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"])
    try:
        cursor = persisted(await src.baseline())
        for _ in range(4):
            await insert_rows(pg_db.dsn, 5000)
        items, cursor, _ = await drain(src, cursor, max_items=5000)
        assert len(items) == 20_000
        empty = await src.poll(cursor, 500)
        assert empty.items == [] and empty.stats["window_rows"] == 20_000
        assert empty.stats["window_checked_rows"] == MAX_EXACT_ROWS, "nothing else is due yet"
        cursor = persisted(empty.cursor)
        checked: list[int] = []
        for _ in range(12):  # a second between polls: coarse segments come due, within the budget
            clock.now += 1.0
            batch = await src.poll(cursor, 500)
            assert batch.items == []
            cursor = persisted(batch.cursor)
            coarse = int(batch.stats["window_checked_rows"]) - MAX_EXACT_ROWS
            largest = max(s["n"] for s in cursor["seg"])
            assert coarse <= max(CHECK_ROWS_PER_SECOND, CHECK_ROWS_PER_POLL, largest)
            checked.append(coarse)
        print(f"\nwindow of 20,000 rows: coarse rows checked per poll, a second apart: {checked}")
        assert sum(checked) >= 20_000 - MAX_EXACT_ROWS, "every coarse segment was checked again"
        assert all(s["c"] > 1_000_000.0 for s in cursor["seg"])
    finally:
        await src.aclose()


async def test_a_late_row_deep_in_the_window_is_found_when_its_segment_comes_due(
    pg_db: PgDatabase, clock: Clock
) -> None:
    await execute(
        pg_db.dsn,
        ORDERS_DDL,
        "INSERT INTO orders (customer, amount, updated_at) "
        "SELECT 'old', g, now() - interval '2 hours' + g * interval '10 minutes' FROM generate_series(1, 6) AS g",
    )
    src = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"])
    slow = await asyncpg.connect(pg_db.dsn)
    try:
        cursor = persisted(await src.baseline())
        assert cursor["lo"] is not None, "the window starts after older rows"
        tx = slow.transaction()
        await tx.start()
        await slow.execute("INSERT INTO orders (customer, amount) VALUES ('slow', 1)")  # now(): before the rest
        await insert_rows(pg_db.dsn, 3000)
        items, cursor, _ = await drain(src, cursor, max_items=500)
        assert len(items) == 3000 and "h" not in cursor["seg"][0], "the oldest part of the window is coarse"
        await tx.commit()
        assert (await src.poll(cursor, 100)).items == [], "its coarse segment is not due yet"
        clock.now += 1.5
        batch = await src.poll(cursor, 100)
        assert [(i.data["row"]["customer"], i.data.get("late")) for i in batch.items] == [("slow", True)]
        cursor = persisted(batch.cursor)
        clock.now += 10
        assert (await src.poll(cursor, 100)).items == [], "reported once"
    finally:
        await slow.close()
        await src.aclose()


async def test_a_segment_leaving_the_window_is_checked_in_the_poll_that_drops_it(
    pg_db: PgDatabase, clock: Clock
) -> None:
    """The final check the guarantee rests on: due or not, a segment is checked before it goes."""
    await execute(pg_db.dsn, ORDERS_DDL)
    src = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"], lookback=2)
    slow = await asyncpg.connect(pg_db.dsn)
    try:
        cursor = persisted(await src.baseline())
        tx = slow.transaction()
        await tx.start()
        await slow.execute("INSERT INTO orders (customer, amount) VALUES ('slow', 1)")
        await insert_rows(pg_db.dsn, 2000)
        items, cursor, _ = await drain(src, cursor, max_items=1000)
        assert len(items) == 2000
        await tx.commit()  # well within the 2 s lookback of its value
        await asyncio.sleep(2.2)
        await insert_rows(pg_db.dsn, 1, customer="later")  # moves the cursor 2 s on: old segments expire
        first = await src.poll(cursor, 100)
        assert [i.data["row"]["customer"] for i in first.items] == ["later"], "nothing due: the clock stands still"
        second = await src.poll(persisted(first.cursor), 100)
        reported = [(i.data["row"]["customer"], i.data.get("late")) for i in second.items]
        assert reported == [("slow", True)], "found by the final check of the segments that leave the window"
        assert second.stats["window_rows"] < 100, "and they left it"
    finally:
        await slow.close()
        await src.aclose()


async def test_a_backlog_is_delivered_in_large_events_within_backlog_max_items(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = use_connection(monkeypatch, "pg_backlog", pg_db.dsn)
    await execute(pg_db.dsn, ORDERS_DDL)
    await insert_rows(pg_db.dsn, 250)
    sizes = {}
    for bound in (None, 10, 120):
        kwargs: dict[str, Any] = {"backlog_max_items": bound} if bound else {}
        sensor_trigger = trigger(
            conn_id, table="orders", watermark_columns=["id"], mode="sensor", max_items=10, **kwargs
        )
        run = sensor_trigger.run()
        event = await anext(run)
        await run.aclose()
        sizes[bound] = (len(event.payload["items"]), event.payload["more"])
        assert ids_of(event.payload) == list(range(1, sizes[bound][0] + 1)), "in order, from the start"
    assert sizes == {None: (100, True), 10: (10, True), 120: (120, True)}, "default: 10 x max_items"


def ids_of(payload: dict[str, Any]) -> list[int]:
    return [int(i["key"]["id"]) for i in payload["items"]]


async def test_a_query_that_writes_at_run_time_is_refused_and_nothing_is_stored(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nextval() cannot be seen in the text: the read-only transaction refuses it, with the hint."""
    conn_id = use_connection(monkeypatch, "pg_writes", pg_db.dsn)
    await execute(
        pg_db.dsn, ORDERS_DDL, "CREATE SEQUENCE ticks", "INSERT INTO orders (customer, amount) VALUES ('a', 1)"
    )
    name = f"writes-{pg_db.name}"
    producer = WatermarkProducer(
        trigger(conn_id, name=name, detection="query_change", query="SELECT nextval('ticks') AS tick"),
        ProcessState("pg-tests", name),
    )
    stream = producer.open_stream()
    with pytest.raises(PermanentSourceError) as caught:
        await anext(stream)
    message = str(caught.value)
    assert message.startswith("query: ") and "ReadOnlySQLTransactionError" in message
    assert "filter and query must not write" in message and "READ ONLY transaction" in message
    assert await ProcessState("pg-tests", name).aget(CURSOR_KEY) is None, "no baseline was stored"

    # A data-modifying WITH that bypassed the parse-time check (a config built by hand) is refused
    # the same way when it runs, and the table is intact.
    config = PostgresWatchConfig(
        detection="query_change", query="WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d"
    )
    src = PostgresSource(config, {"dsn": pg_db.dsn}, label="test")
    try:
        with pytest.raises(PermanentSourceError, match=r"cannot execute .* in a read-only transaction.*must not write"):
            await src.baseline()
    finally:
        await src.aclose()
    assert await fetchval(pg_db.dsn, "SELECT count(*) FROM orders") == 1


async def test_the_late_commit_window_survives_a_cursor_from_before_scheduled_checks(pg_db: PgDatabase) -> None:
    """Cursors written by earlier releases (segments without check times) keep working."""
    await execute(pg_db.dsn, ORDERS_DDL)
    src = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"])
    try:
        cursor = persisted(await src.baseline())
        await insert_rows(pg_db.dsn, 1500)
        _, cursor, _ = await drain(src, cursor)
        old_style = {**cursor, "seg": [{k: v for k, v in s.items() if k not in ("b", "c")} for s in cursor["seg"]]}
        await execute(pg_db.dsn, "DELETE FROM orders WHERE id = 3")  # a change in the oldest, coarse part
        batch = await src.poll(old_style, 5000)
        assert all("c" in s for s in batch.cursor["seg"]), "every segment is checked at once, then scheduled"
        reread = ids(batch.items)
        assert reread and reread[0] == 1 and 3 not in reread, "the changed coarse segment is re-read"
        assert all(i.data["late"] for i in batch.items)
    finally:
        await src.aclose()
