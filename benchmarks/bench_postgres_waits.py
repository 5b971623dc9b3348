"""Benchmark (c): 1,000 Postgres waits against one server — connections used, CPU and queries per tick.

The server is a throwaway PostgreSQL with ``max_connections=100`` (PostgreSQL's default), holding 10
tables of 1,000 rows with an index on the watermark columns. Every wait is a deferred
``PostgresRowsSensor``'s trigger (sensor mode, from its committed cursor) in one event loop, as in
one triggerer, all naming one Airflow connection:

* **identical** — 100 waits per table with one cursor each (the sensors of one DAG);
* **distinct** — every wait with its own ``filter`` (1,000 different queries per tick).

Anchors, side by side in the same run:

* **one connection per wait** — what every wait did before the hub: each opens its own connection
  and polls once; the server refuses connections past its limit;
* **floor** — the same distinct queries (one keyset probe each) sent by raw asyncpg over one
  connection: the least a tick can cost.

Reported: the most connections the server showed for the watch's application name, CPU of this
process per tick, polls per tick. Nothing is asserted: this reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from benchmarks.common import cpu_seconds, emit, header, ratio, run_variants, table

MODULE = "benchmarks.bench_postgres_waits"
TABLES = 10
CONN_ID = "bench_orders"
APP = "airflow-trigger-kit-watch"


def make_trigger(table: int, *, filter: str | None, cursor: Any, interval: float) -> Any:
    from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger

    return PostgresRowsTrigger(
        namespace="bench",
        name=f"orders-{table}",
        table=f"orders_{table}",
        watermark_columns=["updated_at", "id"],
        filter=filter,
        postgres_conn_id=CONN_ID,
        mode="sensor",
        cursor=cursor,
        cursor_version=1 if cursor is not None else 0,
        poll_interval=interval,
    )


def filter_of(kind: str, n: int) -> str | None:
    return f"customer <> 'nobody-{n}'" if kind == "distinct" else None


async def baselines(kind: str, waits: int, interval: float) -> list[Any]:
    cursors = {}
    for n in range(waits):
        key = (n % TABLES, filter_of(kind, n))
        if key not in cursors:
            source = make_trigger(n % TABLES, filter=key[1], cursor=None, interval=interval).build_source()
            try:
                cursors[key] = await source.baseline()
            finally:
                await source.aclose()
    return [cursors[(n % TABLES, filter_of(kind, n))] for n in range(waits)]


async def variant_hub(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_trigger_kit.hub import get_hub

    cursors = await baselines(args.kind, args.waits, args.interval)
    hub = get_hub().channels
    tasks = []
    for n in range(args.waits):
        await asyncio.sleep(0)  # as the triggerer creates triggers
        t = make_trigger(n % TABLES, filter=filter_of(args.kind, n), cursor=cursors[n], interval=args.interval)
        tasks.append(asyncio.ensure_future(t.run().__anext__()))
    seen: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        # One connection kept open: connecting anew per sample would be counted as the hub's CPU.
        import asyncpg

        conn = await asyncpg.connect(args.dsn)
        try:
            while not stop.is_set():
                query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                seen.append(int(await conn.fetchval(query, APP)))
                await asyncio.sleep(0.25)
        finally:
            await conn.close()

    # Warm up (first polls, catalog inspections), then measure whole ticks.
    while hub.ticker.ticks < 3:  # noqa: ASYNC110 - polling the hub's own counter
        await asyncio.sleep(0.05)
    sampler = asyncio.ensure_future(sample())
    ticks0, polls0, c0 = hub.ticker.ticks, sum(c.polls for c in hub.channels.values()), cpu_seconds()
    await asyncio.sleep(args.interval * args.ticks)
    ticks = hub.ticker.ticks - ticks0
    cpu = cpu_seconds() - c0
    polls = sum(c.polls for c in hub.channels.values()) - polls0
    stop.set()
    await sampler
    fired = sum(t.done() and not t.cancelled() for t in tasks)
    failed = sum(1 for t in tasks if t.done() and t.exception() is not None)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "max_connections": max(seen),
        "cpu_per_tick_ms": cpu / max(1, ticks) * 1000,
        "polls_per_tick": polls / max(1, ticks),
        "waits_failed": failed,
        "waits_fired_early": fired - failed,
    }


async def variant_per_wait(args: argparse.Namespace) -> dict[str, Any]:
    """Before the hub: every wait opens its own connection (and keeps it while it waits)."""
    sources = [
        make_trigger(n % TABLES, filter=filter_of(args.kind, n), cursor=None, interval=1).build_source()
        for n in range(args.waits)
    ]
    c0 = cpu_seconds()
    results = await asyncio.gather(*(s.poll(None, 1) for s in sources), return_exceptions=True)
    cpu = cpu_seconds() - c0
    refused = [r for r in results if isinstance(r, BaseException)]
    held = len(results) - len(refused)  # (the server has no slot left to ask it: each poll holds one)
    await asyncio.gather(*(s.aclose() for s in sources), return_exceptions=True)
    return {
        "max_connections": held,
        "cpu_per_tick_ms": cpu * 1000,
        "polls_per_tick": len(results) - len(refused),
        "waits_failed": len(refused),
        "first_error": (f"{type(refused[0].__cause__ or refused[0]).__name__}" if refused else ""),
    }


async def variant_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The same distinct probes over one raw asyncpg connection: the least a tick can cost."""
    import asyncpg

    conn = await asyncpg.connect(args.dsn)
    try:
        queries = sorted({(n % TABLES, filter_of(args.kind, n) or "true") for n in range(args.waits)})
        for _ in range(2):  # warm the plans and caches
            for table_n, where in queries:
                await conn.fetch(
                    f"SELECT * FROM orders_{table_n} WHERE ({where}) AND (updated_at, id) > (now(), 0) "
                    "ORDER BY updated_at, id LIMIT 501"
                )
        c0 = cpu_seconds()
        for _ in range(args.ticks):
            for table_n, where in queries:
                await conn.fetch(
                    f"SELECT * FROM orders_{table_n} WHERE ({where}) AND (updated_at, id) > (now(), 0) "
                    "ORDER BY updated_at, id LIMIT 501"
                )
        cpu = cpu_seconds() - c0
    finally:
        await conn.close()
    return {"max_connections": 1, "cpu_per_tick_ms": cpu / args.ticks * 1000, "polls_per_tick": len(queries)}


