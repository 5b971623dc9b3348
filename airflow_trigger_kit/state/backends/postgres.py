"""PostgreSQL backend through asyncpg, selected by ``[trigger_kit] state_conn_id``.

The connection is looked up by its Airflow conn id when first needed, so no credential is ever
stored in configuration or trigger kwargs. asyncpg pools are bound to the event loop that created
them, so the backend keeps one small pool per running loop (the triggerer's loop, the sync twin's
private loop) and closes it in :meth:`aclose`. Compare-and-set is one statement, executed by the
server under row locks: concurrent writers can never lose an update.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from airflow_trigger_kit.state.backends.base import StateBackend
from airflow_trigger_kit.state.model import (
    StateConflict,
    StateEntry,
    StateStoreUnavailable,
    StoredEntry,
)

ConnectKwargsFactory = Callable[[], Awaitable[dict[str, Any]]]

STATEMENT_TIMEOUT_S = 30.0


class PostgresBackend(StateBackend):
    def __init__(
        self,
        connect_kwargs: ConnectKwargsFactory,
        *,
        table: str = "trigger_kit_process_state",
        label: str = "postgres",
    ) -> None:
        self._connect_kwargs = connect_kwargs
        self.table = table
        self._label = label
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncpg.Pool] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    def describe(self) -> str:
        return self._label

    async def _pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            pool = self._pools.get(loop)
            if pool is None:
                kwargs = await self._connect_kwargs()
                pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=4,
                    command_timeout=STATEMENT_TIMEOUT_S,
                    **kwargs,
                )
                async with pool.acquire() as conn:
                    await conn.execute(
                        f"""CREATE TABLE IF NOT EXISTS {self.table} (
                            namespace TEXT NOT NULL,
                            name TEXT NOT NULL,
                            key TEXT NOT NULL,
                            value TEXT NOT NULL,
                            version BIGINT NOT NULL,
                            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                            updated_by TEXT NOT NULL,
                            PRIMARY KEY (namespace, name, key)
                        )"""
                    )
                self._pools[loop] = pool
        return pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            pool = await self._pool()
            async with pool.acquire() as conn:
                try:
                    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                except asyncpg.exceptions.InternalClientError:
                    # A server restart can leave a pooled connection half-closed: asyncpg has read the
                    # FATAL message but not yet the end of the socket, and reports "another operation
                    # is in progress". Never hand that connection out again.
                    conn.terminate()
                    raise
                return rows
        except (asyncpg.UniqueViolationError, asyncpg.SerializationError) as exc:  # pragma: no cover
            raise StateStoreUnavailable(f"ProcessState store {self._label}: {exc}") from exc
        except (
            OSError,
            asyncio.TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
        ) as exc:
            raise StateStoreUnavailable(
                f"ProcessState store {self._label} is unavailable: {type(exc).__name__}: {exc}"
            ) from exc

    async def get(self, namespace: str, name: str, key: str) -> StateEntry | None:
        rows = await self._fetch(
            f"SELECT value, version, updated_at, updated_by FROM {self.table} "
            "WHERE namespace = $1 AND name = $2 AND key = $3",
            namespace,
            name,
            key,
        )
        return _entry(rows[0]) if rows else None

    async def put(
        self,
        namespace: str,
        name: str,
        key: str,
        value_json: str,
        *,
        expected_version: int | None,
        updated_by: str,
    ) -> int:
        ids = (namespace, name, key)
        if expected_version is None:
            rows = await self._fetch(
                f"INSERT INTO {self.table} AS t (namespace, name, key, value, version, updated_at, updated_by) "
                "VALUES ($1, $2, $3, $4, 1, now(), $5) ON CONFLICT (namespace, name, key) DO UPDATE SET "
                "value = excluded.value, version = t.version + 1, updated_at = now(), "
                "updated_by = excluded.updated_by RETURNING version",
                *ids,
                value_json,
                updated_by,
            )
        elif expected_version == 0:
            rows = await self._fetch(
                f"INSERT INTO {self.table} (namespace, name, key, value, version, updated_at, updated_by) "
                "VALUES ($1, $2, $3, $4, 1, now(), $5) ON CONFLICT (namespace, name, key) DO NOTHING "
                "RETURNING version",
                *ids,
                value_json,
                updated_by,
            )
        else:
            rows = await self._fetch(
                f"UPDATE {self.table} SET value = $4, version = version + 1, updated_at = now(), "
                "updated_by = $5 WHERE namespace = $1 AND name = $2 AND key = $3 AND version = $6 "
                "RETURNING version",
                *ids,
                value_json,
                updated_by,
                expected_version,
            )
        if rows:
            return int(rows[0]["version"])
        assert expected_version is not None
        current = await self.get(namespace, name, key)
        raise StateConflict(namespace, name, key, expected_version, 0 if current is None else current.version)

    async def delete(self, namespace: str, name: str, key: str) -> bool:
        rows = await self._fetch(
            f"DELETE FROM {self.table} WHERE namespace = $1 AND name = $2 AND key = $3 RETURNING 1",
            namespace,
            name,
            key,
        )
        return bool(rows)

    async def list(self, namespace: str | None, name: str | None) -> list[StoredEntry]:
        rows = await self._fetch(
            f"SELECT namespace, name, key, value, version, updated_at, updated_by FROM {self.table} "
            "WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR name = $2) "
            "ORDER BY namespace, name, key",
            namespace,
            name,
        )
        return [StoredEntry(r["namespace"], r["name"], r["key"], _entry(r)) for r in rows]

    async def clear(self, namespace: str, name: str) -> int:
        rows = await self._fetch(
            f"DELETE FROM {self.table} WHERE namespace = $1 AND name = $2 RETURNING 1", namespace, name
        )
        return len(rows)

    async def get_many(self, namespace: str, name: str, keys: Sequence[str]) -> dict[str, Any]:
        rows = await self._fetch(
            f"SELECT key, value FROM {self.table} WHERE namespace = $1 AND name = $2 AND key = ANY($3::text[])",
            namespace,
            name,
            list(keys),
        )
        return {r["key"]: json.loads(r["value"]) for r in rows}

    async def put_many(self, namespace: str, name: str, values_json: Mapping[str, str], *, updated_by: str) -> None:
        if not values_json:
            return
        await self._fetch(
            f"INSERT INTO {self.table} AS t (namespace, name, key, value, version, updated_at, updated_by) "
            "SELECT $1, $2, k, v, 1, now(), $5 FROM unnest($3::text[], $4::text[]) AS u(k, v) "
            "ON CONFLICT (namespace, name, key) DO UPDATE SET value = excluded.value, version = t.version + 1, "
            "updated_at = now(), updated_by = excluded.updated_by",
            namespace,
            name,
            list(values_json),
            list(values_json.values()),
            updated_by,
        )

    async def delete_many(self, namespace: str, name: str, keys: Sequence[str]) -> int:
        rows = await self._fetch(
            f"DELETE FROM {self.table} WHERE namespace = $1 AND name = $2 AND key = ANY($3::text[]) RETURNING 1",
            namespace,
            name,
            list(keys),
        )
        return len(rows)

    async def list_keys(self, namespace: str, name: str, prefix: str = "") -> Sequence[str]:
        rows = await self._fetch(
            f"SELECT key FROM {self.table} WHERE namespace = $1 AND name = $2 AND left(key, length($3)) = $3 "
            "ORDER BY key",
            namespace,
            name,
            prefix,
        )
        return [r["key"] for r in rows]

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.close()


def _entry(row: asyncpg.Record) -> StateEntry:
    return StateEntry(
        value=json.loads(row["value"]),
        version=int(row["version"]),
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )
