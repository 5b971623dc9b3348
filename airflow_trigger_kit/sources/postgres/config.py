"""Configuration of a Postgres watch: every parameter validated at DAG parse time (pure).

:class:`PostgresWatchConfig` is what triggers and sensors build from their kwargs and serialize
back (:meth:`PostgresWatchConfig.to_kwargs` round-trips exactly); bad input raises ``ValueError``
naming the parameter and the value before any connection is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from airflow_trigger_kit.sources.base import JSON
from airflow_trigger_kit.sources.postgres.identifiers import PLAIN_IDENT, column_list, parse_table, quote_ident
from airflow_trigger_kit.sources.postgres.user_sql import check_sql_fragment, normalize_query

Detection = Literal["watermark", "row_count", "query_change"]
DETECTIONS: tuple[str, ...] = ("watermark", "row_count", "query_change")

DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_LOOKBACK_SECONDS = 300.0
"""Default ``lookback`` when the first order column is a timestamp or a date."""
DEFAULT_LOOKBACK_VALUES = 10_000
"""Default ``lookback`` when the first order column is numeric (a serial id, for example)."""


@dataclass(frozen=True)
class PostgresWatchConfig:
    """Validated, normalized parameters of a Postgres watch (everything but the connection)."""

    detection: str = "watermark"
    table: tuple[str, str] | None = None
    columns: tuple[str, ...] | None = None
    watermark_columns: tuple[str, ...] | None = None
    key_columns: tuple[str, ...] | None = None
    filter: str | None = None
    query: str | None = None
    xid_column: str | None = None
    lookback: float | None = None
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT

    @classmethod
    def create(
        cls,
        *,
        detection: str = "watermark",
        table: str | Sequence[str] | None = None,
        columns: str | Sequence[str] | None = None,
        watermark_columns: str | Sequence[str] | None = None,
        key_columns: str | Sequence[str] | None = None,
        filter: str | None = None,
        query: str | None = None,
        xid_column: str | None = None,
        lookback: float | None = None,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> PostgresWatchConfig:
        if detection not in DETECTIONS:
            raise ValueError(f"detection must be one of {', '.join(DETECTIONS)}; got {detection!r}")
        if isinstance(statement_timeout, bool) or not isinstance(statement_timeout, (int, float)):
            raise ValueError(f"statement_timeout must be a number of seconds > 0, got {statement_timeout!r}")
        if not 0.001 <= statement_timeout <= 86_400:
            raise ValueError(f"statement_timeout must be between 0.001 and 86400 seconds, got {statement_timeout!r}")
        if lookback is not None and (
            isinstance(lookback, bool)
            or not isinstance(lookback, (int, float))
            or not math.isfinite(lookback)
            or lookback < 0
        ):
            raise ValueError(f"lookback must be a number >= 0 (or None for the default), got {lookback!r}")
        if filter is not None:
            check_sql_fragment("filter", filter)
        if detection == "query_change":
            if query is None:
                raise ValueError("detection='query_change' needs query, a SELECT statement whose result is watched")
            given = {
                "table": table,
                "columns": columns,
                "watermark_columns": watermark_columns,
                "key_columns": key_columns,
                "filter": filter,
                "xid_column": xid_column,
                "lookback": lookback,
            }
            extra = [k for k, v in given.items() if v is not None]
            if extra:
                raise ValueError(
                    f"detection='query_change' watches query only; remove {', '.join(extra)} (put conditions in query)"
                )
            return cls(detection=detection, query=normalize_query(query), statement_timeout=float(statement_timeout))
        if query is not None:
            raise ValueError(f"query is for detection='query_change'; detection={detection!r} watches table")
        if table is None:
            raise ValueError(f"detection={detection!r} needs table, such as 'public.orders'")
        schema, name = parse_table(table)
        cols = column_list("columns", columns)
        if detection == "row_count":
            given = {
                "columns": columns,
                "watermark_columns": watermark_columns,
                "key_columns": key_columns,
                "xid_column": xid_column,
                "lookback": lookback,
            }
            extra = [k for k, v in given.items() if v is not None]
            if extra:
                raise ValueError(f"detection='row_count' counts rows of table (with filter); remove {', '.join(extra)}")
            return cls(
                detection=detection,
                table=(schema, name),
                filter=filter,
                statement_timeout=float(statement_timeout),
            )
        wm = column_list("watermark_columns", watermark_columns)
        keys = column_list("key_columns", key_columns)
        if xid_column is not None:
            if not isinstance(xid_column, str) or not xid_column or "\x00" in xid_column:
                raise ValueError(f"xid_column must be the name of an xid8 column, got {xid_column!r}")
            if wm is None:
                wm = [xid_column]
            elif wm[0] != xid_column:
                raise ValueError(
                    f"xid_column={xid_column!r} must be the first of watermark_columns (the order the cursor "
                    f"follows), got watermark_columns={wm!r}"
                )
            if lookback:
                raise ValueError(
                    f"lookback={lookback!r} is not needed with xid_column (reads below the snapshot's xmin are "
                    "exact); leave lookback unset"
                )
            lookback = 0.0
        if wm is None:
            raise ValueError(
                "detection='watermark' needs watermark_columns (for example ['updated_at', 'id']) or xid_column"
            )
        return cls(
            detection=detection,
            table=(schema, name),
            columns=None if cols is None else tuple(cols),
            watermark_columns=tuple(wm),
            key_columns=None if keys is None else tuple(keys),
            filter=filter,
            xid_column=xid_column,
            lookback=None if lookback is None else float(lookback),
            statement_timeout=float(statement_timeout),
        )

    def to_kwargs(self) -> dict[str, JSON]:
        """JSON-safe kwargs that :meth:`create` turns back into this very config."""
        kwargs: dict[str, JSON] = {"detection": self.detection, "statement_timeout": self.statement_timeout}
        if self.table is not None:
            kwargs["table"] = list(self.table)
        for name in ("columns", "watermark_columns", "key_columns"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = list(value)
        for name in ("filter", "query", "xid_column"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.lookback is not None and self.xid_column is None:
            kwargs["lookback"] = self.lookback
        return kwargs

    @property
    def table_name(self) -> str:
        """``schema.table`` as SQL would spell it (quoted where needed), for messages and dedup ids."""
        if self.table is None:
            return "(query)"
        return ".".join(p if PLAIN_IDENT.match(p) and p == p.lower() else quote_ident(p) for p in self.table)
