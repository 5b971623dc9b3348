"""Benchmark: S3 detection latency, from PutObject to the trigger's event — SQS notifications vs polling.

Scenario: one bucket, one watched prefix ``landing/`` holding ``--existing`` objects, on moto's
server in its own process (:mod:`benchmarks.s3_server`, which also counts ``ListObjectsV2``
requests). The bucket sends its ``s3:ObjectCreated:*`` events to an SQS queue on the same server.
Objects are put one at a time, each at a random moment of the poll cycle, and the time from just
before the ``PutObject`` request to the moment the trigger hands over the batch naming that key
is recorded.

* **ours, SQS** — ``S3ObjectsTrigger`` with ``sqs_queue_url`` (``reconcile_interval`` 60 s): one
  watch waiting batch after batch through the hub, as an asset's watcher does.
* **ours, polling** — the same watch without a queue, at ``poll_interval`` (default 30 s).
* **anchor** — Airflow's ``S3KeyTrigger`` (amazon provider) at its default ``poke_interval=5``,
  one trigger per key (it fires while a key exists, so each sample waits for a new key).

Latency is printed (p50/p95/max), never asserted, with the LIST requests the server counted per minute
(``S3KeyTrigger`` sends HeadObject requests instead, not counted there). ``--smoke`` runs a few samples at 1 s
intervals (what the smoke test runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from benchmarks.bench_s3_memory import client, conn_uri
from benchmarks.common import load_average, machine, table
from benchmarks.s3_server import CountingS3, counting_s3_server

BUCKET = "bench-latency-s3"
PREFIX = "landing/"
CONN_ID = "bench_latency_s3"
QUEUE = "bench-latency-s3-events"


def sqs(endpoint: str) -> Any:
    from aiobotocore.session import get_session

    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return get_session().create_client("sqs", endpoint_url=endpoint, region_name="us-east-1", **credentials)


async def setup(server: CountingS3, existing: int) -> str:
    """The bucket, its objects and the queue its events go to; the queue's URL."""
    async with client(server.url) as s3, sqs(server.url) as queue:
        await s3.create_bucket(Bucket=BUCKET)
        url = str((await queue.create_queue(QueueName=QUEUE))["QueueUrl"])
        arn = (await queue.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        await s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
        )
    if existing:
        server.preload(BUCKET, keys=[f"{PREFIX}existing-{n:05d}.json" for n in range(existing)])
    return url


