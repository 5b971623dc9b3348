"""Introspection: the watched table as the catalog describes it, turned into a :class:`Plan`.

Everything a poll needs is resolved once, on the first poll of a source: the exact column names
and types, the key (the primary key, a unique index within the watermark columns, or
``key_columns``), the btree index that serves the keyset order, the role's privileges, and the
late-commit strategy. Every problem found here is permanent and named: an unknown table (with the
names that differ only in case), an unknown column (with the table's columns), a missing privilege
(with the ``GRANT`` to run), a type that cannot carry the chosen strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.sources.postgres.config import (
    DEFAULT_LOOKBACK_SECONDS,
    DEFAULT_LOOKBACK_VALUES,
    PostgresWatchConfig,
)
from airflow_trigger_kit.sources.postgres.errors import TRANSIENT_SQLSTATE_PREFIXES
from airflow_trigger_kit.sources.postgres.identifiers import quote_ident
from airflow_trigger_kit.sources.postgres.plan import Plan

log = logging.getLogger("airflow_trigger_kit.sources.postgres")

TEMPORAL_TYPES = frozenset({"timestamp with time zone", "timestamp without time zone", "date"})
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
NUMERIC_TYPES = INTEGER_TYPES | {"numeric", "real", "double precision"}


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    attnum: int
    type_sql: str
    """The column's type as SQL spells it (a cast target), from ``format_type``."""
    base_type: str
    """The base type of a domain (else the type itself), which decides how lookback applies."""
    not_null: bool
    default: str | None


@dataclass(frozen=True)
class IndexInfo:
    primary: bool
    unique: bool
    columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    oid: int
    namespace_oid: int
    columns: dict[str, ColumnInfo]
    indexes: tuple[IndexInfo, ...]

    @property
    def primary_key(self) -> tuple[str, ...]:
        for index in self.indexes:
            if index.primary:
                return index.columns
        return ()


_TABLE_SQL = """
SELECT c.oid, c.relkind, n.oid AS nsp
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""
_SIMILAR_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
LIMIT 5
"""
_COLUMNS_SQL = """
SELECT a.attname, a.attnum, pg_catalog.format_type(a.atttypid, NULL) AS type_sql,
       pg_catalog.format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL) AS base_type,
       a.attnotnull, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_sql
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_INDEXES_SQL = """
SELECT i.indisprimary, i.indisunique,
       ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num
             ORDER BY k.ord) AS cols
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam
WHERE i.indrelid = $1 AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL AND am.amname = 'btree'
ORDER BY i.indisprimary DESC, i.indisunique DESC, i.indexrelid
"""
_PRIVILEGES_SQL = """
SELECT pg_catalog.has_schema_privilege($2::oid, 'USAGE') AS usage,
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum = ANY($3::int2[])
               AND NOT pg_catalog.has_column_privilege($1, a.attnum, 'SELECT')
             ORDER BY a.attnum) AS denied,
       current_user AS role
