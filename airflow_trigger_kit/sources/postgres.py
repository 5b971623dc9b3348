"""Postgres incremental detection: new and changed rows, row counts and query results.

Pure detection over asyncpg; no Airflow import. The source receives asyncpg ``connect()`` keyword
arguments (or an async factory returning them) and never a connection id or a secret of its own:
:class:`~airflow_trigger_kit.triggers.postgres.PostgresRowsTrigger` resolves the Airflow connection
when it runs.

Design
======

* **Connections come from a** :class:`Connector`: a private connection per source (opened
  lazily by the first poll, closed by :meth:`aclose`), or the triggerer's shared pool. Every
  connection is pinned to what the detection relies on: ``TimeZone=UTC``, ``DateStyle=ISO``,
  ``extra_float_digits=1`` (the text form of a value, which the cursor stores, is then exact and
  stable), ``default_transaction_read_only=on`` and ``statement_timeout``. Every poll is one
  ``REPEATABLE READ READ ONLY`` transaction that starts with ``SET LOCAL statement_timeout``, so
  all queries of a poll see one snapshot and no user SQL (``filter``, ``query``) can write.
  The client side also cancels a query ``statement_timeout + 5`` seconds after sending it.
* **Safety.** Every identifier is quoted (:func:`quote_ident`) after it was checked against the
  catalog; every value is a bound parameter (cursor positions are bound as text and cast to the
  column's type: ``$1::text::timestamp with time zone``). ``filter`` and ``query`` are user SQL:
  they are lexed (a ``;`` outside literals and comments, unbalanced parentheses and ``$n``
  placeholders are rejected at DAG parse time), then prepared by the server (which refuses
  several statements in one prepared statement) before the first poll.
* **Three detections** (``detection=``):

  - ``watermark`` — keyset pagination over the *order columns* (``watermark_columns`` followed by
    the key columns not already in it, so the order is total):
    ``WHERE (cols) > (cursor) ORDER BY cols LIMIT max_items + 1``. A btree index on the order
    columns serves it as an index range scan. Reports new rows and rows whose watermark moved
    (an update that sets ``updated_at``). Rows with NULL in an order column are never reported.
  - ``row_count`` — ``count(*)`` (with ``filter``); fires when it differs from the cursor's.
    Misses updates and delete+insert pairs; costs a scan of the table (or of an index) per poll.
  - ``query_change`` — the user ``query``'s result fingerprint: sha256 over the column names and
    the multiset of rows (each row's canonical JSON hashed with sha256, the digests summed), so
    row order does not matter. The whole result is read on every poll; an event carries the first
    ``max_items`` rows.

Late commits (``watermark``)
============================

A watermark value (``now()``, ``clock_timestamp()``, ``nextval()``) is taken *before* its
transaction commits, so a row can become visible after rows with larger values were already
read. A plain keyset cursor then skips it forever. Two remedies, chosen per watch:

* ``xid_column`` — *exact*. The table carries an ``xid8`` column stamped by
  ``DEFAULT pg_current_xact_id()`` (and by a ``BEFORE UPDATE`` trigger to see updates); the order
  is ``(xid_column, key...)`` and a poll reads only rows with
  ``xid_column < pg_snapshot_xmin(pg_current_snapshot())``. Every transaction below the snapshot's
  xmin has ended, and every future transaction gets a larger id, so nothing can appear behind the
  cursor: no skips and no duplicates. Cost: rows are reported only after every transaction that
  was already running when they were written has ended (a long transaction anywhere in the
  cluster delays the watch; it never loses rows).
* ``lookback`` — *at least once*, the default (300 seconds for a timestamp or date first order
  column; 10,000 values for a numeric one). Each poll also re-checks the *window*: the rows whose
  first order column is within ``lookback`` of the cursor. The window is cut into segments whose
  row count and sum of 64-bit row hashes (``hashtextextended`` of the order values) the cursor
  keeps; a segment whose digest changed holds rows committed late (or deleted or moved). Recent
  segments are *exact* (they also keep 40 bits of each row's hash), so a late row there is found
  and reported alone. Older segments are *coarse*: a single new row is identified from the digest
  difference; otherwise the whole segment is re-reported (those repeats carry the dedup ids of
  their first delivery). Guarantee: a row whose value was taken less than ``lookback`` before it
  committed (values from the database clock or a sequence) is never skipped; duplicates come
  only from segments re-read within the window.

A third approach — advance only while ``pg_snapshot_xmin`` shows no older transaction in progress,
without an ``xid8`` column — is *not* sound and is not offered: a transaction gets its xid at its
first write, not when it takes ``now()`` or ``nextval()``, so "no older transaction in progress"
does not mean "no smaller value will still commit". ``lookback=0`` without ``xid_column`` is the
plain keyset cursor, for tables whose writers commit in watermark order (single writer).

Cursor layouts (JSON, version 1)
================================

* ``watermark``: ``{"v": 1, "d": "watermark", "cols": [order columns], "pos": [text values] | null}``
  plus, with ``lookback``: ``"lo"`` (the window's exclusive lower bound, a position or null) and
  ``"seg"``: ``[{"hi": position, "n": rows, "s": sum of hashes, "h": "<10 hex chars per row>"}, ...]``
  (exact) or ``{"hi", "n", "s", "p"}`` (coarse; ``p``: pending re-read, ``true`` or the position read up
  to). Bounded whatever the table's size or write rate: at most 1,024 exact row hashes and 48
  segments (about 15 KB with short order values), and never more than 32 KiB for the window.
* ``row_count``: ``{"v": 1, "d": "row_count", "count": n}``.
* ``query_change``: ``{"v": 1, "d": "query_change", "fp": sha256 hex, "rows": n}``.

Invariants: items come in order-column order (window re-reads first); the cursor returned with a
batch covers exactly the rows reported in it, and rows beyond ``max_items`` stay after it; polling
one cursor twice reports the same items with the same dedup ids unless the table changed. A crash
before the cursor is committed re-delivers the batch (same dedup ids); it never skips one.
Dedup ids: ``sha256("postgres", schema.table, key values, order values)`` for rows (so an update
that moves the watermark is a new item); the fingerprint for ``query_change``; the count
transition for ``row_count``.

Errors
======

:class:`PermanentSourceError`, naming the parameter and value: unknown table or column, a
missing privilege (schema USAGE or column SELECT), rejected credentials, a missing database,
``filter``/``query`` that the server rejects, a cursor made for other order columns.
:class:`TransientSourceError`, retried with backoff by the trigger (the connection is dropped and
re-opened): connection loss, a server restart or shutdown (``pg_terminate_backend`` included),
too many connections, statement timeouts, serialization failures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import logging
import math
import re
import ssl
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

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

log = logging.getLogger(__name__)

Detection = Literal["watermark", "row_count", "query_change"]
DETECTIONS: tuple[str, ...] = ("watermark", "row_count", "query_change")
CURSOR_VERSION = 1

DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_LOOKBACK_SECONDS = 300.0
"""Default ``lookback`` when the first order column is a timestamp or a date."""
DEFAULT_LOOKBACK_VALUES = 10_000
"""Default ``lookback`` when the first order column is numeric (a serial id, for example)."""

SEGMENT_ROWS = 64
"""Rows per exact window segment created from new rows."""
MAX_EXACT_ROWS = 1024
"""Most row hashes the cursor keeps; older exact segments become coarse beyond this."""
MAX_SEGMENTS = 48
"""Most window segments; the adjacent coarse pair with the fewest rows is merged beyond this."""
BASELINE_COARSE_SEGMENTS = 16
"""Coarse segments a baseline cuts the part of the window beyond the exact rows into."""
HASH_HEX = 10
"""Hex characters kept per row hash in exact segments (40 bits)."""
YIELD_EVERY = 500
"""Rows converted between two turns given back to the event loop."""
MAX_WINDOW_BYTES = 32 * 1024
"""Most bytes the window may take in the cursor (ProcessState values are limited to 64 KiB by default)."""

TEMPORAL_TYPES = frozenset({"timestamp with time zone", "timestamp without time zone", "date"})
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
NUMERIC_TYPES = INTEGER_TYPES | {"numeric", "real", "double precision"}
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "default_transaction_read_only": "on",
}

ConnectKwargs = dict[str, Any] | Callable[[], Awaitable[dict[str, Any]]]

# --------------------------------------------------------------------------------------------------
# Identifiers and user SQL (pure; used at DAG parse time)
# --------------------------------------------------------------------------------------------------
_PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"`` doubled), safe for any characters but NUL."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"an SQL identifier must be a non-empty string without NUL characters, got {name!r}")
    return '"' + name.replace('"', '""') + '"'


def parse_table(value: str | Sequence[str]) -> tuple[str, str]:
    """``(schema, table)`` from ``"schema.table"``, ``"table"`` (schema ``public``) or a pair.

    The string form follows SQL: unquoted names fold to lower case and must be plain identifiers;
    double-quoted parts (``public."Order Lines"``) keep their case and may hold any character. The
    pair form names the schema and table exactly as stored. Anything else (a ``;``, a space, a
    parenthesis outside quotes) is rejected here, long before any SQL is built.
    """
    if isinstance(value, str):
        parts = _split_qualified_name(value)
    elif isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(isinstance(p, str) for p in value):
        parts = [str(p) for p in value]
        for p in parts:
            if not p or "\x00" in p:
                raise ValueError(f"table parts must be non-empty strings without NUL characters, got {list(value)!r}")
    else:
        raise ValueError(f"table must be 'schema.table', 'table' or a (schema, table) pair of strings, got {value!r}")
    if len(parts) == 1:
        return "public", parts[0]
    return parts[0], parts[1]


def _split_qualified_name(text: str) -> list[str]:
    parts: list[str] = []
    i, n = 0, len(text)
    if not text.strip():
        raise ValueError(f"table must name a table, got {text!r}")
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"table {text!r}: unterminated double quote")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            if not part or "\x00" in part:
                raise ValueError(f"table {text!r}: empty or invalid quoted name")
            parts.append(part)
        else:
            k = text.find(".", i)
            raw = text[i:] if k < 0 else text[i:k]
            if not _PLAIN_IDENT.match(raw):
                raise ValueError(
                    f"table {text!r}: {raw!r} is not a plain SQL identifier; double-quote names with other "
                    'characters (public."Order Lines") or pass a (schema, table) pair'
                )
            parts.append(raw.lower())
            i = n if k < 0 else k
        if i == n:
            break
        if text[i] != ".":
            raise ValueError(f"table {text!r}: expected '.' after a quoted name at position {i}")
        i += 1
        if i == n:
            raise ValueError(f"table {text!r}: ends with '.'")
    if len(parts) > 2:
        raise ValueError(f"table {text!r}: expected 'schema.table' or 'table', got {len(parts)} dotted parts")
    return parts


def column_list(param: str, value: str | Sequence[str] | None, *, allow_empty: bool = False) -> list[str] | None:
    """A list of exact column names (as ``\\d table`` shows them); a string names one column."""
    if value is None:
        return None
    if isinstance(value, str):
        if "," in value:
            raise ValueError(
                f"{param} names one column per list entry; got {value!r} — pass a list such as {value.split(',')!r}"
            )
        names = [value]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise ValueError(f"{param} must be a column name or a list of column names, got {value!r}")
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{param} must hold non-empty column names without NUL characters, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{param} lists a column twice: {names!r}")
    if not names and not allow_empty:
        raise ValueError(f"{param} must name at least one column, got []")
    return names


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")


def check_sql_fragment(param: str, text: str) -> None:
    """Reject ``text`` unless it is one statement or expression: lexes like PostgreSQL does.

    String literals (``'..'``, ``E'..'``, ``$tag$..$tag$``), quoted identifiers and comments
    (``--``, nested ``/* */``) are skipped; outside them a ``;``, a ``)`` without its ``(``,
    an unclosed ``(`` or a ``$1`` placeholder is an error naming ``param`` and the position. The
    server's prepare step checks the rest (syntax, one statement, the type of a filter).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{param} must be a non-empty SQL string, got {text!r}")
    if "\x00" in text:
        raise ValueError(f"{param} must not contain NUL characters")
    depth = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'" or (c in "eE" and i + 1 < n and text[i + 1] == "'" and not _ident_before(text, i)):
            escapes = c != "'"
            j = i + (2 if escapes else 1)
            while True:
                if j >= n:
                    raise ValueError(f"{param}: unterminated string literal starting at position {i}")
                if escapes and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif c == '"':
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"{param}: unterminated quoted identifier starting at position {i}")
                if k + 1 < n and text[k + 1] == '"':
                    j = k + 2
                    continue
                i = k + 1
                break
        elif c == "-" and text.startswith("--", i):
            k = text.find("\n", i)
            i = n if k < 0 else k + 1
        elif c == "/" and text.startswith("/*", i):
            level, j = 1, i + 2
            while level:
                if j >= n:
                    raise ValueError(f"{param}: unterminated /* comment starting at position {i}")
                if text.startswith("/*", j):
                    level, j = level + 1, j + 2
                elif text.startswith("*/", j):
                    level, j = level - 1, j + 2
                else:
                    j += 1
            i = j
        elif c == "$" and not _ident_before(text, i):
            if i + 1 < n and text[i + 1].isdigit():
                raise ValueError(
                    f"{param}: placeholders such as ${text[i + 1]} are not supported (position {i}); "
                    "write values as SQL literals"
                )
            m = _DOLLAR_TAG.match(text, i)
            if m is None:
                i += 1
                continue
            end = text.find(m.group(0), m.end())
            if end < 0:
                raise ValueError(f"{param}: unterminated dollar-quoted string {m.group(0)} at position {i}")
            i = end + len(m.group(0))
        elif _IDENT_CHAR.match(c):
            j = i + 1
            while j < n and _IDENT_CHAR.match(text[j]):
                j += 1
            i = j
        elif c == ";":
            raise ValueError(
                f"{param} must be a single SQL {'statement' if param == 'query' else 'expression'}: found ';' at "
                f"position {i} outside string literals and comments in {text[:200]!r}"
            )
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{param}: ')' at position {i} closes a parenthesis that {param} did not open")
            i += 1
        else:
            i += 1
    if depth:
        raise ValueError(f"{param}: {depth} unclosed '(' in {text[:200]!r}")


def _ident_before(text: str, i: int) -> bool:
    return i > 0 and bool(_IDENT_CHAR.match(text[i - 1]))


_QUERY_START = re.compile(r"\s*(?:(?:--[^\n]*\n?)|(?:/\*.*?\*/)|\s)*\(?\s*(\w+)", re.DOTALL)


def normalize_query(query: str) -> str:
    """The user query without surrounding whitespace and one trailing ``;``; checked like a fragment."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty SQL SELECT statement, got {query!r}")
    text = query.strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    check_sql_fragment("query", text)
    m = _QUERY_START.match(text)
    if m is None or m.group(1).lower() not in ("select", "with", "values", "table"):
        raise ValueError(f"query must be a SELECT (or WITH / VALUES / TABLE) statement, got {text[:200]!r}")
    return text


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
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
        return ".".join(p if _PLAIN_IDENT.match(p) and p == p.lower() else quote_ident(p) for p in self.table)


# --------------------------------------------------------------------------------------------------
# JSON-safe values
# --------------------------------------------------------------------------------------------------
_IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def to_json_safe(value: Any) -> JSON:
    """A JSON value for anything asyncpg returns.

    Timestamps, dates and times become ISO 8601 strings; ``Decimal`` and ``UUID`` strings (exact);
    ``bytea`` base64; intervals seconds; ranges ``{"lower", "upper", "lower_inc", "upper_inc",
    "empty"}``; composite values objects; arrays lists; non-finite floats ``"NaN"``/``"Infinity"``.
    ``json``/``jsonb`` arrive parsed (the connection decodes them).
    """
    cls = type(value)
    if value is None or cls is str or cls is int or cls is bool:
        return value
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _IP_TYPES):
        return str(value)
    if isinstance(value, asyncpg.Range):
        return {
            "lower": to_json_safe(value.lower),
            "upper": to_json_safe(value.upper),
            "lower_inc": value.lower_inc,
            "upper_inc": value.upper_inc,
            "empty": value.isempty,
        }
    if isinstance(value, asyncpg.Record):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    return str(value)


def canonical_json(value: JSON) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def result_fingerprint(columns: Sequence[str], row_digests_sum: int, rows: int) -> str:
    """sha256 over the column names and the multiset of row digests (order-insensitive)."""
    text = f"{canonical_json(list(columns))}\n{rows}\n{row_digests_sum % (1 << 256):064x}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_digest(values: Sequence[JSON]) -> int:
    return int.from_bytes(hashlib.sha256(canonical_json(list(values)).encode("utf-8")).digest(), "big")


# --------------------------------------------------------------------------------------------------
# Error classification
# --------------------------------------------------------------------------------------------------
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "40", "57P", "58", "55P03", "57014", "55006")
"""Connection (08), resources (53), serialization/deadlock (40), shutdown/restart (57P), I/O (58),
lock timeouts (55P03), statement timeouts (57014) and objects in use (55006)."""


_CLIENT_STATE_ERRORS: tuple[type[Exception], ...] = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
"""asyncpg's client-side errors: a lost connection when the connection is closed, else a bug."""


def classify_error(exc: BaseException, *, context: str, connection_closed: bool = False) -> Exception | None:
    """The source error for ``exc`` (``None``: not a database or network error — a bug, re-raise it).

    ``context`` names the watch and the parameter involved; it is put at the front of the message.
    """
    if isinstance(exc, (PermanentSourceError, TransientSourceError)):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentSourceError(f"{context}: TLS certificate verification failed: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = f"{context}: {type(exc).__name__} (SQLSTATE {state}): {exc}"
        if state == "57014":
            return TransientSourceError(f"{message} — a query ran longer than statement_timeout")
        if state.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return TransientSourceError(message)
        if state.startswith("28"):
            return PermanentSourceError(f"{message} — check the login and password of the connection")
        if state == "42501":
            return PermanentSourceError(f"{message} — grant the role SELECT on the table (and USAGE on its schema)")
        # Everything else — syntax and undefined objects (42), data (22), a write in a read-only
        # transaction (25006), a missing database (3D) — is a configuration retrying cannot fix.
        return PermanentSourceError(message)
    if isinstance(exc, _CLIENT_STATE_ERRORS):
        if connection_closed or isinstance(exc, asyncpg.ConnectionDoesNotExistError):
            return TransientSourceError(f"{context}: connection lost: {type(exc).__name__}: {exc}")
        return None
    if isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError, TimeoutError, EOFError)):
        return TransientSourceError(f"{context}: {type(exc).__name__}: {exc}")
    return None


