"""Benchmark: Postgres detection latency from COMMIT to the watcher's event, notifications on vs off.

A throwaway PostgreSQL holds ``orders_N`` tables shaped like the e2e stack's ``public.orders``, each
with the statement-level notify trigger of ``docs/postgres.md`` ("Change notifications"). Every
variant runs in its own process; the writer shares the watch's event loop and takes its clock
reading right before it sends ``COMMIT``; the detection time is when the watcher's stream
(:class:`~airflow_trigger_kit.triggers.delivery.WatermarkProducer`, as the triggerer runs an
asset's ``AssetWatcher``) yields the event. Each event is acknowledged and its watermark committed
(SQLite ProcessState) before the next write.

* **notifications on** — one watcher with ``notify_channel`` (``poll_interval`` 30 s,
  ``reconcile_interval`` 60 s: the defaults), one write at a time, a pause of
  ``min_event_spacing`` (2 s, the default) plus 0-50 ms between an event and the next write (a
  watcher sends a change that follows its previous event sooner with the next event, by design);
* **notifications off** — ``poll_interval`` 30 s (the default), one watcher per table (so samples
  are independent), each table written once at a random moment of one poll interval;
* **anchor: SqlSensor-style poke** — what Airflow's ``SqlSensor`` does with its default
  ``poke_interval`` of 60 s: a ``SELECT`` every poke interval from a random phase (one poker per
  table, raw asyncpg), counted from COMMIT to the poke that sees the row. A lower bound for the
  real sensor, which adds task scheduling (and a worker slot per wait).

Nothing is asserted: this reports. ``--smoke`` shrinks intervals and sample counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from airflow_trigger_kit.settings import DEFAULT_MIN_EVENT_SPACING
from benchmarks.common import emit, header, run_variants, table

MODULE = "benchmarks.bench_latency_pg"
CONN_ID = "bench_latency_orders"
CHANNEL = "trigger_kit_orders"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def watcher(table: int, *, notify: bool, poll_interval: float, reconcile_interval: float) -> Any:
    from airflow_trigger_kit.triggers.delivery import WatermarkProducer
    from airflow_trigger_kit.triggers.postgres import PostgresRowsTrigger

    trigger = PostgresRowsTrigger(
        namespace="bench-latency",
        name=f"orders-{table}-{'on' if notify else 'off'}-{os.getpid()}",
        table=f"public.orders_{table}",
        watermark_columns=["updated_at", "id"],
        postgres_conn_id=CONN_ID,
        notify_channel=f"{CHANNEL}_{table}" if notify else None,
        mode="watcher",
        start_from="now",
        poll_interval=poll_interval,
        reconcile_interval=reconcile_interval,
    )
    return WatermarkProducer(trigger)


async def write(conn: Any, table: int, customer: str) -> float:
    """Insert one row in its own transaction; the clock reading taken right before ``COMMIT``."""
    await conn.execute("BEGIN")
    await conn.execute(f"INSERT INTO public.orders_{table} (customer, amount) VALUES ($1, 1)", customer)
    started = time.perf_counter()
    await conn.execute("COMMIT")
    return started


async def acknowledge(producer: Any, pending: Any) -> None:
    from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome

    await producer.advance([AdvanceItem(pending, AdvanceOutcome(acked=1, failed=0))])


async def variant_on(args: argparse.Namespace) -> dict[str, Any]:
    """One watcher with notify_channel; one write at a time."""
    import asyncpg

    from airflow_trigger_kit.hub import get_hub

    producer = watcher(0, notify=True, poll_interval=args.poll_interval, reconcile_interval=args.reconcile_interval)
    stream = producer.open_stream()
    writer = await asyncpg.connect(args.dsn)
    latencies: list[float] = []
    pending_event = asyncio.ensure_future(stream.__anext__())
    try:
        pools = get_hub().postgres_pools
        while not (CONN_ID in pools.listeners and pools.listeners[CONN_ID].live):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the reconnect hint's poll is over
        for n in range(args.samples):
            # After min_event_spacing, as a first change after a quiet spell: a change sooner than
            # that after the previous event goes out with the next event, by design.
            await asyncio.sleep(DEFAULT_MIN_EVENT_SPACING + random.uniform(0, 0.05))
            started = await write(writer, 0, f"on-{n}")
            _, pending = await asyncio.wait_for(pending_event, args.poll_interval * 4)
            latencies.append(time.perf_counter() - started)
            await acknowledge(producer, pending)
            pending_event = asyncio.ensure_future(stream.__anext__())
        listener = pools.listeners[CONN_ID]
        stats = {"hints": listener.hints, "connects": listener.connects, "failures": listener.failures}
    finally:
        pending_event.cancel()
        await asyncio.gather(pending_event, return_exceptions=True)
        await stream.aclose()
        await writer.close()
    return {"latencies": latencies, **stats}


async def variant_off(args: argparse.Namespace) -> dict[str, Any]:
    """One polling watcher per table; each table written once, at a random moment of one interval."""
    import asyncpg

    from airflow_trigger_kit.hub import get_hub

    producers = [
        watcher(t, notify=False, poll_interval=args.poll_interval, reconcile_interval=args.reconcile_interval)
        for t in range(args.tables)
    ]
    streams = [p.open_stream() for p in producers]
    detected: dict[int, float] = {}

    async def first_event(t: int) -> None:
        _, pending = await streams[t].__anext__()
        detected[t] = time.perf_counter()
        await acknowledge(producers[t], pending)

    waits = [asyncio.ensure_future(first_event(t)) for t in range(args.tables)]
    writer = await asyncpg.connect(args.dsn)
    lock = asyncio.Lock()
    committed: dict[int, float] = {}

    async def write_later(t: int, delay: float) -> None:
        await asyncio.sleep(delay)
        async with lock:
            committed[t] = await write(writer, t, f"off-{t}")

    try:
        hub = get_hub().channels
        while len(hub.channels) < args.tables or hub.ticker.ticks < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        writes = [
            asyncio.ensure_future(write_later(t, random.uniform(0, args.poll_interval))) for t in range(args.tables)
        ]
        await asyncio.wait_for(asyncio.gather(*writes, *waits), args.poll_interval * 4)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        for s in streams:
            await s.aclose()
        await writer.close()
    return {"latencies": [detected[t] - committed[t] for t in range(args.tables)]}


async def variant_poke(args: argparse.Namespace) -> dict[str, Any]:
    """SqlSensor-style: one poker per table, a SELECT every poke interval from a random phase."""
    import asyncpg

    conn = await asyncpg.connect(args.dsn)
    writer = await asyncpg.connect(args.dsn)
    lock = asyncio.Lock()
    committed: dict[int, float] = {}
    detected: dict[int, float] = {}

    async def poke(t: int) -> None:
        await asyncio.sleep(random.uniform(0, args.poke_interval))
        while True:
            async with lock:
                found = await conn.fetchval(f"SELECT count(*) FROM public.orders_{t} WHERE customer = $1", f"poke-{t}")
            if found:
                detected[t] = time.perf_counter()
                return
            await asyncio.sleep(args.poke_interval)

    async def write_later(t: int, delay: float) -> None:
        await asyncio.sleep(delay)
        async with lock:
            committed[t] = await write(writer, t, f"poke-{t}")

    try:
        pokers = [asyncio.ensure_future(poke(t)) for t in range(args.tables)]
        await asyncio.sleep(args.poke_interval)  # every poker is in its rhythm
        writes = [
            asyncio.ensure_future(write_later(t, random.uniform(0, args.poke_interval))) for t in range(args.tables)
        ]
        await asyncio.wait_for(asyncio.gather(*writes, *pokers), args.poke_interval * 4)
    finally:
        await conn.close()
        await writer.close()
    return {"latencies": [detected[t] - committed[t] for t in range(args.tables)]}


async def setup(dsn: str, tables: int) -> None:
    import asyncpg

    from devtools.feeders import ORDERS_DDL, ORDERS_NOTIFY_SQL

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(ORDERS_DDL + ORDERS_NOTIFY_SQL)
        for t in range(tables):
            await conn.execute(f"CREATE TABLE public.orders_{t} (LIKE public.orders INCLUDING ALL)")
            await conn.execute(
                ORDERS_NOTIFY_SQL.replace("public.orders", f"public.orders_{t}")
                .replace("orders_trigger_kit_notify", f"orders_{t}_trigger_kit_notify")
                .replace(f"'{CHANNEL}'", f"'{CHANNEL}_{t}'")
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small size, for `make test`")
    parser.add_argument("--samples", type=int, default=100, help="writes with notifications on")
    parser.add_argument("--tables", type=int, default=60, help="independent samples of each polling variant")
    parser.add_argument("--poll-interval", type=float, default=30.0)
    parser.add_argument("--reconcile-interval", type=float, default=60.0)
    parser.add_argument("--poke-interval", type=float, default=60.0)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.tables, args.poll_interval, args.reconcile_interval, args.poke_interval = 10, 5, 1, 2, 1

    if args.variant:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = args.dsn
        runner = {"on": variant_on, "off": variant_off, "poke": variant_poke}[args.variant]
        emit(asyncio.run(runner(args)))
        return

    from devtools.services import create_database, throwaway_postgres

    with throwaway_postgres() as server:
        dsn = create_database(server, "bench_latency")
        asyncio.run(setup(dsn, max(args.tables, 1)))
        common = ["--dsn", dsn, "--samples", str(args.samples), "--tables", str(args.tables)]
        common += ["--poll-interval", str(args.poll_interval), "--reconcile-interval", str(args.reconcile_interval)]
        common += ["--poke-interval", str(args.poke_interval)]
        results = run_variants(MODULE, ["on", "off", "poke"], common)
    print(
        header(
            "Postgres detection latency: COMMIT to the watcher's event",
            f"Each row ran in its own process against a throwaway PostgreSQL with the docs' statement-level notify "
            f"trigger on every table. poll_interval {args.poll_interval:g} s, reconcile_interval "
            f"{args.reconcile_interval:g} s; anchor: a SqlSensor-style SELECT every {args.poke_interval:g} s "
            "(raw asyncpg, no task scheduling: a lower bound for the real sensor).",
        )
    )
    rows = []
    labels = {
        "on": f"notifications on (notify_channel; reconcile_interval {args.reconcile_interval:g} s)",
        "off": f"notifications off (poll_interval {args.poll_interval:g} s)",
        "poke": f"anchor: SqlSensor-style poke every {args.poke_interval:g} s",
    }
    for variant in ("on", "off", "poke"):
        values = [v * 1000 for v in results[variant]["latencies"]]
        rows.append(
            [
                labels[variant],
                len(values),
                percentile(values, 50),
                percentile(values, 95),
                max(values) if values else float("nan"),
                statistics.fmean(values) if values else float("nan"),
            ]
        )
    print(table(["variant", "events", "p50 (ms)", "p95 (ms)", "max (ms)", "mean (ms)"], rows))
    on = results["on"]
    print()
    print(
        f"Notifications on: {on['hints']:,} hints (the notifications, plus one per connect) for "
        f"{len(on['latencies']):,} commits; "
        f"listener connects {on['connects']}, failures {on['failures']}."
    )


if __name__ == "__main__":
    main()
