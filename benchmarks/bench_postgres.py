"""Benchmark: the Postgres watch and the ProcessState store against raw asyncpg / sqlite3, in one run.

(d) The Postgres watch on a table of ``--rows`` rows (default 1,000,000) that then takes a burst of
``--burst`` rows (default 200,000) inserted in transactions of 10,000 — every burst row inside the
default 300 s ``lookback`` window. For the default ``lookback`` mode and for ``xid_column``:

* the cost of an empty poll before the burst, and right after the burst was drained (median and
  p95 of back-to-back polls, and of polls spaced ``SPACED_INTERVAL`` apart, which also pay the
  window checks that come due);
* how fast the backlog drains, at the source level (``source.poll`` in a loop, the cursor
  JSON-persisted between polls as ProcessState would store it): with pages of 500 rows (the default
  ``max_items``), with pages of 5,000 (the largest batch the triggers and sensors take while a
  backlog drains, ``backlog_max_items``), and both again with a ProcessState commit
  (compare-and-set on the SQLite backend) after each batch, as a watcher does;
* the anchor: raw asyncpg keyset pages of the same size over the same rows
  (``WHERE (cols) > (last) ORDER BY cols LIMIT n``, rows decoded, nothing else).

(g) ProcessState compare-and-set writes per second with 1 and with 20 concurrent writers (each
writer its own key, as 20 watches committing), on the SQLite backend and on the PostgreSQL backend,
against raw ``sqlite3`` / ``asyncpg`` running the same ``UPDATE ... WHERE version = ? RETURNING``
statement (sqlite3: one connection per writer thread; asyncpg: one connection per writer).

The benchmark starts its own throwaway PostgreSQL (``devtools.services``) and stops it. Results
are printed as tables with ratios; nothing is asserted (tests check behaviour, benchmarks report).
``--smoke`` runs everything at a tiny size in a few seconds (``make test`` does that once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))

import asyncpg

from airflow_trigger_kit.sources.postgres import PostgresSource, PostgresWatchConfig
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.state.backends.postgres import PostgresBackend
from airflow_trigger_kit.state.backends.sqlite import SQLiteBackend
from devtools.services import create_database, throwaway_postgres

SPACED_INTERVAL = 0.2
"""Seconds between two spaced empty polls."""
BURST_TX_ROWS = 10_000
CAS_VALUE = {"v": 1, "d": "watermark", "pos": ["2026-12-01 10:00:00.123456+00", "123456"], "pad": "x" * 2000}
"""A ProcessState value of about 2 KB (a Postgres cursor with a small window)."""

TABLE_DDL = """
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now(),
    xmin8 xid8 NOT NULL DEFAULT pg_current_xact_id()
)
"""


@dataclass(frozen=True)
class Size:
    rows: int
    burst: int
    empty_polls: int
    spaced_seconds: float
    drain_budget: float
    cas_seconds: float


FULL = Size(rows=1_000_000, burst=200_000, empty_polls=50, spaced_seconds=10.0, drain_budget=120.0, cas_seconds=3.0)
SMOKE = Size(rows=5_000, burst=2_000, empty_polls=5, spaced_seconds=0.5, drain_budget=10.0, cas_seconds=0.3)


def persisted(cursor: Any) -> Any:
    return json.loads(json.dumps(cursor, separators=(",", ":")))


def stats_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return statistics.median(ordered) * 1000, p95 * 1000


# -- (d) the Postgres watch ----------------------------------------------------------------------------
async def prepare_table(dsn: str, size: Size) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(TABLE_DDL)
        # Old rows, 150 ms apart, the newest an hour old: the 300 s window before the burst holds none.
        await conn.execute(
            "INSERT INTO orders (customer, amount, status, updated_at, xmin8) "
            "SELECT 'customer-' || (i % 997), (i % 100000) / 100.0, 'old', "
            "now() - interval '1 hour' - ($1::int - i) * interval '150 milliseconds', '3'::xid8 "
            "FROM generate_series(1, $1::int) AS i",
            size.rows,
        )
        await conn.execute("CREATE INDEX orders_updated_at_id ON orders (updated_at, id)")
        await conn.execute("CREATE INDEX orders_xmin8_id ON orders (xmin8, id)")
        await conn.execute("VACUUM ANALYZE orders")
    finally:
        await conn.close()


async def burst(dsn: str, rows: int) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        left = rows
        while left:
            n = min(left, BURST_TX_ROWS)
            await conn.execute(
                "INSERT INTO orders (customer, amount) SELECT 'burst-' || (g % 13), g / 100.0 "
                "FROM generate_series(1, $1::int) AS g",
                n,
            )
            left -= n
        await conn.execute("ANALYZE orders")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def empty_polls(source: PostgresSource, cursor: Any, count: int, spacing: float = 0.0) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        batch = await source.poll(cursor, 500)
        samples.append(time.perf_counter() - started)
        if batch.items:
            raise RuntimeError(f"an empty poll reported {len(batch.items)} item(s)")
        cursor = persisted(batch.cursor)
        if spacing:
            await asyncio.sleep(spacing)
    return samples


async def drain(
    source: PostgresSource,
    cursor: Any,
    page: int,
    budget: float,
    commit: Callable[[Any], Awaitable[None]] | None = None,
) -> tuple[int, float, Any, bool]:
    """Rows, seconds, final cursor and whether the drain finished within ``budget`` seconds."""
    rows = 0
    started = time.perf_counter()
    while True:
        batch = await source.poll(cursor, page)
        cursor = persisted(batch.cursor)
        if commit is not None and batch.items:
            await commit(cursor)
        rows += len(batch.items)
        if not batch.items and not batch.more:
            return rows, time.perf_counter() - started, cursor, True
        if time.perf_counter() - started > budget:
            return rows, time.perf_counter() - started, cursor, False


async def raw_keyset(dsn: str, order: list[str], after: list[Any], page: int, budget: float) -> tuple[int, float]:
    """Raw asyncpg keyset pages of ``page`` rows from ``after`` to the end: the floor."""
    cols = ", ".join(order)
    marks = ", ".join(f"${i + 1}" for i in range(len(order)))
    sql = f"SELECT * FROM orders WHERE ({cols}) > ({marks}) ORDER BY {cols} LIMIT {page}"
    conn = await asyncpg.connect(dsn)
    rows = 0
    started = time.perf_counter()
    try:
        last = after
        while time.perf_counter() - started < budget:
            records = await conn.fetch(sql, *last)
            if not records:
                break
            rows += len(records)
            last = [records[-1][c] for c in order]
    finally:
        await conn.close()
    return rows, time.perf_counter() - started


async def raw_start(dsn: str, order: list[str], text_pos: list[str]) -> list[Any]:
    """The typed values of a cursor position (which the cursor keeps as text)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"SELECT {', '.join(order)} FROM orders WHERE ({', '.join(f'{c}::text' for c in order)}) = "
            f"({', '.join(f'${i + 1}' for i in range(len(order)))})",
            *text_pos,
        )
    finally:
        await conn.close()
    assert row is not None
    return list(row.values())