def describe_target(kwargs: dict[str, Any]) -> str:
    """``user@host:port/database`` from connect kwargs — never the password."""
    user, host, port, database = kwargs.get("user"), kwargs.get("host"), kwargs.get("port"), kwargs.get("database")
    dsn = kwargs.get("dsn")
    if isinstance(dsn, str):
        with contextlib.suppress(ValueError):
            parts = urlsplit(dsn)
            user = user or parts.username
            host = host or parts.hostname
            port = port or parts.port
            database = database or (parts.path.lstrip("/") or None)
    return f"{user or '(default user)'}@{host or 'localhost'}:{port or 5432}/{database or '(default database)'}"


# --------------------------------------------------------------------------------------------------
# The window of the lookback strategy (pure)
# --------------------------------------------------------------------------------------------------
def _joined(values: Iterable[str]) -> str:
    """An unambiguous string for a list of texts (each one length-prefixed), for dedup ids."""
    return "|".join(f"{len(v)}:{v}" for v in values)


def short_hash(h: int) -> str:
    return format(h & ((1 << (4 * HASH_HEX)) - 1), f"0{HASH_HEX}x")


@dataclass
class Segment:
    """Rows of the window in ``(previous segment's hi, hi]`` as of the last poll.

    ``n``/``s`` are their count and the sum of their 64-bit hashes (exact integers). Exact segments (``h`` set)
    also keep :data:`HASH_HEX` hex characters of each hash; coarse ones may be pending a re-read
    (``p``: ``True`` for all of it, or the position up to which it was re-read).
    """

    hi: list[str]
    n: int
    s: int
    h: str | None = None
    p: bool | list[str] | None = None
    expired: bool = field(default=False, compare=False)

    @property
    def exact(self) -> bool:
        return self.h is not None

    def hashes(self) -> set[str]:
        h = self.h or ""
        return {h[i : i + HASH_HEX] for i in range(0, len(h), HASH_HEX)}

    def dump(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"hi": self.hi, "n": self.n, "s": self.s}
        if self.h is not None:
            out["h"] = self.h
        if self.p is not None:
            out["p"] = self.p
        return out

    @classmethod
    def load(cls, raw: Any) -> Segment:
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("hi"), list)
            or not isinstance(raw.get("n"), int)
            or not isinstance(raw.get("s"), int)
        ):
            raise ValueError(f"not a window segment: {str(raw)[:200]}")
        h = raw.get("h")
        p = raw.get("p")
        if h is not None and (not isinstance(h, str) or len(h) != HASH_HEX * raw["n"]):
            raise ValueError(f"exact segment with {raw['n']} rows has a hash string of the wrong length")
        if p is not None and p is not True and not isinstance(p, list):
            raise ValueError(f"bad pending marker {p!r}")
        return cls(hi=list(raw["hi"]), n=raw["n"], s=wrap64(raw["s"]), h=h, p=p)