async def setup(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for t in range(TABLES):
            await conn.execute(
                f"CREATE TABLE orders_{t} (id bigserial PRIMARY KEY, customer text, "
                f"updated_at timestamptz NOT NULL DEFAULT now() - interval '1 hour'); "
                f"CREATE INDEX ON orders_{t} (updated_at, id); "
                f"INSERT INTO orders_{t} (customer) SELECT 'c-' || n FROM generate_series(1, 1000) n; "
                f"ANALYZE orders_{t}"
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small size, for `make test`")
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="identical", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.waits, args.interval, args.ticks = 120, 0.5, 2

    if args.variant:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = args.dsn
        runner = {"hub": variant_hub, "per-wait": variant_per_wait, "floor": variant_floor}[args.variant]
        emit(asyncio.run(runner(args)))
        return

    from devtools.services import create_database, throwaway_postgres

    with throwaway_postgres(max_connections=100) as server:
        dsn = create_database(server, "bench_orders")
        asyncio.run(setup(dsn))
        common = ["--dsn", dsn, "--waits", str(args.waits), "--interval", str(args.interval)]
        common += ["--ticks", str(args.ticks)]
        results = {k: run_variants(MODULE, ["hub", "floor"], [*common, "--kind", k]) for k in ("identical", "distinct")}
        per_wait = run_variants(MODULE, ["per-wait"], [*common, "--kind", "distinct"])["per-wait"]
    pool = os.environ.get("AIRFLOW__TRIGGER_KIT__POSTGRES_POOL_SIZE", "4")
    print(
        header(
            f"(c) {args.waits:,} Postgres waits on one server (max_connections=100), {TABLES} tables",
            f"Poll interval {args.interval} s; pool size {pool} (`[trigger_kit] postgres_pool_size`). Each column "
            "ran in its own process. Anchor: one connection per wait, as before the hub (each wait polls once). "
            "Floor: the same distinct keyset probes over one raw asyncpg connection.",
        )
    )
    rows = []
    for kind, label in (("identical", "100 identical waits per table"), ("distinct", "every wait its own filter")):
        hub, floor = results[kind]["hub"], results[kind]["floor"]
        cpu_ratio = f"{hub['cpu_per_tick_ms'] / max(floor['cpu_per_tick_ms'], 1e-6):.2f}x"
        row = [label, hub["max_connections"], f"{hub['polls_per_tick']:.1f}", hub["cpu_per_tick_ms"]]
        rows.append([*row, floor["cpu_per_tick_ms"], cpu_ratio, hub["waits_failed"]])
    columns = ["waits", "connections (hub)", "queries per tick", "CPU per tick, hub (ms)", "floor (ms)", "hub / floor"]
    print(table([*columns, "failed"], rows))
    print()
    anchor = ["every wait its own filter", per_wait["max_connections"], per_wait["polls_per_tick"]]
    anchor += [per_wait["waits_failed"], per_wait.get("first_error", "")]
    print(
        table(["one connection per wait (anchor)", "connections held", "polls that ran", "refused", "error"], [anchor])
    )
    hub_connections = results["distinct"]["hub"]["max_connections"]
    print(
        f"\nconnections: hub {hub_connections} vs one per wait {per_wait['max_connections']} "
        f"({ratio(per_wait['max_connections'], hub_connections)} fewer), and no wait refused"
    )


if __name__ == "__main__":
    main()