class Putter:
    """Puts one object and records when the request was sent."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sent: dict[str, float] = {}

    async def put(self, s3: Any, key: str) -> None:
        self.sent[key] = time.perf_counter()
        await s3.put_object(Bucket=BUCKET, Key=key, Body=b"a,b\n")


async def ours(
    server: CountingS3, label: str, samples: int, gap: Callable[[], float], **watch: Any
) -> tuple[list[float], int]:
    """One watch, batch after batch; each sample puts one key and waits for the batch naming it."""
    from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger
    from airflow_trigger_kit.triggers.session import open_session

    trigger = S3ObjectsTrigger(
        bucket=BUCKET,
        prefixes=PREFIX,
        glob="*.csv",
        aws_conn_id=CONN_ID,
        namespace="bench",
        name=f"latency-{label}",
        mode="sensor",
        **watch,
    )
    putter = Putter(server.url)
    detected: dict[str, float] = {}
    latencies: list[float] = []
    async with open_session(trigger) as session, client(server.url) as s3:
        cursor = await session.baseline()

        async def consume() -> None:
            nonlocal cursor
            while True:
                batch = await session.next_batch(cursor)
                now = time.perf_counter()
                for item in batch.items:
                    detected.setdefault(str(item.data["key"]), now)
                cursor = batch.cursor

        consumer = asyncio.ensure_future(consume())
        try:
            await asyncio.sleep(2.0)  # the first polls (and the listener's connection) are behind us
            lists = server.lists()
            for n in range(samples):
                await asyncio.sleep(gap())
                key = f"{PREFIX}{label}-{n:04d}.csv"
                await putter.put(s3, key)
                if not await _until(lambda key=key: key in detected, timeout=600):  # type: ignore[misc]
                    break
                latencies.append(detected[key] - putter.sent[key])
            lists = server.lists() - lists
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    return latencies, lists


async def anchor(server: CountingS3, samples: int, interval: float) -> tuple[list[float], int]:
    """``S3KeyTrigger``: a new trigger per key, started at a random moment of its poke cycle."""
    from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

    putter = Putter(server.url)
    latencies: list[float] = []
    lists = server.lists()
    async with client(server.url) as s3:
        for n in range(samples):
            key = f"{PREFIX}anchor-{n:04d}.csv"
            run = S3KeyTrigger(bucket_name=BUCKET, bucket_key=key, aws_conn_id=CONN_ID, poke_interval=interval).run()
            event = asyncio.ensure_future(run.__anext__())
            try:
                await asyncio.sleep(0.5 + random.uniform(0, interval))  # started, then a random phase
                await putter.put(s3, key)
                await asyncio.wait_for(event, 600)
                latencies.append(time.perf_counter() - putter.sent[key])
            finally:
                event.cancel()
                await asyncio.gather(event, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await run.aclose()
    return latencies, server.lists() - lists


async def quietly(measuring: Awaitable[tuple[list[float], int]]) -> tuple[list[float], int]:
    """The amazon provider's S3Hook prints a line per async call to stdout: keep it out of the table."""
    with contextlib.redirect_stdout(io.StringIO()):
        return await measuring


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def run(args: argparse.Namespace, server: CountingS3) -> list[list[Any]]:
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn_uri(server.url)
    queue_url = await setup(server, args.existing)
    variants: list[tuple[str, Callable[[], Awaitable[tuple[list[float], int]]], int]] = [
        (
            "S3ObjectsTrigger, SQS notifications (reconcile_interval 60 s)",
            lambda: ours(server, "sqs", args.samples, lambda: random.uniform(0.05, 0.5), sqs_queue_url=queue_url),
            args.samples,
        ),
        (
            f"S3ObjectsTrigger, polling (poll_interval {args.poll_interval:g} s)",
            lambda: ours(
                server,
                "poll",
                args.poll_samples,
                lambda: random.uniform(0, args.poll_interval),
                poll_interval=args.poll_interval,
            ),
            args.poll_samples,
        ),
        (
            f"S3KeyTrigger (anchor, poke_interval {args.anchor_interval:g} s)",
            lambda: quietly(anchor(server, args.anchor_samples, args.anchor_interval)),
            args.anchor_samples,
        ),
    ]
    rows: list[list[Any]] = []
    for name, measure, wanted in variants:
        started = time.perf_counter()
        latencies, lists = await measure()
        rows.append(
            [
                name,
                f"{len(latencies)}/{wanted}",
                f"{statistics.median(latencies):.3f}" if latencies else "-",
                f"{quantile(latencies, 0.95):.3f}" if latencies else "-",
                f"{max(latencies):.3f}" if latencies else "-",
                f"{lists / max(time.perf_counter() - started, 1e-9) * 60:.1f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="objects put with SQS notifications on")
    parser.add_argument("--poll-samples", type=int, default=20, help="objects put for the polling watch")
    parser.add_argument("--poll-interval", type=float, default=30.0, help="poll_interval of the polling watch")
    parser.add_argument("--anchor-samples", type=int, default=20, help="objects put for S3KeyTrigger")
    parser.add_argument("--anchor-interval", type=float, default=5.0, help="S3KeyTrigger's poke_interval")
    parser.add_argument("--existing", type=int, default=1000, help="objects already under the prefix")
    parser.add_argument("--smoke", action="store_true", help="a few samples at 1 s intervals (the smoke test)")
    args, others = parser.parse_known_args(argv)
    if others:  # make bench passes one ARGS to every benchmark
        print(f"{parser.prog}: ignoring arguments meant for other benchmarks: {' '.join(others)}", file=sys.stderr)
    if args.smoke:
        args.samples, args.poll_samples, args.anchor_samples = 5, 3, 2
        args.poll_interval, args.anchor_interval, args.existing = 1.0, 1.0, 20
    logging.disable(logging.INFO)
    with counting_s3_server() as server:
        rows = asyncio.run(run(args, server))
    print(
        f"S3 detection latency, PutObject sent -> event, {args.existing:,} objects under the prefix "
        "(moto server in its own process; S3 -> SQS notifications on the same server)\n"
    )
    print(table(["watch", "detected", "p50 (s)", "p95 (s)", "max (s)", "LIST requests / min (server)"], rows))
    print(f"\nMachine: {machine()}; load average {load_average()} (1, 5, 15 min).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
