"""SQL building for one watched table: the keyset statement, the window check, positions (pure).

Identifiers come from the catalog and are always quoted; every value (cursor positions, limits,
hashes, the lookback) is a bound parameter, cast from text to the column's type
(``$1::text::timestamp with time zone``). The SQL text of each statement depends only on the plan,
never on the cursor, so asyncpg prepares it once per connection and the server plans it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_trigger_kit.sources.postgres.identifiers import quote_ident


class Params:
    """Bound parameters of one statement; values are always sent separately from the SQL text."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"

    def position(self, pos: Sequence[str], types: Sequence[str]) -> list[str]:
        return [self.add(v, f"text::{t}") for v, t in zip(pos, types, strict=True)]


@dataclass
class Plan:
    """Everything a watermark or row_count poll needs, resolved once from the catalog."""

    relation: str
    selected: list[str]
    order: list[str]
    key: list[str]
    types: list[str]
    lookback_kind: str | None = None
    lookback: float = 0.0
    xid_condition: str | None = None
    filter: str | None = None
    nullable_order: list[str] = field(default_factory=list)
    selected_types: list[str] = field(default_factory=list)
    """Base types of ``selected`` (from the catalog), which decide how values become JSON."""

    @property
    def order_sql(self) -> str:
        return ", ".join(f"src.{quote_ident(c)}" for c in self.order)

    @property
    def hash_sql(self) -> str:
        return f"pg_catalog.hashtextextended(ROW({self.order_sql})::text, 0)"

    def conditions(self) -> list[str]:
        parts = [f"src.{quote_ident(c)} IS NOT NULL" for c in self.nullable_order]
        if self.xid_condition:
            parts.append(self.xid_condition)
        if self.filter is not None:
            parts.append(f"(\n{self.filter}\n)")
        return parts

    def select_rows(self) -> str:
        cols = [f"src.{quote_ident(c)}" for c in self.selected]
        cols += [f"src.{quote_ident(c)}::text" for c in self.order]
        cols.append(self.hash_sql)
        return "SELECT " + ", ".join(cols) + f" FROM {self.relation} AS src"

    def rows_query(
        self,
        *,
        after: Sequence[str] | None,
        upto: Sequence[str] | None = None,
        limit: int | None = None,
        hash_eq: int | None = None,
    ) -> tuple[str, list[Any]]:
        """The keyset statement for rows in ``(after, upto]`` and its bound values."""
        params = Params()
        where = self.conditions()
        if after is not None:
            where.append(f"({self.order_sql}) > ({', '.join(params.position(after, self.types))})")
        if upto is not None:
            where.append(f"({self.order_sql}) <= ({', '.join(params.position(upto, self.types))})")
        if hash_eq is not None:
            where.append(f"{self.hash_sql} = {params.add(hash_eq, 'int8')}")
        sql = self.select_rows()
        if where:
            sql += " WHERE " + " AND ".join(where)
        # Qualified names: a bare name in ORDER BY would pick the ::text output column of that name.
        sql += f" ORDER BY {self.order_sql}"
        if limit is not None:
            sql += f" LIMIT {params.add(limit, 'int8')}"
        return sql, params.values

    def floor_sql(self, params: Params, pos: Sequence[str]) -> str:
        """``pos``'s first order value minus the lookback, typed like the first order column."""
        first = params.add(pos[0], f"text::{self.types[0]}")
        if self.lookback_kind == "temporal":
            return f"({first} - make_interval(secs => {params.add(self.lookback, 'float8')}))"
        amount = str(int(self.lookback)) if self.lookback.is_integer() else repr(self.lookback)
        return f"({first} - {params.add(amount, 'text::' + self.types[0])})"

    def window_check_query(
        self, lo: Sequence[str], his: Sequence[Sequence[str]], wanted: Sequence[bool], pos: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """One statement checking window segments ``(lo, his[0]], (his[0], his[1]], ...``.

        Returns, per segment in order, ``i``, ``expired`` (its ``hi`` is ``lookback`` or more behind
        ``pos``) and the count and sum of row hashes in the table — aggregated only for the segments
        ``wanted`` and for those that expire (the server skips the others: a one-time filter). The
        segments arrive as arrays, so the text is the same whatever their number and the statement is
        prepared once; each aggregated segment is an index range scan.
        """
        params = Params()
        lows = [list(lo), *[list(h) for h in his[:-1]]]
        index = params.add(list(range(len(his))), "int4[]")
        flags = params.add(list(wanted), "bool[]")
        lo_arrays = [params.add([p[j] for p in lows], "text[]") for j in range(len(self.order))]
        hi_arrays = [params.add([list(h)[j] for h in his], "text[]") for j in range(len(self.order))]
        floor = self.floor_sql(params, pos)
        names = [f"l{j}" for j in range(len(self.order))] + [f"h{j}" for j in range(len(self.order))]
        lower = ", ".join(f"seg.l{j}::{t}" for j, t in enumerate(self.types))
        upper = ", ".join(f"seg.h{j}::{t}" for j, t in enumerate(self.types))
        expired = f"(seg.h0::{self.types[0]} <= {floor})"
        where = [
            f"(seg.wanted OR {expired})",
            *self.conditions(),
            f"({self.order_sql}) > ({lower})",
            f"({self.order_sql}) <= ({upper})",
        ]
        sql = (
            f"SELECT seg.i, {expired} AS expired, agg.n, agg.s "
            f"FROM unnest({index}, {flags}, {', '.join(lo_arrays + hi_arrays)}) "
            f"AS seg(i, wanted, {', '.join(names)}) "
            f"CROSS JOIN LATERAL (SELECT count(*)::int8 AS n, coalesce(sum({self.hash_sql}), 0) AS s "
            f"FROM {self.relation} AS src WHERE {' AND '.join(where)}) AS agg ORDER BY seg.i"
        )
        return sql, params.values

    def first_segment_query(self, hi: Sequence[str], wanted: bool, pos: Sequence[str]) -> tuple[str, list[Any]]:
        """The check of a first segment that has no lower bound (the window starts at the table's start).

        Aggregated only when ``wanted`` or expired, like :meth:`window_check_query` (a one-time filter).
        """
        params = Params()
        upper = params.position(hi, self.types)
        flag = params.add(wanted, "bool")
        floor = self.floor_sql(params, pos)
        expired = f"({upper[0]} <= {floor})"
        where = [f"({flag} OR {expired})", *self.conditions(), f"({self.order_sql}) <= ({', '.join(upper)})"]
        sql = (
            f"SELECT {expired} AS expired, count(*)::int8 AS n, coalesce(sum({self.hash_sql}), 0) AS s "
            f"FROM {self.relation} AS src WHERE {' AND '.join(where)}"
        )
        return sql, params.values

    def last_position_query(self, *, at_most_floor_of: Sequence[str] | None = None) -> tuple[str, list[Any]]:
        """The largest position (optionally with first order value ``lookback`` or more behind a position)."""
        params = Params()
        where = self.conditions()
        if at_most_floor_of is not None:
            where.append(f"src.{quote_ident(self.order[0])} <= {self.floor_sql(params, at_most_floor_of)}")
        desc = ", ".join(f"src.{quote_ident(c)} DESC" for c in self.order)
        sql = f"SELECT {self.position_texts()} FROM {self.relation} AS src"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + f" ORDER BY {desc} LIMIT 1", params.values

    def position_texts(self, alias: bool = False) -> str:
        return ", ".join(
            f"src.{quote_ident(c)}::text" + (f" AS p{i}" if alias else "") for i, c in enumerate(self.order)
        )
