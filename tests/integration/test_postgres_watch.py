"""The Postgres watch on a real PostgreSQL server: every detection, late commits, batches and restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest
from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers.delivery import WatermarkProducer
from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import (
    ORDERS_DDL,
    drain,
    execute,
    ids,
    persisted,
    source,
    trigger,
    use_connection,
)

pytestmark = pytest.mark.integration

CLEAN = AdvanceOutcome(acked=1, failed=0)


async def test_watermark_reports_new_and_updated_rows_as_json_safe_payloads(pg_db: PgDatabase) -> None:
    await execute(
        pg_db.dsn,
        """CREATE TABLE public.events (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            day date, amount numeric(10, 2), ratio float8, tags text[], doc jsonb, raw json, blob bytea,
            span interval, note text)""",
        "INSERT INTO events (note) VALUES ('before the watch')",
    )
    src = source(pg_db.dsn, table="public.events", watermark_columns=["updated_at"])
    try:
        cursor = persisted(await src.baseline())
        await execute(
            pg_db.dsn,
            """INSERT INTO events (day, amount, ratio, tags, doc, raw, blob, span, note) VALUES
               ('2026-03-01', 12.50, 'NaN', ARRAY['a', 'b'], '{"k": [1, 2]}', '[true]', '\\x00ff',
                '1 minute 30 seconds', 'first'),
               (NULL, NULL, 0.25, NULL, NULL, NULL, NULL, NULL, 'second')""",
        )
        batch = await src.poll(cursor, 10)
        assert [i.data["row"]["note"] for i in batch.items] == ["first", "second"]  # type: ignore[index]
        first = batch.items[0].to_json()
        assert json.loads(json.dumps(first, allow_nan=False)) == first
        row = first["row"]
        assert row["day"] == "2026-03-01" and row["amount"] == "12.50" and row["ratio"] == "NaN"
        assert row["tags"] == ["a", "b"] and row["doc"] == {"k": [1, 2]} and row["raw"] == [True]
        assert row["blob"] == "AP8=" and row["span"] == 90.0 and isinstance(row["updated_at"], str)
        assert set(first) == {"kind", "table", "row", "key", "watermark", "dedup_id"}
        assert first["table"] == "public.events" and first["key"] == {"id": row["id"]}
        assert list(first["watermark"]) == ["updated_at", "id"], "the primary key makes the order total"

        again = await src.poll(cursor, 10)
        assert [i.dedup_id for i in again.items] == [i.dedup_id for i in batch.items], "same cursor, same ids"

        cursor = persisted(batch.cursor)
        await execute(
            pg_db.dsn, "UPDATE events SET note = 'first, edited', updated_at = clock_timestamp() WHERE note = 'first'"
        )
        updated = await src.poll(cursor, 10)
        assert [i.data["row"]["note"] for i in updated.items] == ["first, edited"]  # type: ignore[index]
        assert updated.items[0].data["key"] == first["key"]
        assert updated.items[0].dedup_id != first["dedup_id"], "an update is a new change"
    finally:
        await src.aclose()


async def test_only_selected_columns_and_filtered_rows_are_reported(pg_db: PgDatabase) -> None:
    await execute(
        pg_db.dsn,
        ORDERS_DDL,
        "INSERT INTO orders (customer, amount, status) VALUES ('acme', 10, 'new'), ('acme', 20, 'cancelled'), "
        "('globex', 30, 'new')",
    )
    src = source(
        pg_db.dsn,
        table="orders",
        columns=["id", "amount"],
        watermark_columns=["id"],
        filter="status <> 'cancelled' AND customer = ANY (ARRAY['acme', 'globex'])",
    )
    try:
        items, _, _ = await drain(src, None)
        assert [i.data["row"] for i in items] == [{"id": 1, "amount": "10.00"}, {"id": 3, "amount": "30.00"}]
    finally:
        await src.aclose()


async def test_row_count_fires_on_count_changes_only(pg_db: PgDatabase) -> None:
    await execute(pg_db.dsn, ORDERS_DDL, "INSERT INTO orders (customer, amount) VALUES ('a', 1), ('b', 2)")
    src = source(pg_db.dsn, detection="row_count", table="public.orders", filter="amount < 100")
    try:
        cursor = persisted(await src.baseline())
        assert cursor == {"v": 1, "d": "row_count", "count": 2}
        assert (await src.poll(cursor, 10)).items == []
        await execute(pg_db.dsn, "INSERT INTO orders (customer, amount) VALUES ('c', 3), ('big', 500)")
        batch = await src.poll(cursor, 10)
        assert [i.data for i in batch.items] == [
            {"kind": "row_count", "table": "public.orders", "count": 3, "previous_count": 2, "delta": 1}
        ]
        cursor = persisted(batch.cursor)
        # The documented blind spots: updates, and a delete plus an insert between two polls.
        await execute(
            pg_db.dsn,
            "UPDATE orders SET amount = 4 WHERE customer = 'c'",
            "DELETE FROM orders WHERE customer = 'a'",
            "INSERT INTO orders (customer, amount) VALUES ('d', 5)",
        )
        assert (await src.poll(cursor, 10)).items == []
    finally:
        await src.aclose()


async def test_query_change_fires_with_the_new_result_bounded_by_max_items(pg_db: PgDatabase) -> None:
    await execute(pg_db.dsn, ORDERS_DDL, "INSERT INTO orders (customer, amount) VALUES ('a', 1), ('b', 2), ('c', 3)")
    query = "SELECT customer, sum(amount) AS total FROM orders GROUP BY customer"
    src = source(pg_db.dsn, detection="query_change", query=query + ";")
    try:
        cursor = persisted(await src.baseline())
        assert (await src.poll(cursor, 2)).items == [], "unchanged result (in whatever row order)"
        await execute(pg_db.dsn, "UPDATE orders SET amount = 10 WHERE customer = 'b'")
        batch = await src.poll(cursor, 2)
        assert len(batch.items) == 1
        data = batch.items[0].data
        assert data["kind"] == "query_change" and data["row_count"] == 3 and data["truncated"] is True
        assert len(data["rows"]) == 2 and set(data["rows"][0]) == {"customer", "total"}  # type: ignore[arg-type, index]
        assert data["previous_fingerprint"] == cursor["fp"] and data["fingerprint"] == batch.cursor["fp"]
        assert (await src.poll(persisted(batch.cursor), 2)).items == []
        # Back to the first result: a change again, with the first result's fingerprint.
        await execute(pg_db.dsn, "UPDATE orders SET amount = 2 WHERE customer = 'b'")
        back = await src.poll(persisted(batch.cursor), 5)
        assert back.items[0].data["fingerprint"] == cursor["fp"] and back.items[0].data["truncated"] is False
    finally:
        await src.aclose()


async def test_an_open_transaction_holds_the_xid_cursor_and_lookback_catches_its_late_commit(pg_db: PgDatabase) -> None:
    """The late-commit problem, step by step: a row committed after a later row was read."""
    await execute(pg_db.dsn, ORDERS_DDL)
    exact = source(pg_db.dsn, table="orders", xid_column="xmin8")
    window = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"])
    naive = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"], lookback=0)
    slow = await asyncpg.connect(pg_db.dsn)
    try:
        cursors = [persisted(await s.baseline()) for s in (exact, window, naive)]
        tx = slow.transaction()
        await tx.start()
        await slow.execute("INSERT INTO orders (customer, amount) VALUES ('slow', 1)")  # now() = earlier
        await execute(pg_db.dsn, "INSERT INTO orders (customer, amount) VALUES ('fast', 2)")
        seen: list[list[str]] = []
        for i, s in enumerate((exact, window, naive)):
            batch = await s.poll(cursors[i], 10)
            cursors[i] = persisted(batch.cursor)
            seen.append([str(item.data["row"]["customer"]) for item in batch.items])  # type: ignore[index]
        assert seen == [[], ["fast"], ["fast"]], "the xid cursor waits for the open transaction"
        await tx.commit()
        seen = []
        for i, s in enumerate((exact, window, naive)):
            batch = await s.poll(cursors[i], 10)
            seen.append([str(item.data["row"]["customer"]) for item in batch.items])  # type: ignore[index]
            if s is window:
                assert batch.items[0].data["late"] is True
        assert seen == [["slow", "fast"], ["slow"], []], "lookback finds the late row; a plain cursor skips it"
    finally:
        await slow.close()
        for s in (exact, window, naive):
            await s.aclose()


async def test_100k_rows_in_batches_committed_through_process_state_and_a_restart_does_not_refire(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drive the watcher's producer the way Airflow's shared-stream manager does, commits included."""
    conn_id = use_connection(monkeypatch, "pg_100k", pg_db.dsn)
    started = time.monotonic()
    await execute(
        pg_db.dsn,
        ORDERS_DDL,
        "INSERT INTO orders (customer, amount, updated_at) SELECT 'c' || (i % 97), i % 1000, "
        "'2026-01-01'::timestamptz + i * interval '1 millisecond' FROM generate_series(1, 100000) AS i",
        "ANALYZE orders",
    )
    name = f"orders-100k-{pg_db.name}"
    watcher = trigger(
        conn_id,
        name=name,
        table="public.orders",
        watermark_columns=["updated_at", "id"],
        start_from="beginning",
        max_items=5000,
    )
    state = ProcessState("pg-tests", name)
    producer = WatermarkProducer(watcher, state)
    reported: list[int] = []
    events = 0
    largest_cursor = 0
    stream = producer.open_stream()
    async for raw_event, broker_payload in stream:
        events += 1
        assert len(raw_event["items"]) <= 5000
        reported.extend(int(i["key"]["id"]) for i in raw_event["items"])
        largest_cursor = max(largest_cursor, len(json.dumps(broker_payload.cursor)))
        await producer.advance([AdvanceItem(broker_payload, CLEAN)])
        if len(reported) >= 100_000:
            break
    await stream.aclose()
    elapsed = time.monotonic() - started
    print(f"\n100k rows: {events} events, largest cursor {largest_cursor} bytes, {elapsed:.1f}s")
    assert events == 20 and reported == list(range(1, 100_001))
    entry = await state.aget(CURSOR_KEY)
    assert entry is not None and entry.version == 20 and entry.value["pos"][1] == "100000"

    # The keyset statement is an index scan that stops after max_items + 1 rows.
    src = watcher.build_source()
    try:
        plan = "\n".join(await src.explain(entry.value, 5000))
    finally:
        await src.aclose()
    assert "Index" in plan and "orders_updated_at_id" in plan and "Seq Scan" not in plan, plan

    # A restart: a new producer from the serialized trigger resumes from the committed cursor.
    path, kwargs = watcher.serialize()
    assert path == "airflow_trigger_kit.triggers.postgres.PostgresRowsTrigger"
    restarted = WatermarkProducer(PostgresRowsTrigger(**kwargs), ProcessState("pg-tests", name))
    resumed = restarted.open_stream()
    first = asyncio.ensure_future(resumed.__anext__())
    try:
        await asyncio.sleep(1.5)
        assert not first.done(), "the restarted watcher must not re-fire committed rows"
        await execute(pg_db.dsn, "INSERT INTO orders (customer, amount) VALUES ('new', 1), ('new', 2)")
        raw_event, _ = await asyncio.wait_for(first, 15)
    finally:
        if not first.done():
            first.cancel()
        await resumed.aclose()
    assert [int(i["key"]["id"]) for i in raw_event["items"]] == [100_001, 100_002]


