"""Helpers shared by the Postgres watch tests (no tests here)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from airflow_trigger_kit.sources.base import Batch, Item
from airflow_trigger_kit.sources.postgres import PostgresSource, PostgresWatchConfig
from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger

STATE_LIMIT = 64 * 1024

ORDERS_DDL = """
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now(),
    xmin8 xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX orders_updated_at_id ON public.orders (updated_at, id);
CREATE INDEX orders_xmin8_id ON public.orders (xmin8, id);
"""


async def execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def source(dsn: str, **config: Any) -> PostgresSource:
    return PostgresSource(PostgresWatchConfig.create(**config), {"dsn": dsn}, label="test")


def persisted(cursor: Any) -> Any:
    """The cursor as it comes back from ProcessState: JSON, within the default size limit."""
    text = json.dumps(cursor, separators=(",", ":"))
    assert len(text.encode()) <= STATE_LIMIT, f"cursor of {len(text)} bytes exceeds the state limit"
    return json.loads(text)


async def drain(src: PostgresSource, cursor: Any, max_items: int = 500) -> tuple[list[Item], Any, list[Batch]]:
    """Poll until a poll reports nothing; return every item, the final cursor and the batches."""
    items: list[Item] = []
    batches: list[Batch] = []
    while True:
        batch = await src.poll(cursor, max_items)
        assert len(batch.items) <= max_items
        cursor = persisted(batch.cursor)
        if not batch.items:
            return items, cursor, batches
        items.extend(batch.items)
        batches.append(batch)


def ids(items: list[Item]) -> list[int]:
    return [int(i.data["key"]["id"]) for i in items]  # type: ignore[index, call-overload]


def use_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, dsn: str) -> str:
    """Define an Airflow connection through its environment variable (the way secrets backends do)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", dsn)
    return conn_id


def trigger(conn_id: str, **kwargs: Any) -> PostgresRowsTrigger:
    kwargs.setdefault("namespace", "pg-tests")
    kwargs.setdefault("name", "watch")
    kwargs.setdefault("poll_interval", 0.1)
    kwargs.setdefault("retry_base_seconds", 0.1)
    kwargs.setdefault("retry_max_seconds", 0.5)
    return PostgresRowsTrigger(postgres_conn_id=conn_id, **kwargs)
