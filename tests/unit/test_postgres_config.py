"""Postgres watch: parameter validation, identifier parsing, SQL fragment checks, serialization."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from airflow.triggers.base import BaseEventTrigger

from airflow_trigger_kit.sources.postgres import (
    PostgresWatchConfig,
    check_sql_fragment,
    column_list,
    normalize_query,
    parse_table,
    quote_ident,
)
from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger

pytestmark = pytest.mark.unit


# -- identifiers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("public.orders", ("public", "orders")),
        ("orders", ("public", "orders")),
        ("Sales.Orders", ("sales", "orders")),
        ('sales."Order Lines"', ("sales", "Order Lines")),
        ('"My.Schema"."a""b"', ("My.Schema", 'a"b')),
        (("sales", "Orders; DROP TABLE x"), ("sales", "Orders; DROP TABLE x")),
        (["orders"], ("public", "orders")),
    ],
)
def test_parse_table_follows_sql_spelling(value: Any, expected: tuple[str, str]) -> None:
    assert parse_table(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("orders; DROP TABLE orders", "is not a plain SQL identifier"),
        ("public.orders --", "is not a plain SQL identifier"),
        ("orders WHERE true", "is not a plain SQL identifier"),
        ("(select 1)", "is not a plain SQL identifier"),
        ('public."orders', "unterminated double quote"),
        ("a.b.c", "expected 'schema.table' or 'table'"),
        ("public.", "ends with '.'"),
        ("", "table must name a table"),
        (("a", ""), "non-empty strings"),
        (42, "table must be"),
        ('"x"y', "expected '.' after a quoted name"),
    ],
)
def test_parse_table_rejects_anything_but_names(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_table(value)


def test_quote_ident_doubles_quotes_and_refuses_nul() -> None:
    assert quote_ident('a"; DROP TABLE t; --') == '"a""; DROP TABLE t; --"'
    assert quote_ident("Order Lines") == '"Order Lines"'
    with pytest.raises(ValueError, match="NUL"):
        quote_ident("a\x00b")


def test_column_list_takes_exact_names() -> None:
    assert column_list("columns", "UpdatedAt") == ["UpdatedAt"]
    assert column_list("columns", ["a", "b"]) == ["a", "b"]
    assert column_list("columns", None) is None
    with pytest.raises(ValueError, match=r"pass a list such as \['updated_at', 'id'\]"):
        column_list("watermark_columns", "updated_at,id")
    with pytest.raises(ValueError, match="lists a column twice"):
        column_list("columns", ["a", "a"])
    with pytest.raises(ValueError, match="at least one column"):
        column_list("columns", [])


# -- user SQL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "status = 'paid'",
        "note = 'a;b' AND x = 1",
        "note = 'it''s; fine'",
        "note = E'\\'; still a string'",
        "note = $$ ; $$ OR note = $tag$ ; ) $tag$",
        '"weird;col" = 1',
        "a = 1 -- a comment; with a semicolon\n",
        "a = 1 /* nested /* ; */ comment */",
        "amount > (SELECT avg(amount) FROM orders)",
        "a$b = 1",
    ],
)
def test_sql_fragment_accepts_one_expression(text: str) -> None:
    check_sql_fragment("filter", text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("true; DELETE FROM orders", "filter must be a single SQL expression: found ';' at position 4"),
        ("status = 'paid'; DROP TABLE orders; --", "found ';'"),
        ("true) UNION SELECT passwd FROM pg_shadow --", "closes a parenthesis that filter did not open"),
        ("(true", "1 unclosed '('"),
        ("a = 'unterminated", "unterminated string literal"),
        ('"unterminated', "unterminated quoted identifier"),
        ("a = 1 /* open", "unterminated /* comment"),
        ("a = $x$ open", "unterminated dollar-quoted string"),
        ("a = $1", "placeholders such as $1 are not supported"),
        ("   ", "must be a non-empty SQL string"),
        ("a\x00", "NUL"),
    ],
)
def test_sql_fragment_rejects_more_than_one_expression(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_sql_fragment("filter", text)


def test_query_is_normalized_and_must_be_a_select() -> None:
    assert normalize_query("  SELECT 1;  ") == "SELECT 1"
    assert (
        normalize_query("/* c */ WITH x AS (SELECT 1) SELECT * FROM x")
        == "/* c */ WITH x AS (SELECT 1) SELECT * FROM x"
    )
    with pytest.raises(ValueError, match="must be a SELECT"):
        normalize_query("DELETE FROM orders")
    with pytest.raises(ValueError, match="query must be a single SQL statement: found ';'"):
        normalize_query("SELECT 1; DELETE FROM orders")


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"detection": "cdc", "table": "t"}, "detection must be one of watermark, row_count, query_change; got 'cdc'"),
        ({"table": "t"}, "needs watermark_columns"),
        ({"watermark_columns": ["id"]}, "detection='watermark' needs table"),
        ({"table": "t", "watermark_columns": ["id"], "lookback": -1}, "lookback must be a number >= 0"),
        ({"table": "t", "watermark_columns": ["id"], "statement_timeout": 0}, "statement_timeout must be between"),
        ({"table": "t", "watermark_columns": ["id"], "statement_timeout": "5"}, "statement_timeout must be a number"),
        ({"table": "t", "xid_column": "x", "watermark_columns": ["id", "x"]}, "must be the first of watermark_columns"),
        ({"table": "t", "xid_column": "x", "lookback": 60}, "lookback=60 is not needed with xid_column"),
        ({"table": "t", "watermark_columns": ["id"], "query": "select 1"}, "query is for detection='query_change'"),
        ({"detection": "query_change"}, "needs query"),
        ({"detection": "query_change", "query": "select 1", "table": "t"}, "remove table"),
        ({"detection": "row_count", "table": "t", "watermark_columns": ["id"]}, "remove watermark_columns"),
        (
            {"table": "t", "watermark_columns": ["id"], "filter": "1; select 2"},
            "filter must be a single SQL expression",
        ),
        ({"table": "t; drop table t", "watermark_columns": ["id"]}, "not a plain SQL identifier"),
    ],
)
def test_invalid_parameters_are_named_with_their_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PostgresWatchConfig.create(**kwargs)


def test_xid_column_defaults_the_order_and_turns_lookback_off() -> None:
    config = PostgresWatchConfig.create(table="t", xid_column="xmin8")
    assert config.watermark_columns == ("xmin8",) and config.lookback == 0.0
    assert "lookback" not in config.to_kwargs()


def test_table_name_is_spelled_for_sql() -> None:
    assert PostgresWatchConfig.create(table="Sales.Orders", watermark_columns="id").table_name == "sales.orders"
    config = PostgresWatchConfig.create(table=("Sales", "Order Lines"), watermark_columns="id")
    assert config.table_name == '"Sales"."Order Lines"'


# -- trigger serialization --------------------------------------------------------------------------
TRIGGER_CASES: list[dict[str, Any]] = [
    {"namespace": "n", "name": "w", "table": "public.orders", "watermark_columns": ["updated_at", "id"]},
    {
        "namespace": "dags",
        "name": "orders",
        "table": 'sales."Order Lines"',
        "columns": ["id", "amount"],
        "watermark_columns": "updated_at",
        "key_columns": ["id"],
        "filter": "status = 'paid' AND note <> 'a;b'",
        "lookback": 120,
        "statement_timeout": 5,
        "postgres_conn_id": "orders_db",
        "start_from": "beginning",
        "poll_interval": 2,
        "max_items": 50,
        "backlog_max_items": 400,
        "retry_base_seconds": 0.5,
        "retry_max_seconds": 5,
    },
    {"namespace": "n", "name": "w", "table": ("s", "t"), "xid_column": "xmin8"},
    {"namespace": "n", "name": "w", "table": "t", "watermark_columns": ["id"], "lookback": 0},
    {"namespace": "n", "name": "w", "table": "t", "detection": "row_count", "filter": "x > 1"},
    {"namespace": "n", "name": "w", "detection": "query_change", "query": "SELECT max(id) FROM t;"},
    {
        "namespace": "n",
        "name": "w",
        "table": "t",
        "watermark_columns": ["id"],
        "mode": "sensor",
        "cursor": {"v": 1, "d": "watermark", "cols": ["id"], "pos": ["41"], "lo": ["3"], "seg": []},
        "cursor_version": 7,
    },
    {"namespace": "n", "name": "w", "table": "t", "watermark_columns": ["id"], "notify_channel": "orders_changed"},
]


@pytest.mark.parametrize("kwargs", TRIGGER_CASES)
def test_trigger_round_trip_is_exact_json_safe_and_secret_free(kwargs: dict[str, Any]) -> None:
    trigger = PostgresRowsTrigger(**kwargs)
    classpath, serialized = trigger.serialize()
    assert classpath == "airflow_trigger_kit.triggers.postgres.PostgresRowsTrigger"
    assert json.loads(json.dumps(serialized)) == serialized
    assert PostgresRowsTrigger(**serialized).serialize() == (classpath, serialized)
    assert serialized["postgres_conn_id"] == kwargs.get("postgres_conn_id", "postgres_default")
    assert not any("password" in str(k).lower() or k == "dsn" for k in serialized)


def test_trigger_rejects_a_blank_conn_id() -> None:
    with pytest.raises(ValueError, match="postgres_conn_id must be an Airflow connection id, got ''"):
        PostgresRowsTrigger(namespace="n", name="w", table="t", watermark_columns="id", postgres_conn_id="")


def test_watcher_shares_a_stream_keyed_by_identity() -> None:
    watcher = PostgresRowsTrigger(namespace="n", name="w", table="t", watermark_columns="id")
    assert watcher.shared_stream_key() == (
        "airflow_trigger_kit",
        "airflow_trigger_kit.triggers.postgres.PostgresRowsTrigger",
        "n",
        "w",
    )
    sensor = PostgresRowsTrigger(namespace="n", name="w", table="t", watermark_columns="id", mode="sensor")
    assert not isinstance(sensor, BaseEventTrigger)  # a deferral trigger: no shared stream


# -- query_change must only read (refused at DAG parse time where the text shows it) ------------------
@pytest.mark.parametrize(
    ("query", "found"),
    [
        (
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
            "a data-modifying DELETE in a WITH clause",
        ),
        ("with x as materialized (insert into t values (1) returning 1) select 1", "a data-modifying INSERT in a WITH"),
        (
            "WITH u AS NOT MATERIALIZED (UPDATE t SET a = 1 RETURNING a) SELECT * FROM u",
            "a data-modifying UPDATE in a WITH",
        ),
        ("WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE) SELECT 1", "a data-modifying MERGE"),
        ("WITH a AS (SELECT 1) DELETE FROM t", "a data-modifying DELETE statement after WITH"),
        ("SELECT * INTO TEMP copy_of_orders FROM orders", "SELECT ... INTO (it creates a table)"),
        ("SELECT id FROM orders FOR UPDATE", "a row lock"),
        ("SELECT id FROM orders ORDER BY id FOR NO KEY UPDATE SKIP LOCKED", "a row lock"),
        ("select id from orders for share", "a row lock"),
        ("select id from orders for key share of orders", "a row lock"),
    ],
)
def test_a_query_that_would_write_is_refused_at_parse_time(query: str, found: str) -> None:
    from airflow_trigger_kit.sensors.postgres import PostgresRowsSensor

    with pytest.raises(ValueError, match=r"query must not write: found " + re.escape(found)) as caught:
        PostgresWatchConfig.create(detection="query_change", query=query)
    assert query[:40] in str(caught.value), "the message quotes the query"
    assert "READ ONLY transaction" in str(caught.value)
    with pytest.raises(ValueError, match="query must not write"):
        PostgresRowsTrigger(namespace="n", name="w", detection="query_change", query=query)
    with pytest.raises(ValueError, match="query must not write"):
        PostgresRowsSensor(task_id="t", detection="query_change", query=query)


@pytest.mark.parametrize(
    "query",
    [
        "select 'delete', \"update\" from t where note = 'for update' -- into",
        "SELECT substring(note for 2), overlay(note placing 'x' from 1 for 1) FROM t",
        "WITH u AS (SELECT 1 AS n) SELECT * FROM u",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
        "select $a$ into $a$ /* for update */ from t",
        "VALUES (1), (2)",
    ],
)
def test_reading_queries_that_mention_write_words_are_accepted(query: str) -> None:
    assert PostgresWatchConfig.create(detection="query_change", query=query).query == query


def test_backlog_batches_are_bounded_and_validated() -> None:
    from airflow_trigger_kit.settings import WatchSettings

    assert WatchSettings(namespace="n", name="w").max_batch_items == 5000
    assert WatchSettings(namespace="n", name="w", max_items=1).max_batch_items == 10
    assert WatchSettings(namespace="n", name="w", max_items=8000).max_batch_items == 8000
    assert WatchSettings(namespace="n", name="w", max_items=10, backlog_max_items=10).max_batch_items == 10
    with pytest.raises(
        ValueError, match=r"backlog_max_items must be an integer from max_items \(500\) to 100000, got 20"
    ):
        WatchSettings(namespace="n", name="w", backlog_max_items=20)
    with pytest.raises(ValueError, match="backlog_max_items must be an integer"):
        PostgresRowsTrigger(namespace="n", name="w", table="t", watermark_columns="id", backlog_max_items=10**9)


@pytest.mark.parametrize("bad", ["", "1orders", "orders-changed", "orders changed", "a" * 64, 'x"; DROP', 7, ["ch"]])
def test_notify_channel_must_be_an_identifier(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"notify_channel must be a Postgres identifier of at most 63 bytes") as info:
        PostgresRowsTrigger(namespace="n", name="w", table="t", watermark_columns="id", notify_channel=bad)
    assert repr(bad) in str(info.value)


def test_notify_channel_is_part_of_the_identity_and_left_out_when_off() -> None:
    def make(channel: str | None) -> PostgresRowsTrigger:
        return PostgresRowsTrigger(namespace="n", name="w", table="t", watermark_columns="id", notify_channel=channel)

    off, on, other = make(None), make("orders_changed"), make("Orders_2$")
    assert "notify_channel" not in off.serialize()[1], "watches serialized before the parameter keep their identity"
    assert on.serialize()[1]["notify_channel"] == "orders_changed"
    assert len({off.source_identity(), on.source_identity(), other.source_identity()}) == 3


def test_sensor_and_asset_pass_notify_channel_to_the_trigger() -> None:
    from airflow_trigger_kit.assets.postgres import postgres_asset
    from airflow_trigger_kit.sensors.postgres import PostgresRowsSensor

    sensor = PostgresRowsSensor(task_id="t", table="t", watermark_columns="id", notify_channel="orders_changed")
    assert sensor.source_kwargs()["notify_channel"] == "orders_changed"
    with pytest.raises(ValueError, match=r"notify_channel must be a Postgres identifier.*'no-such'"):
        PostgresRowsSensor(task_id="t", table="t", watermark_columns="id", notify_channel="no-such")
    asset = postgres_asset("orders", table="t", watermark_columns="id", notify_channel="orders_changed")
    (watcher,) = asset.watchers
    assert watcher.trigger.serialize()[1]["notify_channel"] == "orders_changed"