async def test_watcher_starting_now_reports_only_rows_after_its_baseline(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = use_connection(monkeypatch, "pg_now", pg_db.dsn)
    await execute(pg_db.dsn, ORDERS_DDL, "INSERT INTO orders (customer, amount) VALUES ('old', 1)")
    name = f"orders-now-{pg_db.name}"
    producer = WatermarkProducer(
        trigger(conn_id, name=name, table="orders", watermark_columns=["updated_at", "id"]),
        ProcessState("pg-tests", name),
    )
    stream = producer.open_stream()
    first = asyncio.ensure_future(stream.__anext__())
    try:
        await asyncio.sleep(0.5)
        await execute(pg_db.dsn, "INSERT INTO orders (customer, amount) VALUES ('new', 2)")
        raw_event, _ = await asyncio.wait_for(first, 15)
    finally:
        if not first.done():
            first.cancel()
        await stream.aclose()
    assert [i["row"]["customer"] for i in raw_event["items"]] == ["new"]
    assert raw_event["source"] == "postgres" and raw_event["watch"] == {"namespace": "pg-tests", "name": name}
    assert raw_event["cursor_range"]["to"]["window"]["rows"] >= 1


async def test_items_beyond_max_items_stay_after_the_cursor(pg_db: PgDatabase) -> None:
    """Rows sharing one watermark value are split across batches by the key, none skipped."""
    await execute(
        pg_db.dsn,
        ORDERS_DDL,
        "INSERT INTO orders (customer, amount, updated_at) SELECT 'x', i, '2026-01-01' FROM generate_series(1, 25) i",
    )
    for config in (
        {"watermark_columns": ["updated_at"]},
        {"watermark_columns": ["updated_at"], "lookback": 0},
        {"xid_column": "xmin8"},
    ):
        src = source(pg_db.dsn, table="orders", **config)
        try:
            items, _, batches = await drain(src, None, max_items=10)
        finally:
            await src.aclose()
        assert ids(items) == list(range(1, 26)), config
        assert [len(b.items) for b in batches] == [10, 10, 5] and [b.more for b in batches] == [True, True, False]


async def test_statement_timeout_applies_to_every_query(pg_db: PgDatabase) -> None:
    from airflow_trigger_kit.sources.base import TransientSourceError

    await execute(pg_db.dsn, ORDERS_DDL, "INSERT INTO orders (customer, amount) VALUES ('a', 1)")
    src = source(
        pg_db.dsn,
        table="orders",
        watermark_columns=["id"],
        filter="pg_sleep(0.5) IS NOT NULL",
        statement_timeout=0.2,
    )
    try:
        with pytest.raises(TransientSourceError, match="statement_timeout"):
            await src.poll(None, 10)
    finally:
        await src.aclose()


async def test_a_stored_cursor_for_other_columns_is_refused(pg_db: PgDatabase) -> None:
    await execute(pg_db.dsn, ORDERS_DDL)
    src = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"])
    try:
        cursor: dict[str, Any] = {"v": 1, "d": "watermark", "cols": ["id"], "pos": ["5"]}
        with pytest.raises(PermanentSourceError, match="watermark_columns changed"):
            await src.poll(cursor, 10)
        with pytest.raises(PermanentSourceError, match="detection changed"):
            await src.poll({"v": 1, "d": "row_count", "count": 3}, 10)
    finally:
        await src.aclose()


async def test_late_commits_deep_in_the_window_are_found_through_coarse_segments(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late rows older than the 1,024 exact row hashes: one is identified alone, two re-read their segment.

    Coarse segments are checked on a schedule (about 1, 2, 4 ... s after their rows were read), so
    the test moves the schedule's clock instead of waiting for it.
    """
    from airflow_trigger_kit.sources.postgres import watermark as watermark_module

    clock = [time.time()]
    monkeypatch.setattr(watermark_module, "wall_clock", lambda: clock[0])
    await execute(pg_db.dsn, ORDERS_DDL)
    src = source(pg_db.dsn, table="orders", watermark_columns=["updated_at"])
    slow_one, slow_two = await asyncpg.connect(pg_db.dsn), await asyncpg.connect(pg_db.dsn)
    try:
        cursor = persisted(await src.baseline())
        tx_one, tx_two = slow_one.transaction(), slow_two.transaction()
        await tx_one.start()
        await tx_two.start()
        await slow_one.execute("INSERT INTO orders (customer, amount) VALUES ('slow-1', 1)")
        await slow_two.execute("INSERT INTO orders (customer, amount) VALUES ('slow-2', 1), ('slow-2', 2)")
        await execute(
            pg_db.dsn, "INSERT INTO orders (customer, amount) SELECT 'fast', g FROM generate_series(1, 3000) g"
        )
        items, cursor, _ = await drain(src, cursor, max_items=500)
        assert sorted(ids(items)) == list(range(4, 3004))
        assert cursor["seg"][0].get("h") is None, "the oldest part of the window is coarse"

        await tx_one.commit()
        clock[0] += 2  # the coarse segments come due
        items, cursor, _ = await drain(src, cursor, max_items=20)
        assert [(i.data["row"]["customer"], i.data["late"]) for i in items] == [("slow-1", True)]

        await tx_two.commit()
        clock[0] += 4  # and due again
        items, cursor, batches = await drain(src, cursor, max_items=20)
        reported = Counter(ids(items))
        assert {2, 3} <= set(reported), "both late rows are reported"
        assert all(n == 1 for n in reported.values())
        assert len(batches) > 1 and all(len(b.items) <= 20 for b in batches), "a segment re-read is paginated"
        print(f"\ntwo late rows in one coarse segment: {len(items)} rows re-read, {len(items) - 2} repeats")
        assert (await src.poll(cursor, 20)).items == []
    finally:
        await slow_one.close()
        await slow_two.close()
        await src.aclose()
