"""Postgres waits through the hub: one pool per connection, one query per distinct cursor.

A dedicated PostgreSQL server runs with ``max_connections=100`` (PostgreSQL's default): one
connection per wait, as before the hub, exhausts it at about 100 waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.triggers.postgres import APPLICATION_NAME, PostgresRowsTrigger
from devtools.services import PgServer, throwaway_postgres
from tests.integration.test_postgres_support import use_connection
from tests.services import find_pg_bindir
from tests.triggerer_harness import first_payload, wait_until

pytestmark = pytest.mark.integration

TABLES = 10
WAITS = 1_000


@pytest.fixture(scope="module")
def default_server() -> Iterator[PgServer]:
    if find_pg_bindir() is None:
        pytest.fail("PostgreSQL server binaries are needed: apt-get install postgresql", pytrace=False)
    with throwaway_postgres(max_connections=100) as server:
        yield server


@pytest.fixture
async def orders_dsn(default_server: PgServer) -> str:
    admin = await asyncpg.connect(default_server.dsn())
    try:
        await admin.execute("DROP DATABASE IF EXISTS hub_orders")
        await admin.execute("CREATE DATABASE hub_orders")
    finally:
        await admin.close()
    dsn = default_server.dsn("hub_orders")
    conn = await asyncpg.connect(dsn)
    try:
        for t in range(TABLES):
            await conn.execute(
                f"CREATE TABLE orders_{t} (id bigserial PRIMARY KEY, customer text, "
                f"updated_at timestamptz NOT NULL DEFAULT now()); "
                f"CREATE INDEX ON orders_{t} (updated_at, id); "
                f"INSERT INTO orders_{t} (customer) SELECT 'old-' || n FROM generate_series(1, 100) n"
            )
    finally:
        await conn.close()
    return dsn


async def our_connections(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME)
        )
    finally:
        await conn.close()


def waiting_trigger(conn_id: str, table: int, **kwargs: Any) -> PostgresRowsTrigger:
    return PostgresRowsTrigger(
        namespace="hub-tests",
        name=f"wait-{table}",
        table=f"orders_{table}",
        watermark_columns=["updated_at", "id"],
        postgres_conn_id=conn_id,
        mode="sensor",
        poll_interval=0.2,
        retry_base_seconds=0.1,
        retry_max_seconds=0.5,
        **kwargs,
    )


@pytest.mark.parametrize("pool_size", [None, 2])
async def test_a_thousand_waits_share_a_bounded_pool_and_one_query_per_cursor(
    orders_dsn: str, monkeypatch: pytest.MonkeyPatch, pool_size: int | None
) -> None:
    conn_id = use_connection(monkeypatch, "hub_orders", orders_dsn)
    if pool_size is not None:
        monkeypatch.setenv("AIRFLOW__TRIGGER_KIT__POSTGRES_POOL_SIZE", str(pool_size))
    limit = pool_size or 4
    cursors = []
    for t in range(TABLES):
        source = waiting_trigger(conn_id, t).build_source()
        try:
            cursors.append(await source.baseline())
        finally:
            await source.aclose()
    # 100 identical waits per table (as many sensors of one DAG would be), 1,000 in all.
    waits = [
        asyncio.ensure_future(
            first_payload(waiting_trigger(conn_id, n % TABLES, cursor=cursors[n % TABLES], cursor_version=1))
        )
        for n in range(WAITS)
    ]
    observed: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            observed.append(await our_connections(orders_dsn))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    hub = get_hub().channels
    try:
        await wait_until(lambda: hub.ticker.ticks >= 5, timeout=60, what="five ticks of 1,000 waits")
        polls = sum(channel.polls for channel in hub.channels.values())
        assert len(hub.channels) == TABLES, "one shared source per table, whatever the number of waits"
        assert TABLES <= polls <= TABLES * hub.ticker.ticks, f"{polls} polls in {hub.ticker.ticks} ticks"
        assert not any(w.done() for w in waits), [w.result() for w in waits if w.done()][:1]

        writer = await asyncpg.connect(orders_dsn)
        try:
            for t in range(TABLES):
                await writer.execute(f"INSERT INTO orders_{t} (customer) VALUES ('new-{t}')")
        finally:
            await writer.close()
        payloads = await asyncio.wait_for(asyncio.gather(*waits), 60)
    finally:
        stop.set()
        await sampler
        for w in waits:
            w.cancel()
    for n, payload in enumerate(payloads):
        assert [i["row"]["customer"] for i in payload["items"]] == [f"new-{n % TABLES}"], payload
    assert len({p["items"][0]["dedup_id"] for p in payloads}) == TABLES
    assert observed and max(observed) <= limit, f"connections seen: max {max(observed)} > pool size {limit}"
    assert max(observed) >= 1


def test_pools_close_when_the_event_loop_ends(orders_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The triggerer's loop ending (asyncio.run returning) closes every pool it opened."""
    conn_id = use_connection(monkeypatch, "hub_orders", orders_dsn)
    seen: dict[str, int] = {}

    async def watch_a_while() -> None:
        source = waiting_trigger(conn_id, 0).build_source()
        try:
            cursor = await source.baseline()
        finally:
            await source.aclose()
        waits = [
            asyncio.ensure_future(first_payload(waiting_trigger(conn_id, 0, cursor=cursor, cursor_version=1)))
            for _ in range(20)
        ]
        await wait_until(lambda: get_hub().channels.ticker.ticks >= 3, what="polls")
        seen["during"] = get_hub().postgres_pools.size_of(conn_id)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    thread = threading.Thread(target=asyncio.run, args=(watch_a_while(),))
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert 1 <= seen["during"] <= 4
    assert asyncio.run(our_connections(orders_dsn)) == 0, "a pool outlived its event loop"


async def test_memory_stays_flat_across_ten_thousand_subscribe_and_cancel_cycles() -> None:
    """Postgres and S3 waits subscribe to shared sources; cancelled before their first poll, they leave nothing."""
    import gc
    import tracemalloc

    hub = get_hub().channels

    async def cycles(count: int) -> None:
        for n in range(count):
            t = waiting_trigger("nowhere", n % 7, cursor={"v": 1}, cursor_version=1)
            task = asyncio.ensure_future(first_payload(t))
            for _ in range(3):
                await asyncio.sleep(0)  # subscribed, its waiter registered
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    await cycles(1_000)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await cycles(10_000)
        await asyncio.sleep(0.1)  # sources of released channels close in the background
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(hub.ticker) == 0 and hub.channels == {}
    assert after - before < 256 * 1024, f"memory grew by {after - before} bytes over 10,000 cycles"