"""


async def inspect_table(
    conn: asyncpg.Connection, cfg: PostgresWatchConfig, *, target: str, timeout: float, describe: str
) -> Plan:
    """The plan for ``cfg``'s table, checked against the catalog: names, types, keys, privileges, filter."""
    assert cfg.table is not None
    schema, name = cfg.table
    row = await conn.fetchrow(_TABLE_SQL, schema, name, timeout=timeout)
    if row is None:
        similar = await conn.fetch(_SIMILAR_TABLES_SQL, schema, name, timeout=timeout)
        hint = ""
        if similar:
            names = ", ".join(f"({r['nspname']!r}, {r['relname']!r})" for r in similar)
            hint = f"; names that differ only in case: {names} (unquoted names fold to lower case)"
        raise PermanentSourceError(
            f"table: {cfg.table_name} does not exist in database {target} (schema {schema!r}, table {name!r}){hint}"
        )
    oid, nsp = int(row["oid"]), int(row["nsp"])
    columns = {
        r["attname"]: ColumnInfo(
            r["attname"], int(r["attnum"]), r["type_sql"], r["base_type"], bool(r["attnotnull"]), r["default_sql"]
        )
        for r in await conn.fetch(_COLUMNS_SQL, oid, timeout=timeout)
    }
    indexes = tuple(
        IndexInfo(bool(r["indisprimary"]), bool(r["indisunique"]), tuple(r["cols"]))
        for r in await conn.fetch(_INDEXES_SQL, oid, timeout=timeout)
    )
    info = TableInfo(schema, name, oid, nsp, columns, indexes)

    def known(param: str, names: Sequence[str]) -> None:
        unknown = [c for c in names if c not in columns]
        if unknown:
            raise PermanentSourceError(
                f"{param}: unknown column(s) {unknown!r} in table {cfg.table_name}; its columns are "
                f"{list(columns)!r} (names are exact and case-sensitive)"
            )

    selected = list(cfg.columns) if cfg.columns is not None else list(columns)
    known("columns", selected)
    order: list[str] = []
    key: list[str] = []
    if cfg.detection == "watermark":
        assert cfg.watermark_columns is not None
        wm = list(cfg.watermark_columns)
        known("watermark_columns", wm)
        if cfg.key_columns is not None:
            known("key_columns", cfg.key_columns)
            key = list(cfg.key_columns)
        elif info.primary_key:
            key = list(info.primary_key)
        else:
            unique = next((ix.columns for ix in indexes if ix.unique and set(ix.columns) <= set(wm)), None)
            if unique is None:
                raise PermanentSourceError(
                    f"watermark_columns: {wm!r} of {cfg.table_name} are not known to be unique and the table "
                    "has no primary key, so rows sharing a watermark could be skipped between batches; pass "
                    "key_columns naming columns that identify a row"
                )
            key = list(unique)
        order = wm + [k for k in key if k not in wm]
        if cfg.xid_column is not None:
            xid = columns[cfg.xid_column]
            if xid.base_type != "xid8":
                raise PermanentSourceError(
                    f"xid_column: {cfg.xid_column!r} of {cfg.table_name} has type {xid.type_sql}; it must be "
                    f"xid8, e.g. ALTER TABLE {cfg.table_name} ADD COLUMN {quote_ident(cfg.xid_column)} xid8 "
                    "NOT NULL DEFAULT pg_current_xact_id()"
                )
            if not xid.default or "pg_current_xact_id" not in xid.default:
                log.warning(
                    "%s: xid_column %r has no DEFAULT pg_current_xact_id(); rows whose writers do not stamp it "
                    "with their transaction id may be reported late or skipped",
                    describe,
                    cfg.xid_column,
                )
    used = list(dict.fromkeys([*selected, *order]))
    priv = await conn.fetchrow(_PRIVILEGES_SQL, oid, nsp, [columns[c].attnum for c in used], timeout=timeout)
    if not priv["usage"]:
        raise PermanentSourceError(
            f"table: role {priv['role']!r} has no USAGE privilege on schema {schema!r} of {cfg.table_name}; "
            f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(priv['role'])}"
        )
    if priv["denied"]:
        raise PermanentSourceError(
            f"table: role {priv['role']!r} may not read column(s) {list(priv['denied'])!r} of {cfg.table_name} "
            f"(permission denied); GRANT SELECT ON {cfg.table_name} TO {quote_ident(priv['role'])}"
        )
    relation = f"{quote_ident(schema)}.{quote_ident(name)}"
    if cfg.filter is not None:
        await check_prepared(
            conn,
            "filter",
            f"SELECT 1 FROM {relation} AS src WHERE (\n{cfg.filter}\n)",
            timeout=timeout,
            context=f"postgres watch of {cfg.table_name} ({target})",
        )
    plan = Plan(
        relation=relation,
        selected=selected,
        order=order,
        key=key,
        types=[columns[c].type_sql for c in order],
        filter=cfg.filter,
        nullable_order=[c for c in order if not columns[c].not_null],
        selected_types=[columns[c].base_type for c in selected],
    )
    if cfg.detection == "watermark":
        plan_late_commits(cfg, plan, info)
        if plan.nullable_order:
            log.warning(
                "%s: order column(s) %s are nullable; rows where they are NULL are never reported",
                describe,
                plan.nullable_order,
            )
        if not any(ix.columns[: len(order)] == tuple(order) for ix in indexes):
            log.warning(
                "%s: no btree index on (%s): every poll scans the table; CREATE INDEX ON %s (%s)",
                describe,
                ", ".join(order),
                cfg.table_name,
                ", ".join(quote_ident(c) for c in order),
            )
    return plan


def plan_late_commits(cfg: PostgresWatchConfig, plan: Plan, info: TableInfo) -> None:
    """Set the xid condition or the lookback of ``plan`` (the late-commit strategy of the watch)."""
    if cfg.xid_column is not None:
        plan.xid_condition = (
            f"src.{quote_ident(cfg.xid_column)} < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())"
        )
        return
    first = info.columns[plan.order[0]]
    if first.base_type in TEMPORAL_TYPES:
        kind, default = "temporal", DEFAULT_LOOKBACK_SECONDS
    elif first.base_type in NUMERIC_TYPES:
        kind, default = "numeric", float(DEFAULT_LOOKBACK_VALUES)
    else:
        kind, default = None, None
    lookback = default if cfg.lookback is None else cfg.lookback
    if kind is None and lookback != 0:
        raise PermanentSourceError(
            f"watermark_columns: the first order column {first.name!r} of {cfg.table_name} has type "
            f"{first.type_sql}, so lookback cannot measure a window on it; use xid_column (exact), or a "
            "timestamp, date or numeric first watermark column, or set lookback=0 to accept that rows "
            "committing after later rows were read are skipped"
        )
    if lookback and first.base_type in INTEGER_TYPES and not lookback.is_integer():
        raise PermanentSourceError(
            f"lookback: {lookback!r} must be a whole number of values for the integer column {first.name!r}"
        )
    if lookback:
        plan.lookback_kind, plan.lookback = kind, float(lookback)


async def check_prepared(
    conn: asyncpg.Connection, param: str, sql: str, *, timeout: float, context: str
) -> asyncpg.PreparedStatement:
    """``sql`` prepared by the server; a statement it rejects is a permanent error naming ``param``."""
    try:
        stmt = await conn.prepare(sql, timeout=timeout)
    except asyncpg.PostgresError as exc:
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith(TRANSIENT_SQLSTATE_PREFIXES):
            raise
        raise PermanentSourceError(f"{param}: the server rejected it: {type(exc).__name__}: {exc} ({context})") from exc
    if stmt.get_parameters():
        raise PermanentSourceError(f"{param}: placeholders ($1, ...) are not supported; write literal values")
    return stmt