async def bench_watch(dsn: str, size: Size, mode: str, state_path: str) -> dict[str, Any]:
    config = (
        PostgresWatchConfig.create(table="orders", watermark_columns=["updated_at"])
        if mode == "lookback"
        else PostgresWatchConfig.create(table="orders", xid_column="xmin8")
    )
    order = ["updated_at", "id"] if mode == "lookback" else ["xmin8", "id"]
    source = PostgresSource(config, {"dsn": dsn}, label="bench")
    out: dict[str, Any] = {}
    try:
        start = persisted(await source.baseline())
        before = await empty_polls(source, start, size.empty_polls)
        out["empty_before"] = stats_ms(before)
        out["burst_seconds"] = await burst(dsn, size.burst)
        drained_cursor = None
        for page in (500, 5000):
            rows, seconds, cursor, finished = await drain(source, start, page, size.drain_budget)
            out[f"drain_{page}"] = (rows, seconds, finished)
            if finished:
                drained_cursor = cursor
        state = ProcessState("bench", f"{mode}-commits", backend=SQLiteBackend(state_path))
        version = await state.aset("cursor", start, expected_version=None)

        async def commit(cursor: Any) -> None:
            nonlocal version
            version = await state.aset("cursor", cursor, expected_version=version)

        for page in (500, 5000):
            rows, seconds, cursor, finished = await drain(source, start, page, size.drain_budget, commit)
            out[f"drain_{page}_commit"] = (rows, seconds, finished)
        if drained_cursor is None:
            out["after_from_baseline"] = True
            drained_cursor = persisted(await source.baseline())
        after = await empty_polls(source, drained_cursor, size.empty_polls)
        out["empty_after"] = stats_ms(after)
        polls = max(2, int(size.spaced_seconds / SPACED_INTERVAL))
        spaced = await empty_polls(source, drained_cursor, polls, SPACED_INTERVAL)
        out["empty_after_spaced"] = stats_ms(spaced)
        if mode == "lookback":
            window = drained_cursor.get("seg", [])
            out["window"] = (len(window), sum(s["n"] for s in window), len(json.dumps(drained_cursor)))
        first = await raw_start(dsn, order, start["pos"])
        for page in (500, 5000):
            out[f"raw_{page}"] = await raw_keyset(dsn, order, first, page, size.drain_budget)
    finally:
        await source.aclose()
    return out


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else 0.0