def wrap64(value: int) -> int:
    """Reduce a sum of 64-bit hashes to a signed 64-bit value.

    Segment sums live in the cursor, which also travels in a deferred sensor's trigger kwargs;
    Airflow's serializer refuses integers outside 64 bits. Sums are compared and subtracted modulo
    2**64 on both sides (Python and the server's ``sum()``), so wrapping loses nothing: the
    difference of two wrapped sums that differ by one row is still that row's hash.
    """
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)


def append_rows(segments: list[Segment], rows: Sequence[tuple[list[str], int]]) -> None:
    """Add newly reported rows (ascending positions, 64-bit hashes) to the end of the window."""
    for pos, h in rows:
        last = segments[-1] if segments else None
        if last is None or not last.exact or last.p is not None or last.n >= SEGMENT_ROWS:
            segments.append(Segment(hi=list(pos), n=1, s=h, h=short_hash(h)))
        else:
            last.hi = list(pos)
            last.n += 1
            last.s = wrap64(last.s + h)
            last.h = (last.h or "") + short_hash(h)


def window_bytes(segments: Sequence[Segment]) -> int:
    """The JSON size of the window's segments in the cursor."""
    return len(json.dumps([s.dump() for s in segments], separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def compact_window(lo: list[str] | None, segments: list[Segment]) -> list[str] | None:
    """Drop expired segments, bound the exact hashes, the segment count and the bytes; return the new ``lo``.

    Never drops or loses a pending segment's obligation: pending segments stay until re-read, and a
    merge that involves one keeps the merged segment pending as a whole (more repeats, no skips).
    Long order values (wide text keys) make positions big: the window then keeps fewer exact rows
    and fewer segments so that it stays within :data:`MAX_WINDOW_BYTES`.
    """
    while segments and segments[0].expired and segments[0].p is None:
        lo = segments.pop(0).hi
    exact_rows = sum(s.n for s in segments if s.exact)
    for s in segments:
        if exact_rows <= MAX_EXACT_ROWS:
            break
        if s.exact:
            exact_rows -= s.n
            s.h = None
    while len(segments) > MAX_SEGMENTS:
        _merge_cheapest_pair(segments)
    while len(segments) > 1 and window_bytes(segments) > MAX_WINDOW_BYTES:
        oldest_exact = next((s for s in segments if s.exact), None)
        if oldest_exact is not None and oldest_exact is not segments[-1]:
            oldest_exact.h = None
        else:
            _merge_cheapest_pair(segments)
    return lo


def _merge_cheapest_pair(segments: list[Segment]) -> None:
    """Merge the adjacent pair that costs least: not pending, not exact, fewest rows."""

    def cost(i: int) -> tuple[int, int, int]:
        a, b = segments[i], segments[i + 1]
        return (int(a.p is not None or b.p is not None), int(a.exact or b.exact), a.n + b.n)

    i = min(range(len(segments) - 1), key=cost)
    a, b = segments[i], segments[i + 1]
    segments[i : i + 2] = [
        Segment(
            hi=b.hi,
            n=a.n + b.n,
            s=wrap64(a.s + b.s),
            h=(a.h or "") + (b.h or "") if a.exact and b.exact else None,
            p=True if (a.p is not None or b.p is not None) else None,
            expired=a.expired and b.expired,
        )
    ]


# --------------------------------------------------------------------------------------------------
# Catalog information
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# SQL building
# --------------------------------------------------------------------------------------------------
class _Params:
    """Bound parameters of one statement; values are always sent separately from the SQL text."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"

    def position(self, pos: Sequence[str], types: Sequence[str]) -> list[str]:
        return [self.add(v, f"text::{t}") for v, t in zip(pos, types, strict=True)]


@dataclass
class _Row:
    values: list[JSON]
    pos: list[str]
    hash: int


@dataclass
class _Plan:
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
        params = _Params()
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

    def floor_sql(self, params: _Params, pos: Sequence[str]) -> str:
        """``pos``'s first order value minus the lookback, typed like the first order column."""
        first = params.add(pos[0], f"text::{self.types[0]}")
        if self.lookback_kind == "temporal":
            return f"({first} - make_interval(secs => {params.add(self.lookback, 'float8')}))"
        amount = str(int(self.lookback)) if self.lookback.is_integer() else repr(self.lookback)
        return f"({first} - {params.add(amount, 'text::' + self.types[0])})"


async def _closes_soon(conn: asyncpg.Connection, wait: float = 0.2) -> bool:
    """Whether ``conn`` turns out to be closed within ``wait`` seconds.

    A backend terminated between two statements sends its FATAL message and then closes the socket.
    asyncpg may read the message first: the next statement then fails with "another operation is
    in progress" while the connection does not look closed yet. Waiting briefly for asyncpg to see
    the end of the socket tells a lost connection from a genuine misuse (a bug).
    """
    if conn.is_closed():
        return True
    closed = asyncio.Event()

    def on_close(_: object) -> None:
        closed.set()

    conn.add_termination_listener(on_close)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closed.wait(), wait)
    finally:
        conn.remove_termination_listener(on_close)
    return bool(conn.is_closed())


def _position_and_hash(record: asyncpg.Record) -> tuple[list[str], int]:
    values = list(record.values())
    return [str(v) for v in values[:-1]], int(values[-1])


# --------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------
class Connector(ABC):
    """Where a :class:`PostgresSource` gets its connections: a private one, or a shared pool.

    ``connection()`` yields a connection pinned to :data:`SESSION_SETTINGS` (see
    :func:`session_connect_kwargs` and :func:`init_connection`) and takes it back afterwards. A
    caller that must not see a connection again (lost, or cancelled mid-transaction) terminates it
    before giving it back; a connector never hands out a closed connection.
    """

    @property
    @abstractmethod
    def target(self) -> str:
        """``user@host:port/database`` of the server (never a password); ``"postgres"`` until known."""

    @abstractmethod
    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A ready connection for one transaction."""

    async def aclose(self) -> None:  # noqa: B027 - a shared pool is closed by its owner
        """Release what this connector owns."""


def session_connect_kwargs(kwargs: dict[str, Any], statement_timeout: float) -> dict[str, Any]:
    """asyncpg connect kwargs pinned to what detection relies on (see the module docstring).

    The session's ``statement_timeout`` is a default only: every poll sets its own with ``SET LOCAL``,
    so watches with different timeouts can share connections.
    """
    out = dict(kwargs)
    settings = dict(out.pop("server_settings", None) or {})
    settings.update(SESSION_SETTINGS)
    settings["statement_timeout"] = str(max(1, int(statement_timeout * 1000)))
    out["server_settings"] = settings
    out.setdefault("timeout", min(60.0, max(10.0, statement_timeout)))
    return out


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: JSON columns decode to Python values."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def resolve_connect_kwargs(connect_kwargs: ConnectKwargs) -> dict[str, Any]:
    """The connect kwargs themselves, calling the factory when one was given."""
    return dict(await connect_kwargs() if callable(connect_kwargs) else connect_kwargs)


class PrivateConnector(Connector):
    """One connection, opened on first use and re-opened after a loss (a task on a worker, a test)."""

    def __init__(self, connect_kwargs: ConnectKwargs, statement_timeout: float) -> None:
        self._connect_kwargs = connect_kwargs
        self._statement_timeout = statement_timeout
        self._conn: asyncpg.Connection | None = None
        self._target = "postgres"

    @property
    def target(self) -> str:
        return self._target

    async def _open(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        kwargs = await resolve_connect_kwargs(self._connect_kwargs)
        self._target = describe_target(kwargs)
        conn = await asyncpg.connect(**session_connect_kwargs(kwargs, self._statement_timeout))
        try:
            await init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        yield await self._open()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except Exception:
                conn.terminate()


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
        self._plan: _Plan | None = None
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
                            f"SET LOCAL statement_timeout = {self._timeout_ms}", timeout=self._command_timeout
                        )
                        if self._plan is None and self.config.detection != "query_change":
                            self._plan = await self._inspect(conn)
                        yield conn
                    except Exception:
                        if not conn.is_closed():
                            with contextlib.suppress(Exception):
                                await tx.rollback()
                        raise
                    except BaseException:
                        conn.terminate()  # cancelled mid-transaction: never reuse the connection
                        raise
                    else:
                        await tx.commit()
                except Exception as exc:
                    closed = conn.is_closed()
                    if not closed and isinstance(exc, _CLIENT_STATE_ERRORS):
                        closed = await _closes_soon(conn)
                    error = classify_error(exc, context=self._context(param), connection_closed=closed)
                    if error is None:
                        raise
                    if isinstance(error, TransientSourceError) and not conn.is_closed():
                        conn.terminate()
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

    # -- catalog inspection ---------------------------------------------------------------------------
    async def _inspect(self, conn: asyncpg.Connection) -> _Plan:
        cfg = self.config
        assert cfg.table is not None
        schema, name = cfg.table
        row = await conn.fetchrow(_TABLE_SQL, schema, name, timeout=self._command_timeout)
        if row is None:
            similar = await conn.fetch(_SIMILAR_TABLES_SQL, schema, name, timeout=self._command_timeout)
            hint = ""
            if similar:
                names = ", ".join(f"({r['nspname']!r}, {r['relname']!r})" for r in similar)
                hint = f"; names that differ only in case: {names} (unquoted names fold to lower case)"
            raise PermanentSourceError(
                f"table: {cfg.table_name} does not exist in database {self._target} "
                f"(schema {schema!r}, table {name!r}){hint}"
            )
        oid, nsp = int(row["oid"]), int(row["nsp"])
        columns = {
            r["attname"]: ColumnInfo(
                r["attname"], int(r["attnum"]), r["type_sql"], r["base_type"], bool(r["attnotnull"]), r["default_sql"]
            )
            for r in await conn.fetch(_COLUMNS_SQL, oid, timeout=self._command_timeout)
        }
        indexes = tuple(
            IndexInfo(bool(r["indisprimary"]), bool(r["indisunique"]), tuple(r["cols"]))
            for r in await conn.fetch(_INDEXES_SQL, oid, timeout=self._command_timeout)
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
                        self.describe(),
                        cfg.xid_column,
                    )
        used = list(dict.fromkeys([*selected, *order]))
        priv = await conn.fetchrow(
            _PRIVILEGES_SQL, oid, nsp, [columns[c].attnum for c in used], timeout=self._command_timeout
        )
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
            await self._check_prepared(conn, "filter", f"SELECT 1 FROM {relation} AS src WHERE (\n{cfg.filter}\n)")
        plan = _Plan(
            relation=relation,
            selected=selected,
            order=order,
            key=key,
            types=[columns[c].type_sql for c in order],
            filter=cfg.filter,
            nullable_order=[c for c in order if not columns[c].not_null],
        )
        if cfg.detection == "watermark":
            self._plan_late_commits(plan, info)
            if plan.nullable_order:
                log.warning(
                    "%s: order column(s) %s are nullable; rows where they are NULL are never reported",
                    self.describe(),
                    plan.nullable_order,
                )
            if not any(ix.columns[: len(order)] == tuple(order) for ix in indexes):
                log.warning(
                    "%s: no btree index on (%s): every poll scans the table; CREATE INDEX ON %s (%s)",
                    self.describe(),
                    ", ".join(order),
                    cfg.table_name,
                    ", ".join(quote_ident(c) for c in order),
                )
        return plan

    def _plan_late_commits(self, plan: _Plan, info: TableInfo) -> None:
        cfg = self.config
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

    async def _check_prepared(self, conn: asyncpg.Connection, param: str, sql: str) -> asyncpg.PreparedStatement:
        try:
            stmt = await conn.prepare(sql, timeout=self._command_timeout)
        except asyncpg.PostgresError as exc:
            state = str(getattr(exc, "sqlstate", "") or "")
            if state.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
                raise
            raise PermanentSourceError(
                f"{param}: the server rejected it: {type(exc).__name__}: {exc} ({self._context()})"
            ) from exc
        if stmt.get_parameters():
            raise PermanentSourceError(f"{param}: placeholders ($1, ...) are not supported; write literal values")
        return stmt

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

    def _check_watermark_cursor(self, cursor: dict[str, Any], plan: _Plan) -> None:
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
            return await self._watermark_baseline(conn, plan)

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
            if current is None:
                current = self._empty_watermark_cursor(plan)
            self._check_watermark_cursor(current, plan)
            return await self._poll_watermark(conn, plan, current, max_items)

    # -- row_count ------------------------------------------------------------------------------------
    async def _count(self, conn: asyncpg.Connection, plan: _Plan) -> int:
        where = plan.conditions()
        sql = f"SELECT count(*) FROM {plan.relation} AS src" + (" WHERE " + " AND ".join(where) if where else "")
        return int(await conn.fetchval(sql, timeout=self._command_timeout))

    async def _poll_count(self, conn: asyncpg.Connection, plan: _Plan, cursor: dict[str, Any] | None) -> Batch:
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
        stmt = await self._check_prepared(conn, "query", self.config.query)
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

    # -- watermark: building blocks -------------------------------------------------------------------
    def _empty_watermark_cursor(self, plan: _Plan) -> dict[str, Any]:
        cursor: dict[str, Any] = {"v": CURSOR_VERSION, "d": "watermark", "cols": plan.order, "pos": None}
        if plan.lookback_kind is not None:
            cursor["lo"] = None
            cursor["seg"] = []
        return cursor

    def _record_row(self, plan: _Plan, record: asyncpg.Record) -> _Row:
        values = list(record.values())
        nsel, nord = len(plan.selected), len(plan.order)
        return _Row(
            values=[to_json_safe(v) for v in values[:nsel]],
            pos=[str(v) for v in values[nsel : nsel + nord]],
            hash=int(values[nsel + nord]),
        )

    def _item(self, plan: _Plan, row: _Row, *, late: bool = False) -> Item:
        order_values = dict(zip(plan.order, row.pos, strict=True))
        key_values = {k: order_values[k] for k in plan.key}
        data: dict[str, JSON] = {
            "kind": "row",
            "table": self._table_name,
            "row": dict(zip(plan.selected, row.values, strict=True)),
            "key": key_values,
            "watermark": order_values,
        }
        if late:
            data["late"] = True
        dedup = stable_id("postgres", self._table_name, _joined(key_values.values()), _joined(row.pos))
        return Item(dedup, data)

    async def _items(self, plan: _Plan, rows: Sequence[_Row], *, late: bool = False) -> list[Item]:
        """Items for ``rows``, giving the event loop a turn every :data:`YIELD_EVERY` rows."""
        items: list[Item] = []
        for start in range(0, len(rows), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)
            items.extend(self._item(plan, r, late=late) for r in rows[start : start + YIELD_EVERY])
        return items

    async def _fetch(
        self,
        conn: asyncpg.Connection,
        plan: _Plan,
        *,
        after: Sequence[str] | None,
        upto: Sequence[str] | None = None,
        limit: int | None = None,
        hash_eq: int | None = None,
    ) -> list[_Row]:
        """Rows in ``(after, upto]`` in order (keyset), optionally only those with one row hash."""
        sql, args = plan.rows_query(after=after, upto=upto, limit=limit, hash_eq=hash_eq)
        records = await conn.fetch(sql, *args, timeout=self._command_timeout)
        rows: list[_Row] = []
        for start in range(0, len(records), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)  # converting thousands of rows must not block the triggerer
            rows.extend(self._record_row(plan, r) for r in records[start : start + YIELD_EVERY])
        return rows

    async def explain(self, cursor: JSON | None = None, max_items: int = 500) -> list[str]:
        """``EXPLAIN`` of the keyset statement the next ``watermark`` poll from ``cursor`` runs.

        A diagnostic: with a btree index on the order columns the plan is an index (only) scan
        that stops after ``max_items + 1`` rows, whatever the table's size.
        """
        if self.config.detection != "watermark":
            raise ValueError(f"explain() is for detection='watermark', this watch uses {self.config.detection!r}")
        async with self._transaction() as conn:
            plan = self._plan
            assert plan is not None
            pos = None if cursor is None else self._check_cursor(cursor).get("pos")
            sql, args = plan.rows_query(after=pos, limit=max_items + 1)
            return [str(r[0]) for r in await conn.fetch("EXPLAIN " + sql, *args, timeout=self._command_timeout)]

    async def _last_position(
        self, conn: asyncpg.Connection, plan: _Plan, *, at_most: str | None = None, params: _Params | None = None
    ) -> list[str] | None:
        """The largest position (optionally with first order value <= ``at_most``, an SQL expression)."""
        params = params or _Params()
        where = plan.conditions()
        if at_most is not None:
            where.append(f"src.{quote_ident(plan.order[0])} <= {at_most}")
        desc = ", ".join(f"src.{quote_ident(c)} DESC" for c in plan.order)
        texts = ", ".join(f"src.{quote_ident(c)}::text" for c in plan.order)
        sql = f"SELECT {texts} FROM {plan.relation} AS src"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {desc} LIMIT 1"
        row = await conn.fetchrow(sql, *params.values, timeout=self._command_timeout)
        return None if row is None else [str(v) for v in row.values()]

    async def _digests(
        self, conn: asyncpg.Connection, plan: _Plan, lo: list[str] | None, his: Sequence[list[str]], pos: list[str]
    ) -> list[tuple[int, int, bool]]:
        """(count, sum of hashes, expired) of the rows in each segment, in one statement.

        A segment is expired when its upper bound's first order value is at or below
        ``pos - lookback``: no row in it can still be inside the window.
        """
        params = _Params()
        floor = plan.floor_sql(params, pos)
        branches = []
        lower = None if lo is None else params.position(lo, plan.types)
        for i, hi in enumerate(his):
            upper = params.position(hi, plan.types)
            where = plan.conditions()
            if lower is not None:
                where.append(f"({plan.order_sql}) > ({', '.join(lower)})")
            where.append(f"({plan.order_sql}) <= ({', '.join(upper)})")
            branches.append(
                f"SELECT {i} AS i, count(*)::int8 AS n, coalesce(sum({plan.hash_sql}), 0) AS s, "
                f"({upper[0]} <= {floor}) AS expired FROM {plan.relation} AS src WHERE " + " AND ".join(where)
            )
            lower = upper
        sql = "\nUNION ALL\n".join(branches) + "\nORDER BY i"
        rows = await conn.fetch(sql, *params.values, timeout=self._command_timeout)
        return [(int(r["n"]), wrap64(int(r["s"])), bool(r["expired"])) for r in rows]

    # -- watermark: baseline ---------------------------------------------------------------------------
    async def _watermark_baseline(self, conn: asyncpg.Connection, plan: _Plan) -> dict[str, Any]:
        cursor = self._empty_watermark_cursor(plan)
        pos = await self._last_position(conn, plan)
        cursor["pos"] = pos
        if pos is None or plan.lookback_kind is None:
            return cursor
        # The window (pos - lookback, pos]: the newest rows exactly, the rest as coarse segments.
        params = _Params()
        floor = plan.floor_sql(params, pos)
        upto = params.position(pos, plan.types)
        where = [
            *plan.conditions(),
            f"src.{quote_ident(plan.order[0])} > {floor}",
            f"({plan.order_sql}) <= ({', '.join(upto)})",
        ]
        texts = ", ".join(f"src.{quote_ident(c)}::text" for c in plan.order)
        desc = ", ".join(f"src.{quote_ident(c)} DESC" for c in plan.order)
        sql = (
            f"SELECT {texts}, {plan.hash_sql} FROM {plan.relation} AS src WHERE {' AND '.join(where)} "
            f"ORDER BY {desc} LIMIT {MAX_EXACT_ROWS + 1}"
        )
        head = [_position_and_hash(r) for r in await conn.fetch(sql, *params.values, timeout=self._command_timeout)]
        lo_params = _Params()
        lo = await self._last_position(conn, plan, at_most=plan.floor_sql(lo_params, pos), params=lo_params)
        segments: list[Segment] = []
        exact = head[:MAX_EXACT_ROWS]
        if len(head) > MAX_EXACT_ROWS:
            edge = head[MAX_EXACT_ROWS][0]
            boundaries = await self._boundaries(conn, plan, lo, edge)
            digests = await self._digests(conn, plan, lo, boundaries, pos)
            segments = [Segment(hi=b, n=n, s=total) for b, (n, total, _) in zip(boundaries, digests, strict=True)]
        append_rows(segments, list(reversed(exact)))
        cursor["lo"] = compact_window(lo, segments)
        cursor["seg"] = [s.dump() for s in segments]
        return cursor

    async def _boundaries(
        self, conn: asyncpg.Connection, plan: _Plan, lo: list[str] | None, edge: list[str]
    ) -> list[list[str]]:
        """Positions cutting ``(lo, edge]`` into about :data:`BASELINE_COARSE_SEGMENTS` equal parts."""
        params = _Params()
        where = plan.conditions()
        if lo is not None:
            where.append(f"({plan.order_sql}) > ({', '.join(params.position(lo, plan.types))})")
        where.append(f"({plan.order_sql}) <= ({', '.join(params.position(edge, plan.types))})")
        texts = ", ".join(f"src.{quote_ident(c)}::text AS p{i}" for i, c in enumerate(plan.order))
        inner = (
            f"SELECT {texts}, row_number() OVER (ORDER BY {plan.order_sql}) AS rn, count(*) OVER () AS total "
            f"FROM {plan.relation} AS src WHERE {' AND '.join(where)}"
        )
        outs = ", ".join(f"p{i}" for i in range(len(plan.order)))
        step = f"greatest(1, ceil(total::numeric / {BASELINE_COARSE_SEGMENTS}))"
        sql = f"SELECT {outs} FROM ({inner}) q WHERE rn % {step} = 0 OR rn = total ORDER BY rn"
        found = [
            [str(v) for v in r.values()] for r in await conn.fetch(sql, *params.values, timeout=self._command_timeout)
        ]
        if not found or found[-1] != list(edge):
            found.append(list(edge))
        return found

    # -- watermark: poll ---------------------------------------------------------------------------------
    async def _poll_watermark(
        self, conn: asyncpg.Connection, plan: _Plan, cursor: dict[str, Any], max_items: int
    ) -> Batch:
        pos: list[str] | None = cursor.get("pos")
        items: list[Item] = []
        more = False
        budget = max_items
        windowed = plan.lookback_kind is not None
        lo: list[str] | None = None
        segments: list[Segment] = []
        if windowed:
            if "seg" in cursor:
                try:
                    segments = [Segment.load(s) for s in cursor["seg"]]
                except ValueError as exc:
                    raise PermanentSourceError(
                        f"the stored cursor's window is damaged ({exc}); reset it with `trigger-kit state reset`"
                    ) from None
                lo = cursor.get("lo")
            else:
                lo = pos  # the watch just switched lookback on: the window starts at the cursor
        if segments and pos is not None:
            budget, more = await self._reconcile_window(conn, plan, lo, segments, pos, items, budget)
        if budget > 0:
            rows = await self._fetch(conn, plan, after=pos, limit=budget + 1)
            taken = rows[:budget]
            more = more or len(rows) > budget
            items.extend(await self._items(plan, taken))
            if taken:
                pos = taken[-1].pos
                if windowed:
                    append_rows(segments, [(r.pos, r.hash) for r in taken])
        else:
            more = True
        new_cursor: dict[str, Any] = {"v": CURSOR_VERSION, "d": "watermark", "cols": plan.order, "pos": pos}
        stats: dict[str, JSON] = {}
        if windowed:
            lo = compact_window(lo, segments)
            if not segments:
                lo = pos  # nothing reported yet inside the window
            new_cursor["lo"] = lo
            new_cursor["seg"] = [s.dump() for s in segments]
            stats = {"window_segments": len(segments), "window_rows": sum(s.n for s in segments)}
        return Batch(items, new_cursor, more=more, stats=stats)

    async def _reconcile_window(
        self,
        conn: asyncpg.Connection,
        plan: _Plan,
        lo: list[str] | None,
        segments: list[Segment],
        pos: list[str],
        items: list[Item],
        budget: int,
    ) -> tuple[int, bool]:
        """Find rows that appeared inside the window since the last poll; report them first.

        Invariant kept (per segment): every row the segment's digest covers was reported, or the
        segment is pending a re-read. A digest that does not match therefore means rows appeared
        (late commits, moved watermarks) or disappeared.
        """
        more = False
        digests = await self._digests(conn, plan, lo, [seg.hi for seg in segments], pos)
        lower = lo
        for seg, (n, total, expired) in zip(segments, digests, strict=True):
            seg_lo, lower = lower, seg.hi
            seg.expired = expired
            if n == seg.n and total == seg.s:
                continue
            if seg.exact:
                if budget == 0:
                    seg.expired, more = False, True  # unchanged: it mismatches again next poll
                    continue
                rows = await self._fetch(conn, plan, after=seg_lo, upto=seg.hi)
                seen = seg.hashes()
                keep: list[_Row] = []
                for i, r in enumerate(rows):
                    if i and i % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    if short_hash(r.hash) in seen:
                        keep.append(r)
                    elif budget > 0:
                        items.append(self._item(plan, r, late=True))
                        keep.append(r)
                        budget -= 1
                    else:
                        seg.expired, more = False, True  # left out: it mismatches again next poll
                seg.n, seg.s = len(keep), wrap64(sum(r.hash for r in keep))
                seg.h = "".join(short_hash(r.hash) for r in keep)
            elif seg.p is None and n == seg.n + 1:
                # One row more, and the difference of the sums is a 64-bit hash: most likely that row.
                if budget == 0:
                    seg.expired, more = False, True
                    continue
                found = await self._fetch(conn, plan, after=seg_lo, upto=seg.hi, hash_eq=wrap64(total - seg.s))
                if len(found) == 1:
                    items.append(self._item(plan, found[0], late=True))
                    budget -= 1
                else:
                    seg.p = True
                seg.n, seg.s = n, total
            else:
                seg.n, seg.s, seg.p = n, total, True
        lower = lo
        for seg in segments:
            seg_lo, lower = lower, seg.hi
            if seg.p is None:
                continue
            if budget == 0:
                more = True
                break
            start = seg.p if isinstance(seg.p, list) else seg_lo
            rows = await self._fetch(conn, plan, after=start, upto=seg.hi, limit=budget + 1)
            taken = rows[:budget]
            items.extend(await self._items(plan, taken, late=True))
            budget -= len(taken)
            if len(rows) > len(taken):
                seg.p = taken[-1].pos
                more = True
            else:
                seg.p = None
        return budget, more
