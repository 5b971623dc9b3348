"""Read the ProcessState table directly, independently of the package under test.

The end-to-end tests sample watermarks while triggerers are killed and run side by side, and the
demo waits for each watcher's first baseline. Both read the table with plain SQL rather than with
``airflow_trigger_kit.state``: a bug in the store must not be able to hide itself from its checks.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

DEFAULT_TABLE = "trigger_kit_process_state"


@dataclass(frozen=True)
class StateRow:
    namespace: str
    name: str
    key: str
    value: Any
    version: int


class StateReader:
    """Rows of the ProcessState table in PostgreSQL (``dsn``) or SQLite (``sqlite_path``)."""

    def __init__(self, *, dsn: str | None = None, sqlite_path: str | None = None, table: str = DEFAULT_TABLE) -> None:
        if (dsn is None) == (sqlite_path is None):
            raise ValueError("give exactly one of dsn and sqlite_path")
        self.dsn = dsn
        self.sqlite_path = sqlite_path
        self.table = table

    def rows(self, namespace: str) -> dict[tuple[str, str], StateRow]:
        """``(name, key) -> row`` for every key of ``namespace``; empty when the table is not created yet."""
        sql = f"SELECT namespace, name, key, value, version FROM {self.table} WHERE namespace = "
        if self.sqlite_path is not None:
            try:
                with sqlite3.connect(self.sqlite_path, timeout=10) as conn:
                    raw = conn.execute(sql + "?", (namespace,)).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return {}
                raise
        else:
            raw = asyncio.run(self._pg_rows(sql + "$1", namespace))
        rows = [StateRow(r[0], r[1], r[2], json.loads(r[3]), int(r[4])) for r in raw]
        return {(r.name, r.key): r for r in rows}

    async def _pg_rows(self, sql: str, namespace: str) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            exists = await conn.fetchval("SELECT to_regclass($1)", self.table)
            if exists is None:
                return []
            return [tuple(r) for r in await conn.fetch(sql, namespace)]
        finally:
            await conn.close()

    def get(self, namespace: str, name: str, key: str = "cursor") -> StateRow | None:
        return self.rows(namespace).get((name, key))