def print_watch(size: Size, results: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n(d) Postgres watch: {size.rows:,} rows, then a burst of {size.burst:,} rows "
        f"({BURST_TX_ROWS:,} per transaction), all inside the 300 s lookback window\n"
    )
    print("| metric | lookback (default) | xid_column |")
    print("|---|---|---|")
    for key, label in [
        ("empty_before", "empty poll before the burst, back to back: median / p95 (ms)"),
        ("empty_after", "empty poll right after the burst, back to back: median / p95 (ms)"),
        ("empty_after_spaced", f"empty poll after the burst, every {SPACED_INTERVAL}s: median / p95 (ms)"),
    ]:
        cells = [f"{r[key][0]:.2f} / {r[key][1]:.2f}" for r in results.values()]
        print(f"| {label} | {' | '.join(cells)} |")
    lookback = results["lookback"]
    if "window" in lookback:
        segments, rows, cursor_bytes = lookback["window"]
        print(
            f"| window after the drain: segments / rows / cursor bytes | {segments} / {rows:,} / {cursor_bytes:,} | - |"
        )
    if any(r.get("after_from_baseline") for r in results.values()):
        print("(a drain did not finish within its time budget: 'after' polls start from a fresh baseline)")
    print("\nBacklog drain at the source level (rows/s), against raw asyncpg keyset pages of the same size:\n")
    print("| mode | pages of | raw asyncpg (anchor) | ours | ours / anchor |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        for page, key in (
            (500, "drain_500"),
            (5000, "drain_5000"),
            (500, "drain_500_commit"),
            (5000, "drain_5000_commit"),
        ):
            rows, seconds, finished = r[key]
            raw = rate(*r[f"raw_{page}"])
            ours = rate(rows, seconds)
            what = f"{page:,}" + (" + ProcessState commit per batch" if key.endswith("commit") else "")
            partial = "" if finished else f" (partial: {rows:,} rows in {seconds:.0f}s)"
            print(f"| {mode} | {what} | {raw:,.0f} | {ours:,.0f}{partial} | {ours / raw if raw else 0:.2f}x |")


# -- (g) ProcessState compare-and-set ---------------------------------------------------------------
async def cas_ours(state_for: Callable[[int], ProcessState], writers: int, seconds: float) -> float:
    value = CAS_VALUE
    states = [state_for(w) for w in range(writers)]
    versions = [await s.aset("cursor", value, expected_version=None) for s in states]
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            versions[w] = await states[w].aset("cursor", value, expected_version=versions[w])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return done / (time.perf_counter() - started)


SQLITE_DDL = """CREATE TABLE IF NOT EXISTS raw_state (namespace TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL,
value TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL, updated_by TEXT NOT NULL,
PRIMARY KEY (namespace, name, key))"""
SQLITE_CAS = (
    "UPDATE raw_state SET value = ?, version = version + 1, updated_at = ?, updated_by = ? "
    "WHERE namespace = ? AND name = ? AND key = ? AND version = ? RETURNING version"
)


def cas_raw_sqlite(path: str, writers: int, seconds: float) -> float:
    value = json.dumps(CAS_VALUE)
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute(SQLITE_DDL)
    for w in range(writers):
        setup.execute(
            "INSERT OR REPLACE INTO raw_state VALUES ('raw', ?, 'cursor', ?, 1, 'now', 'bench')", (f"w{w}", value)
        )
    setup.close()
    counts = [0] * writers
    deadline = time.perf_counter() + seconds

    def writer(w: int) -> None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        version = 1
        while time.perf_counter() < deadline:
            row = conn.execute(SQLITE_CAS, (value, "now", "bench", "raw", f"w{w}", "cursor", version)).fetchone()
            version = int(row[0])
            counts[w] += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


PG_CAS = (
    "UPDATE raw_state SET value = $4, version = version + 1, updated_at = now(), updated_by = $5 "
    "WHERE namespace = $1 AND name = $2 AND key = $3 AND version = $6 RETURNING version"
)


