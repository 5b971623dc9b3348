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
  column; 10,000 values for a numeric one). Polls also re-check the *window*: the rows whose
  first order column is within ``lookback`` of the cursor. The window is cut into segments whose
  row count and sum of 64-bit row hashes (``hashtextextended`` of the order values) the cursor
  keeps — added to as rows pass the cursor, never re-aggregated to build it; a segment whose
  digest in the table changed holds rows committed late (or deleted or moved). Recent segments
  (the newest 1,024 reported rows) are *exact* — they also keep 40 bits of each row's hash, so a
  late row there is found and reported alone — and are checked on every poll. Older segments are
  *coarse*: checked on a geometric schedule (about 1, 2, 4, 8 ... seconds after their rows were
  read, within a row budget per poll) and always in the poll that drops them from the window; a single
  new row is identified from the digest difference, otherwise the whole segment is re-reported
  (those repeats carry the dedup ids of their first delivery). So a poll costs what is new plus a
  bounded check, never a pass over the whole window (see
  :mod:`~airflow_trigger_kit.sources.postgres.window`). Guarantee: a row whose value was taken
  less than ``lookback`` before it committed (values from the database clock or a sequence) is
  never skipped — it is reported at the latest by the check that drops its segment, usually within
  about its commit delay; duplicates come only from coarse segments re-read within the window.

A third approach — advance only while ``pg_snapshot_xmin`` shows no older transaction in progress,
without an ``xid8`` column — is *not* sound and is not offered: a transaction gets its xid at its
first write, not when it takes ``now()`` or ``nextval()``, so "no older transaction in progress"
does not mean "no smaller value will still commit". ``lookback=0`` without ``xid_column`` is the
plain keyset cursor, for tables whose writers commit in watermark order (single writer).

Cursor layouts (JSON, version 1)
================================

* ``watermark``: ``{"v": 1, "d": "watermark", "cols": [order columns], "pos": [text values] | null}``
  plus, with ``lookback``: ``"lo"`` (the window's exclusive lower bound, a position or null) and
  ``"seg"``: ``[{"hi": position, "n": rows, "s": sum of hashes, "h": "<10 hex chars per row>", "b", "c"}, ...]``
  (exact) or ``{"hi", "n", "s", "p", "b", "c"}`` (coarse; ``p``: pending re-read, ``true`` or the position
  read up to; ``b``/``c``: when the segment's rows were read and when it was last checked, epoch
  seconds — absent in cursors of earlier releases, which makes those segments due at once).
  Bounded whatever the table's size or write rate: at most 1,024 exact row hashes and 48 segments
  (about 15 KB with short order values), and never more than 32 KiB for the window.
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
``filter``/``query`` that the server rejects or that would write, a cursor made for other order
columns.
:class:`TransientSourceError`, retried with backoff by the trigger (the connection is dropped and
re-opened): connection loss, a server restart or shutdown (``pg_terminate_backend`` included),
too many connections, statement timeouts, serialization failures.

Modules
=======

``identifiers`` (table and column names, quoting) and ``user_sql`` (lexing ``filter``/``query``)
run at DAG parse time, as does ``config`` (:class:`PostgresWatchConfig`). ``connections`` is the
:class:`Connector` seam; ``errors`` classifies failures; ``catalog`` inspects the table into a
``plan`` (the SQL of every statement); ``rows`` turns records into items; ``window`` is the pure
bookkeeping of the lookback window; ``watermark`` runs the watermark detection; ``source`` is
:class:`PostgresSource` with the transaction of a poll, ``row_count`` and ``query_change``.
"""

from __future__ import annotations

from airflow_trigger_kit.sources.postgres.catalog import (
    INTEGER_TYPES,
    NUMERIC_TYPES,
    TEMPORAL_TYPES,
    ColumnInfo,
    IndexInfo,
    TableInfo,
)
from airflow_trigger_kit.sources.postgres.config import (
    DEFAULT_LOOKBACK_SECONDS,
    DEFAULT_LOOKBACK_VALUES,
    DEFAULT_STATEMENT_TIMEOUT,
    DETECTIONS,
    Detection,
    PostgresWatchConfig,
)
from airflow_trigger_kit.sources.postgres.connections import (
    SESSION_SETTINGS,
    ConnectKwargs,
    Connector,
    PrivateConnector,
    init_connection,
    resolve_connect_kwargs,
    session_connect_kwargs,
)
from airflow_trigger_kit.sources.postgres.errors import classify_error, describe_target
from airflow_trigger_kit.sources.postgres.identifiers import (
    NOTIFY_CHANNEL_MAX_BYTES,
    column_list,
    parse_table,
    quote_ident,
    validate_notify_channel,
)
from airflow_trigger_kit.sources.postgres.json_values import (
    canonical_json,
    result_fingerprint,
    row_digest,
    to_json_safe,
)
from airflow_trigger_kit.sources.postgres.rows import joined as _joined
from airflow_trigger_kit.sources.postgres.source import PostgresSource
from airflow_trigger_kit.sources.postgres.user_sql import check_sql_fragment, normalize_query
from airflow_trigger_kit.sources.postgres.watermark import CURSOR_VERSION, YIELD_EVERY
from airflow_trigger_kit.sources.postgres.window import (
    BASELINE_COARSE_SEGMENTS,
    CHECK_ROWS_PER_POLL,
    CHECK_ROWS_PER_SECOND,
    COARSE_ROWS,
    FIRST_CHECK_SECONDS,
    HASH_HEX,
    MAX_EXACT_ROWS,
    MAX_SEGMENTS,
    MAX_WINDOW_BYTES,
    SEGMENT_ROWS,
    Segment,
    append_rows,
    compact_window,
    short_hash,
    window_bytes,
    wrap64,
)

__all__ = [
    "BASELINE_COARSE_SEGMENTS",
    "CHECK_ROWS_PER_POLL",
    "CHECK_ROWS_PER_SECOND",
    "COARSE_ROWS",
    "CURSOR_VERSION",
    "DEFAULT_LOOKBACK_SECONDS",
    "DEFAULT_LOOKBACK_VALUES",
    "DEFAULT_STATEMENT_TIMEOUT",
    "DETECTIONS",
    "FIRST_CHECK_SECONDS",
    "HASH_HEX",
    "INTEGER_TYPES",
    "MAX_EXACT_ROWS",
    "MAX_SEGMENTS",
    "MAX_WINDOW_BYTES",
    "NOTIFY_CHANNEL_MAX_BYTES",
    "NUMERIC_TYPES",
    "SEGMENT_ROWS",
    "SESSION_SETTINGS",
    "TEMPORAL_TYPES",
    "YIELD_EVERY",
    "ColumnInfo",
    "ConnectKwargs",
    "Connector",
    "Detection",
    "IndexInfo",
    "PostgresSource",
    "PostgresWatchConfig",
    "PrivateConnector",
    "Segment",
    "TableInfo",
    "_joined",
    "append_rows",
    "canonical_json",
    "check_sql_fragment",
    "classify_error",
    "column_list",
    "compact_window",
    "describe_target",
    "init_connection",
    "normalize_query",
    "parse_table",
    "quote_ident",
    "resolve_connect_kwargs",
    "result_fingerprint",
    "row_digest",
    "session_connect_kwargs",
    "short_hash",
    "to_json_safe",
    "validate_notify_channel",
    "window_bytes",
    "wrap64",
]
