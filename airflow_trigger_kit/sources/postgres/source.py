"""PostgresSource: the :class:`~airflow_trigger_kit.sources.base.Source` over one table or query.

It owns the transaction of each poll — ``REPEATABLE READ READ ONLY``, ``SET LOCAL
statement_timeout`` (and ``jit = off``: the planner's guesses for keyset ranges are pessimistic, and
compiling a plan would cost more than the index scans it runs), every error classified — and
dispatches to the detection: :mod:`~airflow_trigger_kit.sources.postgres.watermark`, or the small
``row_count`` and ``query_change`` polls here. Connections come from a
:class:`~airflow_trigger_kit.sources.postgres.connections.Connector`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from airflow_trigger_kit.sources.base import (
    JSON,
    Batch,
    Item,
    PermanentSourceError,
    Source,
    TransientSourceError,
    stable_id,
)
from airflow_trigger_kit.sources.postgres.catalog import check_prepared, inspect_table
from airflow_trigger_kit.sources.postgres.config import PostgresWatchConfig
from airflow_trigger_kit.sources.postgres.connections import ConnectKwargs, Connector, PrivateConnector
from airflow_trigger_kit.sources.postgres.errors import (
    CLIENT_STATE_ERRORS,
    classify_error,
    closes_soon,
    is_closed,
    terminate,
)
from airflow_trigger_kit.sources.postgres.json_values import result_fingerprint, row_digest, to_json_safe
from airflow_trigger_kit.sources.postgres.plan import Plan
from airflow_trigger_kit.sources.postgres.watermark import CURSOR_VERSION, WatermarkDetection


class PostgresSource(Source):
    """Detection over one table (or one query), through a :class:`Connector`.

    :param config: the validated watch parameters.
    :param connect_kwargs: asyncpg ``connect()`` kwargs, or an async callable returning them (called
        when the connection is first needed, and again after a connection loss); used when no
        ``connector`` is given.
    :param label: names the connection in messages (for example ``postgres_conn_id='orders'``).
    :param connector: where connections come from (default: one private connection of this source).
        A shared connector (the triggerer's pool) outlives the source: :meth:`aclose` leaves it open.
    """

    kind = "postgres"

    def __init__(
        self,
        config: PostgresWatchConfig,
        connect_kwargs: ConnectKwargs | None = None,
        *,
        label: str = "postgres",
        connector: Connector | None = None,
    ) -> None:
        if connector is None:
            if connect_kwargs is None:
                raise ValueError("PostgresSource needs connect_kwargs or a connector")
            connector = PrivateConnector(connect_kwargs, config.statement_timeout)
            self._owns_connector = True
        else:
            self._owns_connector = False
        self.config = config
        self.connector = connector
        self.label = label
        self._plan: Plan | None = None
        self._watermark: WatermarkDetection | None = None
        self._table_name = config.table_name
        self._timeout_ms = max(1, int(config.statement_timeout * 1000))
        # Client-side backstop per statement, for a server that stops answering (no network error).
        self._command_timeout = config.statement_timeout + 5.0

    @property
    def _target(self) -> str:
        return self.connector.target

    # -- description ------------------------------------------------------------------------------
    def describe(self) -> str:
        what = self._table_name if self.config.table else "query"
        return f"{self.config.detection} on {what} ({self.label}, {self._target})"

    def _context(self, param: str | None = None) -> str:
        where = f"{param}: " if param else ""
        return f"{where}postgres watch of {self._table_name} via {self.label} ({self._target})"

    def describe_cursor(self, cursor: JSON | None) -> JSON:
        if not isinstance(cursor, dict):
            return cursor
        d = cursor.get("d")
        if d == "watermark":
            summary: dict[str, JSON] = {
                "position": dict(zip(cursor.get("cols", []), cursor.get("pos") or [], strict=False)) or None
            }
            if "seg" in cursor:
                segs = cursor["seg"]
                summary["window"] = {
                    "segments": len(segs),
                    "rows": sum(s.get("n", 0) for s in segs),
                    "pending": sum(1 for s in segs if s.get("p") is not None),
                }
            return summary
        if d == "row_count":
            return {"count": cursor.get("count")}
        if d == "query_change":
            return {"fingerprint": cursor.get("fp"), "rows": cursor.get("rows")}
        return cursor

    async def aclose(self) -> None:
        if self._owns_connector:
            await self.connector.aclose()

    @contextlib.asynccontextmanager
    async def _transaction(self, param: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """One REPEATABLE READ READ ONLY transaction with the statement timeout; errors classified.

        The transaction is ended by hand (not ``async with``) so that the error reported is the
        one that happened — a terminated backend, say — not the failure to roll back afterwards.
        A connection that was lost, or cancelled mid-transaction, is terminated before it goes back
        to the connector, so it is never reused.
        """
        acquired = False
        try:
            async with self.connector.connection() as conn:
                acquired = True
                try:
                    tx = conn.transaction(isolation="repeatable_read", readonly=True)
                    await tx.start()
                    try:
                        await conn.execute(
                            f"SET LOCAL statement_timeout = {self._timeout_ms}; SET LOCAL jit = off",
                            timeout=self._command_timeout,
                        )
                        if self._plan is None and self.config.detection != "query_change":
                            self._plan = await inspect_table(
                                conn,
                                self.config,
                                target=self._target,
                                timeout=self._command_timeout,
                                describe=self.describe(),
                            )
                            self._watermark = WatermarkDetection(self._plan, self._table_name, self._command_timeout)
                        yield conn
                    except Exception:
                        if not is_closed(conn):
                            with contextlib.suppress(Exception):
                                await tx.rollback()
                        raise
                    except BaseException:
                        terminate(conn)  # cancelled mid-transaction: never reuse the connection
                        raise
                    else:
                        await tx.commit()
                except Exception as exc:
                    closed = is_closed(conn)
                    if not closed and isinstance(exc, CLIENT_STATE_ERRORS):
                        closed = await closes_soon(conn)
                    error = classify_error(exc, context=self._context(param), connection_closed=closed)
                    if error is None:
                        raise
                    if isinstance(error, TransientSourceError) and not is_closed(conn):
                        terminate(conn)
                    if error is exc:
                        raise
                    raise error from exc
        except Exception as exc:
            if acquired:
                raise  # classified above
            # Opening (or waiting for) a connection failed: the server is unreachable, refuses us, ...
            error = classify_error(exc, context=self._context(param), connection_closed=True)
            if error is None or error is exc:
                raise
            raise error from exc

    # -- cursors ---------------------------------------------------------------------------------------
    def _check_cursor(self, cursor: JSON) -> dict[str, Any]:
        cfg = self.config
        if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION or "d" not in cursor:
            raise PermanentSourceError(
                f"the stored cursor is not a postgres-watch cursor (version {CURSOR_VERSION}): "
                f"{str(cursor)[:200]!r}; reset it with `trigger-kit state reset NAMESPACE NAME`"
            )
        if cursor["d"] != cfg.detection:
            raise PermanentSourceError(
                f"detection changed: the stored cursor was made by detection={cursor['d']!r}, the watch now uses "
                f"detection={cfg.detection!r}; reset it with `trigger-kit state reset NAMESPACE NAME`"
            )
        return cursor

    def _check_watermark_cursor(self, cursor: dict[str, Any], plan: Plan) -> None:
        if cursor.get("cols") != plan.order:
            raise PermanentSourceError(
                f"watermark_columns changed: the stored cursor follows order columns {cursor.get('cols')!r}, the "
                f"watch now orders by {plan.order!r}; reset it with `trigger-kit state reset NAMESPACE NAME`"
            )
        pos = cursor.get("pos")
        if pos is not None and (not isinstance(pos, list) or len(pos) != len(plan.order)):
            raise PermanentSourceError(f"the stored cursor's position {pos!r} does not fit {plan.order!r}")

    # -- Source API ---------------------------------------------------------------------------------
    async def baseline(self) -> JSON:
        if self.config.detection == "query_change":
            async with self._transaction("query") as conn:
                fp, rows, _ = await self._run_query(conn, 0)
            return {"v": CURSOR_VERSION, "d": "query_change", "fp": fp, "rows": rows}
        async with self._transaction() as conn:
            plan = self._plan
            assert plan is not None
            if self.config.detection == "row_count":
                return {"v": CURSOR_VERSION, "d": "row_count", "count": await self._count(conn, plan)}
            assert self._watermark is not None
            return await self._watermark.baseline(conn)

    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        current = None if cursor is None else self._check_cursor(cursor)
        detection = self.config.detection
        if detection == "query_change":
            async with self._transaction("query") as conn:
                return await self._poll_query(conn, current, max_items)
        async with self._transaction() as conn:
            plan = self._plan
            assert plan is not None
            if detection == "row_count":
                return await self._poll_count(conn, plan, current)
            assert self._watermark is not None
            if current is None:
                current = self._watermark.empty_cursor()
            self._check_watermark_cursor(current, plan)
            return await self._watermark.poll(conn, current, max_items)

    async def explain(self, cursor: JSON | None = None, max_items: int = 500) -> list[str]:
        """``EXPLAIN`` of the keyset statement the next ``watermark`` poll from ``cursor`` runs.

        A diagnostic: with a btree index on the order columns the plan is an index (only) scan
        that stops after ``max_items + 1`` rows, whatever the table's size.
        """
        if self.config.detection != "watermark":
            raise ValueError(f"explain() is for detection='watermark', this watch uses {self.config.detection!r}")
        async with self._transaction() as conn:
            assert self._watermark is not None
            pos = None if cursor is None else self._check_cursor(cursor).get("pos")
            return await self._watermark.explain(conn, pos, max_items)

    # -- row_count ------------------------------------------------------------------------------------
    async def _count(self, conn: asyncpg.Connection, plan: Plan) -> int:
        where = plan.conditions()
        sql = f"SELECT count(*) FROM {plan.relation} AS src" + (" WHERE " + " AND ".join(where) if where else "")
        return int(await conn.fetchval(sql, timeout=self._command_timeout))

    async def _poll_count(self, conn: asyncpg.Connection, plan: Plan, cursor: dict[str, Any] | None) -> Batch:
        previous = 0 if cursor is None else int(cursor.get("count", 0))
        count = await self._count(conn, plan)
        new_cursor = {"v": CURSOR_VERSION, "d": "row_count", "count": count}
        if count == previous:
            return Batch([], new_cursor)
        data: dict[str, JSON] = {
            "kind": "row_count",
            "table": self._table_name,
            "count": count,
            "previous_count": previous,
            "delta": count - previous,
        }
        item = Item(stable_id("postgres", self._table_name, "row_count", previous, count), data)
        return Batch([item], new_cursor)

    # -- query_change ---------------------------------------------------------------------------------
    async def _run_query(self, conn: asyncpg.Connection, keep: int) -> tuple[str, int, list[dict[str, JSON]]]:
        assert self.config.query is not None
        stmt = await check_prepared(
            conn, "query", self.config.query, timeout=self._command_timeout, context=self._context()
        )
        columns = [a.name for a in stmt.get_attributes()]
        if not columns:
            raise PermanentSourceError("query: returns no columns; it must be a SELECT that returns rows")
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise PermanentSourceError(f"query: returns several columns named {dupes!r}; give them distinct aliases")
        total, rows = 0, 0
        first: list[dict[str, JSON]] = []
        async for record in stmt.cursor(prefetch=500, timeout=self._command_timeout):
            values = [to_json_safe(v) for v in record.values()]
            total += row_digest(values)
            if rows < keep:
                first.append(dict(zip(columns, values, strict=True)))
            rows += 1
        return result_fingerprint(columns, total, rows), rows, first

    async def _poll_query(self, conn: asyncpg.Connection, cursor: dict[str, Any] | None, max_items: int) -> Batch:
        fp, rows, first = await self._run_query(conn, max_items)
        new_cursor = {"v": CURSOR_VERSION, "d": "query_change", "fp": fp, "rows": rows}
        previous = None if cursor is None else cursor.get("fp")
        if fp == previous or (previous is None and rows == 0):
            return Batch([], new_cursor)
        assert self.config.query is not None
        query_id = hashlib.sha256(self.config.query.encode("utf-8")).hexdigest()[:16]
        data: dict[str, JSON] = {
            "kind": "query_change",
            "query_id": query_id,
            "fingerprint": fp,
            "previous_fingerprint": previous,
            "row_count": rows,
            "rows": first,
            "truncated": rows > len(first),
        }
        return Batch([Item(stable_id("postgres", "query", query_id, fp), data)], new_cursor)
