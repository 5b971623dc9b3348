"""SQLite backend: the embedded default, one file under ``$AIRFLOW_HOME``.

All SQLite calls run on one dedicated worker thread per backend, so the event loop never blocks
and the connection is only ever used from the thread that opened it. The database is in WAL mode
with a generous busy timeout, so the triggerer, workers and the CLI on the same host can share it.
Compare-and-set is a single ``INSERT ... ON CONFLICT`` / ``UPDATE ... WHERE version = ?``
statement: SQLite serialises writers, so no update can be lost.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from airflow_trigger_kit.state.backends.base import StateBackend
from airflow_trigger_kit.state.model import (
    StateConflict,
    StateEntry,
    StateStoreUnavailable,
    StoredEntry,
)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
MAX_VARIABLES = 500
"""Keys bound in one ``IN (...)`` list (SQLite allows 999 variables in old builds)."""


class SQLiteBackend(StateBackend):
    def __init__(self, path: str, table: str = "trigger_kit_process_state") -> None:
        self.path = path
        self.table = table
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trigger-kit-sqlite")
        self._local = threading.local()

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    # -- worker-thread side -------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                    namespace TEXT NOT NULL,
                    name TEXT NOT NULL,
                    key TEXT NOT NULL,
                    value TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    updated_at TEXT NOT NULL,
                    updated_by TEXT NOT NULL,
                    PRIMARY KEY (namespace, name, key)
                )"""
            )
            self._local.conn = conn
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._connection())
            except sqlite3.Error as exc:
                raise StateStoreUnavailable(f"ProcessState SQLite store {self.path} failed: {exc}") from exc

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except RuntimeError as exc:  # executor shut down
            raise StateStoreUnavailable(f"ProcessState SQLite store {self.path} is closed") from exc

    # -- operations -----------------------------------------------------------------------------
    async def get(self, namespace: str, name: str, key: str) -> StateEntry | None:
        def op(conn: sqlite3.Connection) -> StateEntry | None:
            row = conn.execute(
                f"SELECT value, version, updated_at, updated_by FROM {self.table} "
                "WHERE namespace = ? AND name = ? AND key = ?",
                (namespace, name, key),
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(op)

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
        now = datetime.now(timezone.utc).isoformat()

        def op(conn: sqlite3.Connection) -> int | None:
            ids = (namespace, name, key)
            if expected_version is None:
                row = conn.execute(
                    f"INSERT INTO {self.table} (namespace, name, key, value, version, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (namespace, name, key) DO UPDATE SET "
                    "value = excluded.value, version = version + 1, "
                    "updated_at = excluded.updated_at, updated_by = excluded.updated_by "
                    "RETURNING version",
                    (*ids, value_json, now, updated_by),
                ).fetchone()
            elif expected_version == 0:
                row = conn.execute(
                    f"INSERT INTO {self.table} (namespace, name, key, value, version, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (namespace, name, key) DO NOTHING "
                    "RETURNING version",
                    (*ids, value_json, now, updated_by),
                ).fetchone()
            else:
                row = conn.execute(
                    f"UPDATE {self.table} SET value = ?, version = version + 1, updated_at = ?, "
                    "updated_by = ? WHERE namespace = ? AND name = ? AND key = ? AND version = ? "
                    "RETURNING version",
                    (value_json, now, updated_by, *ids, expected_version),
                ).fetchone()
            return None if row is None else int(row[0])

        version = await self._run(op)
        if version is None:
            assert expected_version is not None
            current = await self.get(namespace, name, key)
            raise StateConflict(namespace, name, key, expected_version, 0 if current is None else current.version)
        return version

    async def delete(self, namespace: str, name: str, key: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"DELETE FROM {self.table} WHERE namespace = ? AND name = ? AND key = ?",
                (namespace, name, key),
            )
            return cur.rowcount > 0

        return await self._run(op)

    async def list(self, namespace: str | None, name: str | None) -> list[StoredEntry]:
        def op(conn: sqlite3.Connection) -> list[StoredEntry]:
            sql = (
                f"SELECT namespace, name, key, value, version, updated_at, updated_by FROM {self.table} "
                "WHERE (? IS NULL OR namespace = ?) AND (? IS NULL OR name = ?) "
                "ORDER BY namespace, name, key"
            )
            rows = conn.execute(sql, (namespace, namespace, name, name)).fetchall()
            return [StoredEntry(r[0], r[1], r[2], _entry(r[3:])) for r in rows]

        return await self._run(op)

    async def clear(self, namespace: str, name: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(f"DELETE FROM {self.table} WHERE namespace = ? AND name = ?", (namespace, name))
            return cur.rowcount

        return await self._run(op)

    async def get_many(self, namespace: str, name: str, keys: Sequence[str]) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            found: dict[str, Any] = {}
            for in_list, params in _in_lists(namespace, name, keys):
                sql = f"SELECT key, value FROM {self.table} WHERE namespace = ? AND name = ? AND key IN ({in_list})"
                found.update((key, json.loads(value)) for key, value in conn.execute(sql, params).fetchall())
            return found

        return await self._run(op)

    async def put_many(self, namespace: str, name: str, values_json: Mapping[str, str], *, updated_by: str) -> None:
        now = datetime.now(timezone.utc).isoformat()
        rows = [(namespace, name, key, value, now, updated_by) for key, value in values_json.items()]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    f"INSERT INTO {self.table} (namespace, name, key, value, version, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (namespace, name, key) DO UPDATE SET "
                    "value = excluded.value, version = version + 1, "
                    "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    rows,
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        if rows:
            await self._run(op)

    async def delete_many(self, namespace: str, name: str, keys: Sequence[str]) -> int:
        def op(conn: sqlite3.Connection) -> int:
            deleted = 0
            for in_list, params in _in_lists(namespace, name, keys):
                sql = f"DELETE FROM {self.table} WHERE namespace = ? AND name = ? AND key IN ({in_list})"
                deleted += conn.execute(sql, params).rowcount
            return deleted

        return await self._run(op)

    async def list_keys(self, namespace: str, name: str, prefix: str = "") -> Sequence[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT key FROM {self.table} WHERE namespace = ? AND name = ? AND substr(key, 1, ?) = ? ORDER BY key",
                (namespace, name, len(prefix), prefix),
            ).fetchall()
            return [row[0] for row in rows]

        return await self._run(op)

    async def aclose(self) -> None:
        """Nothing is bound to an event loop; connections live as long as the backend."""


def _in_lists(namespace: str, name: str, keys: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``(placeholders, parameters)`` per batch of at most MAX_VARIABLES keys of one process."""
    batches = []
    for start in range(0, len(keys), MAX_VARIABLES):
        part = tuple(keys[start : start + MAX_VARIABLES])
        batches.append((", ".join("?" * len(part)), (namespace, name, *part)))
    return batches


def _entry(row: tuple[str, int, str, str]) -> StateEntry:
    value, version, updated_at, updated_by = row
    return StateEntry(
        value=json.loads(value),
        version=int(version),
        updated_at=datetime.fromisoformat(updated_at),
        updated_by=updated_by,
    )
