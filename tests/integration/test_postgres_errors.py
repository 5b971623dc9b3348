"""Postgres watch failures on a real server: each error class, injection attempts, connection loss."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.sources.postgres import PostgresSource, PostgresWatchConfig
from airflow_trigger_kit.triggers.postgres import APPLICATION_NAME, PostgresRowsTrigger
from tests.conftest import PgDatabase
from tests.integration.test_postgres_support import ORDERS_DDL, execute, fetchval, source, trigger, use_connection
from tests.services import PG_INSTALL_HINT, PgServer, find_pg_bindir, free_port, throwaway_postgres

pytestmark = pytest.mark.integration


async def sensor_event(t: PostgresRowsTrigger, timeout: float = 30) -> dict[str, Any]:
    gen = t.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), timeout)
    finally:
        await gen.aclose()
    payload: dict[str, Any] = event.payload
    return payload


@pytest.fixture
async def orders(pg_db: PgDatabase) -> PgDatabase:
    await execute(pg_db.dsn, ORDERS_DDL, "INSERT INTO orders (customer, amount) VALUES ('a', 1), ('b', 2), ('c', 3)")
    return pg_db


async def assert_orders_intact(db: PgDatabase) -> None:
    assert await fetchval(db.dsn, "SELECT count(*) FROM public.orders") == 3


async def permanent(src: PostgresSource, match: str) -> str:
    try:
        with pytest.raises(PermanentSourceError, match=match) as caught:
            await src.poll(None, 10)
    finally:
        await src.aclose()
    return str(caught.value)


# -- configuration the server refutes -------------------------------------------------------------------
async def test_unknown_table_is_named_with_a_hint_for_case(orders: PgDatabase) -> None:
    await execute(orders.dsn, 'CREATE TABLE public."Invoices" (id int PRIMARY KEY)')
    await permanent(source(orders.dsn, table="public.ordrs", watermark_columns="id"), r"table: public\.ordrs does not")
    message = await permanent(
        source(orders.dsn, table="public.invoices", watermark_columns="id"), "table: public.invoices does not exist"
    )
    assert "('public', 'Invoices')" in message and "fold to lower case" in message
    found = source(orders.dsn, table='public."Invoices"', watermark_columns="id")
    try:
        assert (await found.poll(None, 10)).items == []
    finally:
        await found.aclose()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            {"columns": ["id", "totl"], "watermark_columns": ["id"]},
            r"columns: unknown column\(s\) \['totl'\] in table public\.orders",
        ),
        ({"watermark_columns": ["updated"]}, r"watermark_columns: unknown column\(s\) \['updated'\]"),
        ({"watermark_columns": ["updated_at"], "key_columns": ["ID"]}, r"key_columns: unknown column\(s\) \['ID'\]"),
        ({"xid_column": "id"}, "xid_column: 'id' of public.orders has type bigint; it must be xid8"),
        ({"watermark_columns": ["customer"]}, "first order column 'customer' of public.orders has type text"),
        ({"watermark_columns": ["id"], "lookback": 2.5}, "lookback: 2.5 must be a whole number"),
        ({"watermark_columns": ["id"], "filter": "amount > 'x'"}, "filter: the server rejected it"),
        ({"watermark_columns": ["id"], "filter": "amount"}, "filter: the server rejected it.*must be type boolean"),
        ({"watermark_columns": ["id"], "filter": "nosuch = 1"}, 'filter: .*column "nosuch" does not exist'),
    ],
)
async def test_unknown_columns_types_and_bad_filters_are_named(
    orders: PgDatabase, config: dict[str, Any], match: str
) -> None:
    await permanent(source(orders.dsn, table="orders", **config), match)


async def test_a_table_without_primary_key_needs_key_columns(pg_db: PgDatabase) -> None:
    await execute(
        pg_db.dsn, "CREATE TABLE log (at timestamptz NOT NULL, line text)", "INSERT INTO log VALUES (now(), 'x')"
    )
    await permanent(source(pg_db.dsn, table="log", watermark_columns=["at"]), "pass key_columns")
    src = source(pg_db.dsn, table="log", watermark_columns=["at"], key_columns=["line"])
    try:
        assert len((await src.poll(None, 10)).items) == 1
    finally:
        await src.aclose()


# -- privileges and credentials ---------------------------------------------------------------------------
def role_dsn(db: PgDatabase, role: str, password: str | None = None) -> str:
    server = db.server
    auth = role if password is None else f"{role}:{password}"
    return f"postgresql://{auth}@{server.host}:{server.port}/{db.name}"


async def test_missing_privileges_fail_the_trigger_naming_role_and_table(
    orders: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = f"noread_{orders.name}"
    await execute(
        orders.dsn,
        f"CREATE ROLE {role} LOGIN",
        "CREATE SCHEMA private",
        "CREATE TABLE private.t (id int PRIMARY KEY)",
        f"GRANT SELECT (id, customer) ON public.orders TO {role}",
    )
    try:
        conn_id = use_connection(monkeypatch, "pg_noread", role_dsn(orders, role))
        event = await sensor_event(trigger(conn_id, mode="sensor", table="orders", watermark_columns=["id"]))
        assert event["status"] == "error"
        assert f"role '{role}' may not read column(s) ['amount', 'status', 'updated_at', 'xmin8']" in event["message"]
        assert f'GRANT SELECT ON public.orders TO "{role}"' in event["message"]
        event = await sensor_event(trigger(conn_id, mode="sensor", table="private.t", watermark_columns=["id"]))
        assert f"role '{role}' has no USAGE privilege on schema 'private'" in event["message"]
    finally:
        await execute(orders.dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_role_with_column_privileges_reads_just_those_columns(orders: PgDatabase) -> None:
    role = f"narrow_{orders.name}"
    await execute(orders.dsn, f"CREATE ROLE {role} LOGIN", f"GRANT SELECT (id, customer) ON public.orders TO {role}")
    try:
        src = source(role_dsn(orders, role), table="orders", columns=["customer"], watermark_columns=["id"])
        try:
            items = (await src.poll(None, 10)).items
        finally:
            await src.aclose()
        assert [i.data["row"] for i in items] == [{"customer": "a"}, {"customer": "b"}, {"customer": "c"}]
    finally:
        await execute(orders.dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def password_server() -> Iterator[PgServer]:
    """A private cluster that checks passwords (the session's cluster trusts every login)."""
    if find_pg_bindir() is None:
        pytest.fail(f"a cluster with password authentication is needed: {PG_INSTALL_HINT}", pytrace=False)
    with throwaway_postgres() as server:

        async def admin(sql: str) -> Any:
            conn = await asyncpg.connect(server.dsn())
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        hba = asyncio.run(admin("SHOW hba_file"))
        with open(hba, "w") as f:
            f.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\n")
            f.write("host all all 127.0.0.1/32 scram-sha-256\n")
        asyncio.run(admin("SELECT pg_reload_conf()"))
        asyncio.run(admin("CREATE ROLE watcher LOGIN PASSWORD 'right-password'"))
        yield server


async def test_bad_credentials_fail_the_trigger_naming_user_and_connection(
    password_server: PgServer, pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"{password_server.host}:{password_server.port}/postgres"
    good = use_connection(monkeypatch, "pg_good_pw", f"postgresql://watcher:right-password@{base}")
    assert await fetchval(f"postgresql://watcher:right-password@{base}", "SELECT current_user") == "watcher"
    bad = use_connection(monkeypatch, "pg_bad_pw", f"postgresql://watcher:wrong-password@{base}")
    event = await sensor_event(trigger(bad, mode="sensor", table="pg_catalog.pg_class", watermark_columns=["oid"]))
    assert event["status"] == "error"
    message = event["message"]
    assert "InvalidPasswordError" in message and 'password authentication failed for user "watcher"' in message
    assert "postgres_conn_id='pg_bad_pw'" in message and "watcher@127.0.0.1" in message
    assert "wrong-password" not in message and "check the login and password" in message
    assert good  # the same connection with the right password logs in (asserted above)

    nobody = use_connection(monkeypatch, "pg_nobody", role_dsn(pg_db, "nobody_here"))
    event = await sensor_event(trigger(nobody, mode="sensor", table="t", watermark_columns=["id"]))
    assert 'role "nobody_here" does not exist' in event["message"]

    server = pg_db.server
    nodb = use_connection(
        monkeypatch, "pg_nodb", f"postgresql://{server.user}@{server.host}:{server.port}/no_such_database"
    )
    event = await sensor_event(trigger(nodb, mode="sensor", table="t", watermark_columns=["id"]))
    assert 'database "no_such_database" does not exist' in event["message"]

    event = await sensor_event(trigger("pg_never_defined", mode="sensor", table="t", watermark_columns=["id"]))
    assert "postgres_conn_id='pg_never_defined': no such Airflow connection" in event["message"]


# -- transient failures ------------------------------------------------------------------------------------
async def test_an_unreachable_server_is_transient() -> None:
    src = PostgresSource(
        PostgresWatchConfig.create(table="t", watermark_columns="id"),
        {"host": "127.0.0.1", "port": free_port(), "user": "postgres", "timeout": 2},
        label="postgres_conn_id='down'",
    )
    try:
        with pytest.raises(TransientSourceError, match="postgres_conn_id='down'"):
            await src.poll(None, 10)
    finally:
        await src.aclose()


async def test_terminated_backends_are_retried_with_backoff_and_the_watch_recovers(
    orders: PgDatabase,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """pg_terminate_backend in the middle of a poll: a transient error, backoff, a new connection."""
    conn_id = use_connection(monkeypatch, "pg_flaky", orders.dsn)
    # The filter makes every poll statement run for a while, so the kill lands mid-statement.
    config: dict[str, Any] = {
        "table": "orders",
        "watermark_columns": ["updated_at", "id"],
        "filter": "pg_sleep(0.1) IS NOT NULL",
    }
    baseline_source = trigger(conn_id, mode="sensor", **config).build_source()
    try:
        baseline = await baseline_source.baseline()
    finally:
        await baseline_source.aclose()
    sensor = trigger(conn_id, mode="sensor", cursor=baseline, cursor_version=1, **config)
    waiting = asyncio.ensure_future(sensor_event(sensor))
    admin = await asyncpg.connect(orders.dsn)
    busy_backend = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 "
        "AND state = 'active'"
    )
    killed: list[int] = []
    try:
        while len(killed) < 2:
            pid = await admin.fetchval(busy_backend, APPLICATION_NAME)
            if pid and pid not in killed and await admin.fetchval("SELECT pg_terminate_backend($1)", pid):
                killed.append(pid)
            assert not waiting.done(), waiting.result() if waiting.done() else None
            await asyncio.sleep(0.02)
        await admin.execute("INSERT INTO orders (customer, amount) VALUES ('after the outage', 9)")
        event = await asyncio.wait_for(waiting, 30)
    finally:
        if not waiting.done():
            waiting.cancel()
        await admin.close()
    assert [i["row"]["customer"] for i in event["items"]] == ["after the outage"]
    logged = caplog.text + capsys.readouterr().out
    assert "transient error, retrying with backoff" in logged and "postgres_conn_id='pg_flaky'" in logged
    assert "recovered after" in logged


async def test_a_server_restart_is_retried_and_the_watch_resumes(
    password_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_ctl restart while the trigger waits: refused connections are transient, then it reconnects."""
    dsn = password_server.dsn()
    conn_id = use_connection(monkeypatch, "pg_restarting", dsn)
    await execute(dsn, ORDERS_DDL.replace("public.orders", "public.restart_orders").replace("orders_", "restart_"))
    config: dict[str, Any] = {"table": "restart_orders", "watermark_columns": ["updated_at", "id"]}
    baseline_source = trigger(conn_id, mode="sensor", **config).build_source()
    try:
        baseline = await baseline_source.baseline()
    finally:
        await baseline_source.aclose()
    waiting = asyncio.ensure_future(
        sensor_event(trigger(conn_id, mode="sensor", cursor=baseline, cursor_version=1, **config))
    )
    try:
        await asyncio.sleep(0.5)
        data_dir = await fetchval(dsn, "SHOW data_directory")
        bindir = find_pg_bindir()
        log_file = os.path.join(data_dir, "server.log")
        command = [f"{bindir}/pg_ctl", "-D", data_dir, "-l", log_file, "-m", "fast", "-w", "restart"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        restarted = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        assert restarted.returncode == 0, restarted.stderr
        assert not waiting.done()
        await execute(dsn, "INSERT INTO restart_orders (customer, amount) VALUES ('after the restart', 1)")
        event = await asyncio.wait_for(waiting, 30)
    finally:
        if not waiting.done():
            waiting.cancel()
    assert [i["row"]["customer"] for i in event["items"]] == ["after the restart"]


# -- injection attempts ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table": "orders; DROP TABLE orders", "watermark_columns": "id"}, "not a plain SQL identifier"),
        ({"table": "orders --", "watermark_columns": "id"}, "not a plain SQL identifier"),
        ({"table": "orders", "watermark_columns": "id", "filter": "true; DROP TABLE orders"}, "found ';'"),
        ({"table": "orders", "watermark_columns": "id", "filter": "true) OR (1=1"}, "did not open"),
        (
            {"table": "orders", "watermark_columns": "id", "filter": "true) UNION SELECT usename FROM pg_user --"},
            "did not open",
        ),
        ({"detection": "query_change", "query": "SELECT 1; DROP TABLE orders"}, "found ';'"),
        ({"detection": "query_change", "query": "DROP TABLE orders"}, "must be a SELECT"),
    ],
)
def test_injection_attempts_are_rejected_when_the_dag_is_parsed(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PostgresRowsTrigger(namespace="n", name="w", **kwargs)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"table": ("public", 'orders"; DROP TABLE orders; --'), "watermark_columns": ["id"]}, "does not exist"),
        ({"table": "orders", "columns": ['id", (SELECT 1) AS "x'], "watermark_columns": ["id"]}, r"columns: unknown"),
        ({"table": "orders", "watermark_columns": ["id) OR (1=1"]}, r"watermark_columns: unknown column\(s\)"),
        (
            {"table": "orders", "watermark_columns": ["id"], "key_columns": ['id" DESC; DROP TABLE orders; --']},
            r"key_columns: unknown column",
        ),
        ({"table": "orders", "watermark_columns": ["id"], "filter": "nextval('orders_id_seq') > 0"}, "read-only"),
        (
            {
                "table": "orders",
                "watermark_columns": ["id"],
                "filter": "(WITH d AS (DELETE FROM orders RETURNING 1) SELECT count(*) FROM d) >= 0",
            },
            "filter: the server rejected it",
        ),
        (
            {
                "table": "orders",
                "watermark_columns": ["id"],
                "filter": "set_config('transaction_read_only', 'off', true) = 'off'",
            },
            "read-write",
        ),
    ],
)
async def test_injection_attempts_reach_the_server_only_as_quoted_names_or_read_only_sql(
    orders: PgDatabase, config: dict[str, Any], match: str
) -> None:
    await permanent(source(orders.dsn, **config), match)
    await assert_orders_intact(orders)


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("SELECT 1; DROP TABLE orders", "cannot insert multiple commands into a prepared statement"),
        ("DELETE FROM orders RETURNING id", "cannot execute DELETE in a read-only transaction"),
        ("SELECT id FROM orders WHERE id = $1", "placeholders"),
    ],
)
async def test_user_query_is_checked_by_the_server_too(orders: PgDatabase, query: str, match: str) -> None:
    """The lexer is the first line; a query slipped past it is still refused by the server."""
    unchecked = PostgresWatchConfig(detection="query_change", query=query)
    await permanent(PostgresSource(unchecked, {"dsn": orders.dsn}), match)
    await assert_orders_intact(orders)
