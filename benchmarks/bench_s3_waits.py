"""Benchmark (e): 1,000 S3 waits on one prefix — LIST requests per tick, counted by the server.

Scenario: one prefix holding ``--existing`` objects (``*.json``, one listing page); ``--waits``
deferred waits for a new ``*.csv`` object under it, all in one event loop, as in one triggerer.
The S3 server is moto in its own process (:mod:`benchmarks.s3_server`), which counts every
``ListObjectsV2`` request it serves, whoever sends it.

* **anchor** — Airflow's ``S3KeyTrigger`` (amazon provider) with ``bucket_key="landing/*.csv"``,
  ``wildcard_match=True``: what a deferrable ``S3KeySensor`` runs.
* **ours** — ``S3ObjectsTrigger`` in sensor mode (what a deferred ``S3ObjectsSensor`` runs) with
  ``glob="*.csv"``, each from the same committed cursor and with its own watch identity.

Both drive the real trigger classes' ``run()``. Whatever sharing the package does (or will do,
e.g. a per-process hub that lists each prefix once per tick for all its waits), the server-side
count shows it. Reported: LIST requests per tick (``poll_interval`` seconds), CPU seconds of this
process to start all waits and per tick, and how long until every wait fired once the object
landed. Nothing is asserted: benchmarks report, tests check behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Hundreds of triggers log every poll at INFO; the table is what this prints.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from benchmarks.bench_s3_memory import client, conn_uri
from benchmarks.s3_server import CountingS3, counting_s3_server

BUCKET = "bench-s3-waits"
PREFIX = "landing/"
CONN_ID = "bench_s3_waits"


def anchor_runs(waits: int, interval: float) -> list[AsyncIterator[Any]]:
    from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

    return [
        S3KeyTrigger(
            bucket_name=BUCKET,
            bucket_key=f"{PREFIX}*.csv",
            wildcard_match=True,
            aws_conn_id=CONN_ID,
            poke_interval=interval,
        ).run()
        for _ in range(waits)
    ]


async def our_runs(waits: int, interval: float) -> list[AsyncIterator[Any]]:
    from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

    def make(name: str, cursor: Any = None, version: int = 0) -> S3ObjectsTrigger:
        return S3ObjectsTrigger(
            bucket=BUCKET,
            prefixes=PREFIX,
            glob="*.csv",
            aws_conn_id=CONN_ID,
            namespace="bench",
            name=name,
            mode="sensor",
            cursor=cursor,
            cursor_version=version,
            poll_interval=interval,
        )

    source = make("baseline").build_source()
    try:
        cursor = await source.baseline()  # what each sensor read as its committed cursor
    finally:
        await source.aclose()
    return [make(f"wait-{i:04d}", cursor, 1).run() for i in range(waits)]


def polled_through_the_hub(waits: int) -> Callable[[], bool]:
    """Ours: every wait is registered with the hub and a tick has polled for all of them (shared)."""
    from airflow_trigger_kit.hub import get_hub

    channels = get_hub().channels
    seen: dict[str, int] = {}

    def started() -> bool:
        if len(channels.ticker) < waits:
            return False
        if "ticks" not in seen:
            seen["ticks"] = channels.ticker.ticks  # every wait is in: the next tick polls for all of them
            return False
        busy = any(c.running for c in channels.channels.values())
        return channels.ticker.ticks > seen["ticks"] and not busy

    return started


async def measure(
    name: str,
    server: CountingS3,
    runs: list[AsyncIterator[Any]],
    interval: float,
    ticks: int,
    land: Callable[[], Any],
    started: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    waits = len(runs)
    before_lists = server.lists()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.ensure_future(gen.__anext__()) for gen in runs]
    try:
        # Started: every wait has listed once — its own listing, or with the hub the one it shared —
        # (or a generous deadline passed).
        deadline = wall0 + max(120.0, waits * 0.5)

        def all_started() -> bool:
            return started() if started is not None else server.lists() - before_lists >= waits

        while not all_started() and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the count lives in the server process: poll it
        startup_cpu, startup_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await asyncio.sleep(interval)  # settle into the steady rhythm
        lists0, cpu1, wall1 = server.lists(), time.process_time(), time.perf_counter()
        await asyncio.sleep(interval * ticks)
        elapsed = time.perf_counter() - wall1
        lists = server.lists() - lists0
        steady_cpu = time.process_time() - cpu1
        landed = time.perf_counter()
        await land()
        done, _ = await asyncio.wait(tasks, timeout=max(120.0, interval * 6))
        fired = sum(1 for t in done if not t.cancelled() and t.exception() is None)
        latency = time.perf_counter() - landed
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for gen in runs:
            with contextlib.suppress(Exception):
                await gen.aclose()  # type: ignore[attr-defined]
    per_tick = elapsed / interval
    return {
        "name": name,
        "waits": waits,
        "startup_cpu": startup_cpu,
        "startup_wall": startup_wall,
        "lists_per_tick": lists / per_tick,
        "cpu_per_tick": steady_cpu / per_tick,
        "fired": fired,
        "all_fired_s": latency,
    }


def report(rows: list[dict[str, Any]], interval: float, ticks: int) -> str:
    anchor, ours = rows

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    def row(*cells: Any) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    lines = [
        f"{anchor['waits']:,} S3 waits on one prefix, poll interval {interval:g} s, {ticks} ticks measured "
        "(moto in its own process counts LIST requests)",
        "",
        row("metric", f"S3KeyTrigger x{anchor['waits']} (anchor)", f"S3ObjectsTrigger x{ours['waits']}",
            "anchor / ours"),
        row("---", "---", "---", "---"),
        row("LIST requests per tick (server)", f"{anchor['lists_per_tick']:.0f}", f"{ours['lists_per_tick']:.0f}",
            ratio(anchor["lists_per_tick"], ours["lists_per_tick"])),
        row("CPU s per tick (this process)", f"{anchor['cpu_per_tick']:.2f}", f"{ours['cpu_per_tick']:.2f}",
            ratio(anchor["cpu_per_tick"], ours["cpu_per_tick"])),
        row("CPU ms per LIST request", f"{anchor['cpu_per_tick'] / anchor['lists_per_tick'] * 1000:.1f}",
            f"{ours['cpu_per_tick'] / ours['lists_per_tick'] * 1000:.1f}",
            ratio(anchor["cpu_per_tick"] / anchor["lists_per_tick"], ours["cpu_per_tick"] / ours["lists_per_tick"])),
        row("CPU s until every wait was polled once", f"{anchor['startup_cpu']:.1f}", f"{ours['startup_cpu']:.1f}",
            ratio(anchor["startup_cpu"], ours["startup_cpu"])),
        row("wall s until every wait was polled once", f"{anchor['startup_wall']:.1f}", f"{ours['startup_wall']:.1f}",
            ratio(anchor["startup_wall"], ours["startup_wall"])),
        row("waits fired after the object landed", f"{anchor['fired']}/{anchor['waits']}",
            f"{ours['fired']}/{ours['waits']}", "-"),
        row("s until every wait fired", f"{anchor['all_fired_s']:.1f}", f"{ours['all_fired_s']:.1f}",
            ratio(anchor["all_fired_s"], ours["all_fired_s"])),
        "",
        f"One listing chain per prefix per tick would be 1 request per tick here (the prefix fits one page). "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
    ]  # fmt: skip
    return "\n".join(lines)


async def run(server: CountingS3, waits: int, existing: int, interval: float, ticks: int) -> list[dict[str, Any]]:
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn_uri(server.url)
    async with client(server.url) as s3:
        await s3.create_bucket(Bucket=BUCKET)
    server.preload(BUCKET, keys=[f"{PREFIX}existing-{n:04d}.json" for n in range(existing)])
    rows = []
    for name, make in (("anchor", None), ("ours", our_runs)):
        key = f"{PREFIX}new-{name}.csv"

        async def land(key: str = key) -> None:
            async with client(server.url) as s3:
                await s3.put_object(Bucket=BUCKET, Key=key, Body=b"a,b\n")

        runs = anchor_runs(waits, interval) if make is None else await make(waits, interval)
        started = None if make is None else polled_through_the_hub(waits)
        rows.append(await measure(name, server, runs, interval, ticks, land, started))
        async with client(server.url) as s3:  # the next side waits for its own new object
            await s3.delete_object(Bucket=BUCKET, Key=key)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--existing", type=int, default=20, help="objects already under the prefix")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval of every wait, seconds")
    parser.add_argument("--ticks", type=int, default=3, help="ticks measured in the steady state")
    parser.add_argument("--smoke", action="store_true", help="20 waits, 1 s interval, 2 ticks (what make test runs)")
    args, others = parser.parse_known_args(argv)
    if others:  # make bench passes one ARGS to every benchmark
        print(f"{parser.prog}: ignoring arguments meant for other benchmarks: {' '.join(others)}", file=sys.stderr)
    if args.smoke:
        args.waits, args.interval, args.ticks = 20, 1.0, 2
    logging.disable(logging.INFO)  # 1,000 triggers log every poll at INFO
    with counting_s3_server() as server:
        rows = asyncio.run(run(server, args.waits, args.existing, args.interval, args.ticks))
    print(report(rows, args.interval, args.ticks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
