"""Postgres change notifications (``notify_channel``) against a real PostgreSQL server.

Polling is made rare (``poll_interval`` and ``reconcile_interval`` of an hour) wherever a test
shows that a notification woke a watch: within the test's generous timeouts, only a notification
can explain a detection. Counts are asserted (polls per burst, listener connections), never times.
The trigger on the table is the SQL block of ``docs/postgres.md`` ("Change notifications"), run
as the page shows it.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.hub.channels import Channel
from airflow_trigger_kit.hub.postgres_pools import LISTEN_APPLICATION_NAME, PostgresListener
from airflow_trigger_kit.hub.scheduling import HINT_DELAY
from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger
from devtools.feeders import ORDERS_DDL, ORDERS_NOTIFY_SQL
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import use_connection
from tests.triggerer_harness import first_payload, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "trigger_kit_orders"
HOUR = 3600.0
WAIT = 30.0
"""Generous: a notification wakes a watch in milliseconds; an hour-long poll interval never fires here."""


def docs_notify_sql() -> str:
    """The first ``sql`` block of the "Change notifications" section of docs/postgres.md."""
    page = (ROOT / "docs" / "postgres.md").read_text()
    section = page.split("## Change notifications", 1)[1]
    match = re.search(r"^( *)```sql\n(.*?)^\1```", section, re.S | re.M)
    assert match, "docs/postgres.md: the Change notifications section lost its SQL block"
    return textwrap.dedent(match.group(2))


@pytest.fixture
async def orders(pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, str]]:
    """``public.orders`` (the e2e stack's table) in a fresh database; yields (conn id, dsn)."""
    conn = await asyncpg.connect(pg_db.dsn)
    try:
        await conn.execute(ORDERS_DDL)
    finally:
        await conn.close()
    yield use_connection(monkeypatch, "notify_orders", pg_db.dsn), pg_db.dsn


async def sql(dsn: str, statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await (conn.fetchval(statement, *args) if args else conn.execute(statement))
    finally:
        await conn.close()


async def insert(dsn: str, customer: str) -> None:
    await sql(dsn, "INSERT INTO public.orders (customer, amount) VALUES ($1, 1) RETURNING id", customer)


def watch(conn_id: str, cursor: Any, *, channel: str | None = CHANNEL, **kwargs: Any) -> PostgresRowsTrigger:
    kwargs.setdefault("poll_interval", HOUR)
    kwargs.setdefault("reconcile_interval", HOUR)
    return PostgresRowsTrigger(
        namespace="notify-tests",
        name=kwargs.pop("name", "orders"),
        table=kwargs.pop("table", "public.orders"),
        watermark_columns=["updated_at", "id"],
        postgres_conn_id=conn_id,
        notify_channel=channel,
        mode="sensor",
        cursor=cursor,
        cursor_version=1,
        retry_base_seconds=0.1,
        retry_max_seconds=0.5,
        **kwargs,
    )


async def baseline(conn_id: str, table: str = "public.orders") -> Any:
    source = watch(conn_id, None, table=table).build_source()
    try:
        return await source.baseline()
    finally:
        await source.aclose()


def customers(payload: dict[str, Any]) -> list[str]:
    assert "items" in payload, payload
    return [item["row"]["customer"] for item in payload["items"]]


def listener_of(conn_id: str) -> PostgresListener:
    return get_hub().postgres_pools.listeners[conn_id]


def the_channel() -> Channel:
    (channel,) = get_hub().channels.channels.values()
    return channel


async def settled(conn_id: str, channels: int = 1) -> PostgresListener:
    """The listener is live and every waiter made its first polls (after the connect's hint)."""
    await wait_until(lambda: conn_id in get_hub().postgres_pools.listeners, what="a listener")
    listener = listener_of(conn_id)
    await wait_until(lambda: listener.live and len(listener.listening) == channels, timeout=WAIT, what="LISTEN")
    hub = get_hub().channels
    # Hints already received are flushed HINT_DELAY after the first: let that timer fire first.
    await asyncio.sleep(HINT_DELAY * 5)
    await wait_until(
        lambda: all(not w.busy and w.due > asyncio.get_running_loop().time() + 1 for w in hub.ticker.waiters()),
        timeout=WAIT,
        what="waiters polled, none due soon",
    )
    return listener


async def listening_connections(dsn: str) -> int:
    return int(
        await sql(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            LISTEN_APPLICATION_NAME,
        )
    )


async def test_a_notification_from_the_docs_trigger_wakes_the_watch(orders: tuple[str, str]) -> None:
    conn_id, dsn = orders
    await sql(dsn, docs_notify_sql())
    task = asyncio.ensure_future(first_payload(watch(conn_id, await baseline(conn_id))))
    try:
        listener = await settled(conn_id)
        polls = the_channel().polls
        assert the_channel().listener is listener and all(
            w.listener is listener for w in get_hub().channels.ticker.waiters()
        )
        await insert(dsn, "woken")
        payload = await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
    assert customers(payload) == ["woken"]
    assert listener.hints >= 1 and listener.connects == 1 and listener.failures == 0
    assert polls >= 1


@pytest.mark.parametrize("notifier", ["no trigger", "another channel"])
async def test_lost_notifications_lose_nothing_the_reconcile_poll_finds_the_rows(
    orders: tuple[str, str], notifier: str
) -> None:
    conn_id, dsn = orders
    if notifier == "another channel":
        await sql(dsn, docs_notify_sql().replace(f"'{CHANNEL}'", "'somebody_else'"))
    trigger = watch(conn_id, await baseline(conn_id), reconcile_interval=0.5)
    task = asyncio.ensure_future(first_payload(trigger))
    try:
        await wait_until(lambda: conn_id in get_hub().postgres_pools.listeners, what="a listener")
        listener = listener_of(conn_id)
        await wait_until(lambda: listener.live, timeout=WAIT, what="LISTEN")
        hints = listener.hints
        await insert(dsn, "unannounced")
        payload = await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
    assert customers(payload) == ["unannounced"]
    assert listener.hints == hints, "no notification reached the watch: the reconcile poll found the row"
    assert listener.live


async def test_a_burst_of_ten_thousand_notifications_costs_a_few_polls(orders: tuple[str, str]) -> None:
    conn_id, dsn = orders
    task = asyncio.ensure_future(first_payload(watch(conn_id, await baseline(conn_id))))
    try:
        listener = await settled(conn_id)
        channel = the_channel()
        hints, polls = listener.hints, channel.polls
        # One transaction: 10,000 distinct notifications, delivered together at COMMIT.
        await sql(dsn, f"SELECT count(pg_notify('{CHANNEL}', i::text)) FROM generate_series(1, 10000) i")
        await wait_until(lambda: listener.hints >= hints + 10_000, timeout=WAIT, what="10,000 notifications")
        await settled(conn_id)
        burst_polls = channel.polls - polls
        # 10,000 transactions of one notification each (a DO block commits in its loop).
        hints, polls = listener.hints, channel.polls
        await sql(
            dsn,
            f"DO $$ BEGIN FOR i IN 1..10000 LOOP PERFORM pg_notify('{CHANNEL}', i::text); COMMIT; END LOOP; END $$",
        )
        await wait_until(lambda: listener.hints >= hints + 10_000, timeout=WAIT, what="10,000 committed notifications")
        await settled(conn_id)
        commit_polls = channel.polls - polls
        assert not task.done()
    finally:
        task.cancel()
    print(f"polls for 10,000 notifications: {burst_polls} (one commit), {commit_polls} (10,000 commits)")
    assert 1 <= burst_polls <= 5, f"{burst_polls} polls for one burst of 10,000 notifications"
    assert 1 <= commit_polls <= 1_000, f"{commit_polls} polls for 10,000 single-notification commits"


async def test_ten_thousand_single_row_commits_coalesce_into_few_polls(orders: tuple[str, str]) -> None:
    """Each commit notifies; the watch's filter matches none of them, so every hint costs a poll, no event."""
    conn_id, dsn = orders
    await sql(dsn, docs_notify_sql())
    trigger = watch(conn_id, await baseline(conn_id), filter="customer = 'the one'")
    task = asyncio.ensure_future(first_payload(trigger))
    try:
        listener = await settled(conn_id)
        hints, polls = listener.hints, the_channel().polls
        await sql(
            dsn,
            "DO $$ BEGIN FOR i IN 1..10000 LOOP "
            "INSERT INTO public.orders (customer, amount) VALUES ('row-' || i, 1); COMMIT; END LOOP; END $$",
        )
        await wait_until(lambda: listener.hints >= hints + 10_000, timeout=WAIT, what="10,000 notified commits")
        await settled(conn_id)
        commit_polls = the_channel().polls - polls
        assert not task.done()
        await insert(dsn, "the one")
        payload = await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
    print(f"polls for 10,000 single-row commits: {commit_polls}")
    assert customers(payload) == ["the one"]
    assert 1 <= commit_polls <= 1_000, f"{commit_polls} polls for 10,000 notified commits"


async def test_a_killed_listening_connection_reconnects_and_notifications_wake_again(
    orders: tuple[str, str],
) -> None:
    conn_id, dsn = orders
    await sql(dsn, docs_notify_sql())
    task = asyncio.ensure_future(first_payload(watch(conn_id, await baseline(conn_id))))
    try:
        listener = await settled(conn_id)
        killed = await sql(
            dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTEN_APPLICATION_NAME,
        )
        assert killed == 1
        await wait_until(lambda: listener.failures >= 1, timeout=WAIT, what="the listener noticing the kill")
        await wait_until(lambda: listener.connects == 2 and listener.live, timeout=WAIT, what="a reconnect")
        await settled(conn_id)
        assert not task.done()
        await insert(dsn, "after the kill")
        payload = await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()
    assert customers(payload) == ["after the kill"]
    assert listener.connects == 2 and listener.failures == 1
    assert await listening_connections(dsn) <= 1


async def test_one_listening_connection_per_pool_whatever_the_number_of_waits(
    orders: tuple[str, str],
) -> None:
    conn_id, dsn = orders
    tables = 5
    notify = docs_notify_sql()
    for t in range(tables):
        await sql(dsn, f"CREATE TABLE public.orders_{t} (LIKE public.orders INCLUDING ALL)")
        await sql(
            dsn,
            notify.replace("public.orders", f"public.orders_{t}")
            .replace("orders_trigger_kit_notify", f"orders_{t}_trigger_kit_notify")
            .replace(f"'{CHANNEL}'", f"'{CHANNEL}_{t}'"),
        )
    cursors = [await baseline(conn_id, f"public.orders_{t}") for t in range(tables)]
    waits = [
        asyncio.ensure_future(
            first_payload(
                watch(
                    conn_id, cursors[n % tables], channel=f"{CHANNEL}_{n % tables}", table=f"public.orders_{n % tables}"
                )
            )
        )
        for n in range(100)
    ]
    try:
        listener = await settled(conn_id, channels=tables)
        assert listener.listening == {f"{CHANNEL}_{t}" for t in range(tables)}
        assert await listening_connections(dsn) == 1, "one listening connection for 100 waits on 5 channels"
        assert get_hub().postgres_pools.listener_connections(conn_id) == 1
        # Waits of one channel end: that channel is UNLISTENed, the others stay.
        await sql(dsn, "INSERT INTO public.orders_0 (customer, amount) VALUES ('first', 1)")
        done = await asyncio.wait_for(asyncio.gather(*waits[0::tables]), WAIT)
        assert all(customers(p) == ["first"] for p in done)
        await wait_until(lambda: len(listener.listening) == tables - 1, timeout=WAIT, what="UNLISTEN")
        for t in range(1, tables):
            await sql(dsn, f"INSERT INTO public.orders_{t} (customer, amount) VALUES ('t{t}', 1)")
        rest = await asyncio.wait_for(asyncio.gather(*[w for n, w in enumerate(waits) if n % tables]), WAIT)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert sorted({customers(p)[0] for p in rest}) == [f"t{t}" for t in range(1, tables)]
    assert listener.connects == 1 and listener.failures == 0
    # The last subscription gone, the listener stops and closes its connection.
    await wait_until(lambda: conn_id not in get_hub().postgres_pools.listeners, what="the listener released")
    await wait_until(lambda: listener.connection is None, what="the listening connection closed")
    assert await wait_until(lambda: _none_left(dsn), timeout=WAIT, what="no listening connection left")


async def _none_left(dsn: str) -> bool:
    return await listening_connections(dsn) == 0


async def test_a_late_commit_is_found_by_the_poll_its_notification_wakes(orders: tuple[str, str]) -> None:
    """NOTIFY is sent at COMMIT: a row stamped before later rows, committed after them, is still reported."""
    conn_id, dsn = orders
    await sql(dsn, docs_notify_sql())
    cursor = await baseline(conn_id)
    late = await asyncpg.connect(dsn)
    try:
        await late.execute("BEGIN")
        await late.execute("INSERT INTO public.orders (customer, amount) VALUES ('late', 1)")  # now(): earlier
        first = asyncio.ensure_future(first_payload(watch(conn_id, cursor)))
        try:
            await settled(conn_id)
            await insert(dsn, "early")
            payload = await asyncio.wait_for(first, WAIT)
        finally:
            first.cancel()
        assert customers(payload) == ["early"]
        second = asyncio.ensure_future(first_payload(watch(conn_id, payload["commit"]["cursor"])))
        try:
            await settled(conn_id)
            await late.execute("COMMIT")
            late_payload = await asyncio.wait_for(second, WAIT)
        finally:
            second.cancel()
    finally:
        await late.close()
    assert customers(late_payload) == ["late"]
    assert late_payload["items"][0].get("late") is True


def test_the_e2e_feeder_creates_the_trigger_the_docs_show() -> None:
    assert ORDERS_NOTIFY_SQL.strip() == docs_notify_sql().strip()