async def cas_raw_asyncpg(dsn: str, writers: int, seconds: float) -> float:
    value = json.dumps(CAS_VALUE)
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "CREATE TABLE IF NOT EXISTS raw_state (namespace TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, "
            "value TEXT NOT NULL, version BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "updated_by TEXT NOT NULL, PRIMARY KEY (namespace, name, key))"
        )
        await setup.execute("DELETE FROM raw_state")
        for w in range(writers):
            await setup.execute(
                "INSERT INTO raw_state (namespace, name, key, value, version, updated_by) "
                "VALUES ('raw', $1, 'cursor', $2, 1, 'bench')",
                f"w{w}",
                value,
            )
    finally:
        await setup.close()
    conns = [await asyncpg.connect(dsn) for _ in range(writers)]
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal done
        version = 1
        while time.perf_counter() < deadline:
            version = int(await conns[w].fetchval(PG_CAS, "raw", f"w{w}", "cursor", value, "bench", version))
            done += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(writer(w) for w in range(writers)))
    finally:
        for c in conns:
            await c.close()
    return done / (time.perf_counter() - started)


async def bench_cas(dsn: str, size: Size, tmp: str) -> list[tuple[str, int, float, float]]:
    results = []
    for writers in (1, 20):
        path = os.path.join(tmp, f"state-{writers}.db")
        backend = SQLiteBackend(path)
        ours = await cas_ours(lambda w, b=backend: ProcessState("bench", f"w{w}", backend=b), writers, size.cas_seconds)
        raw = await asyncio.to_thread(cas_raw_sqlite, os.path.join(tmp, f"raw-{writers}.db"), writers, size.cas_seconds)
        results.append(("SQLite", writers, raw, ours))

        async def connect_kwargs() -> dict[str, Any]:
            return {"dsn": dsn}

        pg_backend = PostgresBackend(connect_kwargs, table=f"bench_state_{writers}")
        try:
            ours = await cas_ours(
                lambda w, b=pg_backend: ProcessState("bench", f"w{w}", backend=b), writers, size.cas_seconds
            )
        finally:
            await pg_backend.aclose()
        raw = await cas_raw_asyncpg(dsn, writers, size.cas_seconds)
        results.append(("PostgreSQL", writers, raw, ours))
    return results


def print_cas(results: list[tuple[str, int, float, float]]) -> None:
    print("\n(g) ProcessState compare-and-set writes/s (a ~2 KB value; each writer its own key)\n")
    print("| backend | writers | raw sqlite3 / asyncpg, same statement (anchor) | ProcessState | ours / anchor |")
    print("|---|---|---|---|---|")
    for backend, writers, raw, ours in results:
        print(f"| {backend} | {writers} | {raw:,.0f} | {ours:,.0f} | {ours / raw if raw else 0:.2f}x |")


# -- main ----------------------------------------------------------------------------------------------------
async def run(dsn_server: Any, size: Size, tmp: str) -> None:
    dsn = create_database(dsn_server, "bench_watch")
    await prepare_table(dsn, size)
    results = {"lookback": await bench_watch(dsn, size, "lookback", os.path.join(tmp, "commits.db"))}
    # xid_column on a fresh copy of the table, so both modes drain the same burst on the same volume.
    dsn = create_database(dsn_server, "bench_watch_xid")
    await prepare_table(dsn, size)
    results["xid_column"] = await bench_watch(dsn, size, "xid", os.path.join(tmp, "commits-xid.db"))
    print_watch(size, results)
    cas_dsn = create_database(dsn_server, "bench_state")
    print_cas(await bench_cas(cas_dsn, size, tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny size that runs in seconds (for make test)")
    parser.add_argument("--rows", type=int, help="rows in the table before the burst")
    parser.add_argument("--burst", type=int, help="rows in the burst")
    args = parser.parse_args()
    size = SMOKE if args.smoke else FULL
    if args.rows is not None or args.burst is not None:
        size = Size(
            rows=args.rows or size.rows,
            burst=args.burst or size.burst,
            empty_polls=size.empty_polls,
            spaced_seconds=size.spaced_seconds,
            drain_budget=size.drain_budget,
            cas_seconds=size.cas_seconds,
        )
    load = os.getloadavg()
    print(f"bench_postgres: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="trigger-kit-bench-pg-") as tmp, throwaway_postgres() as server:
        asyncio.run(run(server, size, tmp))


if __name__ == "__main__":
    main()
