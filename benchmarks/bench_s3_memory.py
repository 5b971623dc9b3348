"""Benchmark (f): S3 ``modified``/``deleted`` tracking over many random keys, against a plain listing.

Scenario: one prefix with ``--keys`` objects under random UUID keys (the worst case for the
snapshot's size: keys share nothing but the prefix), served by moto in its own process
(:mod:`benchmarks.s3_server`, which counts LIST requests on the server). The ProcessState is a
fresh SQLite file, as in a default deployment.

* **anchor** — the floor of any watch that must see deletions on S3: one plain ``ListObjectsV2``
  chain over the prefix through aiobotocore, keeping nothing.
* **ours** — ``S3Source`` with ``event_kinds="all"`` (the snapshot layout), through its real
  ProcessState-backed chunk store: the baseline, an idle poll, a poll after 100 changes (50
  overwrites, 30 deletions, 20 creations), and the idle poll after that batch was committed
  (which also collects the replaced chunks).

Reported: CPU seconds of this process per poll (the client side: botocore's parsing, our
comparison, SQLite calls; the server runs elsewhere), LIST requests counted by the server, the
cursor's size, what the state store holds (values, bytes, bytes per key, the largest value against
the 64 KiB limit), what one poll writes, and the size the same snapshot had as one inline cursor
value before chunks. Ratios are ours / anchor (CPU) and inline / ours (cursor). Nothing is
asserted: benchmarks report, tests check behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Hundreds of triggers log every poll at INFO; the table is what this prints.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from benchmarks.s3_server import CountingS3, counting_s3_server, random_keys

T = TypeVar("T")
BUCKET = "bench-s3-memory"
PREFIX = "data/"
CONN_ID = "bench_s3"
LIMIT = 65536


def conn_uri(endpoint: str) -> str:
    from urllib.parse import quote

    return f"aws://testing:testing@/?endpoint_url={quote(endpoint, safe='')}&region_name=us-east-1"


async def timed(fn: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """(result, CPU seconds of this process, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = await fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def client(endpoint: str) -> Any:
    from aiobotocore.session import get_session

    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)


async def plain_listing(s3: Any) -> int:
    """One ListObjectsV2 chain over the prefix, keeping nothing: the floor of any full-listing watch."""
    count = 0
    token: str | None = None
    while True:
        params: dict[str, Any] = {"Bucket": BUCKET, "Prefix": PREFIX, "MaxKeys": 1000}
        if token:
            params["ContinuationToken"] = token
        page = await s3.list_objects_v2(**params)
        count += len(page.get("Contents", ()))
        if not page.get("IsTruncated"):
            return count
        token = page["NextContinuationToken"]


async def mutate(endpoint: str, keys: list[str]) -> None:
    """50 overwrites, 30 deletions, 20 creations."""
    async with client(endpoint) as s3:
        for key in keys[:50]:
            await s3.put_object(Bucket=BUCKET, Key=key, Body=b"overwritten")
        for key in keys[50:80]:
            await s3.delete_object(Bucket=BUCKET, Key=key)
        for n in range(20):
            await s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}new-{n:02d}.json", Body=b"{}")


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


async def run(keys_count: int, server: CountingS3, state_dir: Path) -> dict[str, Any]:
    from airflow_trigger_kit.payload import CURSOR_KEY
    from airflow_trigger_kit.sources.s3 import S3Source, encode_snapshot, etag_hash
    from airflow_trigger_kit.sources.s3.snapshot_chunks import CHUNK_KEY_PREFIX
    from airflow_trigger_kit.state import ProcessState
    from airflow_trigger_kit.state.backends.sqlite import SQLiteBackend
    from airflow_trigger_kit.triggers.s3 import ProcessStateChunkStore, S3ObjectsTrigger

    endpoint = server.url
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn_uri(endpoint)
    async with client(endpoint) as s3:
        await s3.create_bucket(Bucket=BUCKET)
    started = time.perf_counter()
    keys = random_keys(PREFIX, keys_count, seed=7)
    server.preload(BUCKET, keys=keys)
    preload_s = time.perf_counter() - started

    results: dict[str, Any] = {"keys": keys_count, "preload_s": preload_s}

    # -- anchor: a plain listing chain, no memory (its client created beforehand, as ours is) ---------
    async with client(endpoint) as s3:
        for _attempt in range(2):  # the second run is the one reported (warm connection pool, warm server)
            before = server.lists()
            listed, cpu, wall = await timed(lambda: plain_listing(s3))
            results["anchor"] = {"cpu": cpu, "wall": wall, "lists": server.lists() - before, "listed": listed}

    # -- ours: the snapshot layout with its chunks in a SQLite ProcessState --------------------------
    backend = SQLiteBackend(str(state_dir / "state.db"))
    state = ProcessState("bench", "s3-memory", backend=backend, max_value_bytes=LIMIT)
    trigger = S3ObjectsTrigger(
        bucket=BUCKET, prefixes=PREFIX, event_kinds="all", namespace="bench", name="s3-memory", aws_conn_id=CONN_ID
    )
    source = trigger.build_source()
    assert isinstance(source, S3Source)
    source._chunk_store = lambda: ProcessStateChunkStore(state)

    async def stored() -> tuple[int, int, int]:
        refs = await state.alist_keys(CHUNK_KEY_PREFIX)
        values = await state.aget_many(refs)
        sizes = [json_size(v) for v in values.values()]
        return len(sizes), sum(sizes), max(sizes, default=0)

    async def step(name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        memory_before = dict(source.memory.stats)
        before = server.lists()
        value, cpu, wall = await timed(fn)
        stats = {k: source.memory.stats[k] - memory_before.get(k, 0) for k in source.memory.stats}
        results[name] = {"cpu": cpu, "wall": wall, "lists": server.lists() - before, **stats}
        return value

    try:
        cursor = await step("baseline", source.baseline)
        await state.aset(CURSOR_KEY, cursor, expected_version=0)
        results["cursor_bytes"] = json_size(cursor)
        results["values"], results["state_bytes"], results["largest_value"] = await stored()
        results["inline_cursor_bytes"] = json_size(
            {
                "v": 1,
                "layout": "snapshot",
                "prefixes": {PREFIX: {"n": keys_count, "z": encode_snapshot({k: etag_hash(k) for k in keys})}},
            }
        )
        idle = await step("idle", lambda: source.poll(cursor, 500))
        results["idle"]["items"] = len(idle.items)
        await mutate(endpoint, keys)
        batch = await step("changes", lambda: source.poll(cursor, 500))
        results["changes"]["items"] = len(batch.items)
        results["changes_cursor_bytes"] = json_size(batch.cursor)
        entry = await state.aget(CURSOR_KEY)
        assert entry is not None
        await state.aset(CURSOR_KEY, batch.cursor, expected_version=entry.version)  # the commit
        after = await step("after_commit", lambda: source.poll(batch.cursor, 500))
        results["after_commit"]["items"] = len(after.items)
        results["values_after"], results["state_bytes_after"], _ = await stored()
        fresh = S3ObjectsTrigger(
            bucket=BUCKET, prefixes=PREFIX, event_kinds="all", namespace="bench", name="s3-memory", aws_conn_id=CONN_ID
        ).build_source()
        assert isinstance(fresh, S3Source)
        fresh._chunk_store = lambda: ProcessStateChunkStore(state)
        cpu, wall = time.process_time(), time.perf_counter()
        await fresh.memory.load(fresh.config, batch.cursor)
        results["load"] = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
        await fresh.aclose()
    finally:
        await source.aclose()
        await backend.aclose()
    return results


def report(r: dict[str, Any]) -> str:
    anchor = r["anchor"]

    def ratio(ours: float, base: float) -> str:
        return f"{ours / base:.2f}x" if base else "-"

    def row(*cells: Any) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    keys = r["keys"]
    lines = [
        f"S3 snapshot tracking over {keys:,} random keys (moto in its own process; SQLite ProcessState)",
        "",
        row("poll", "CPU s", "ours / anchor", "wall s", "LIST requests", "items", "values written", "bytes written"),
        row(*["---"] * 8),
        row("anchor: plain listing chain, no memory", f"{anchor['cpu']:.2f}", "1.00x", f"{anchor['wall']:.1f}",
            anchor["lists"], "-", "-", "-"),
    ]  # fmt: skip
    for name, label in (
        ("baseline", "ours: baseline (client created, first listing, all chunks written)"),
        ("idle", "ours: idle poll"),
        ("changes", "ours: poll after 100 changes"),
        ("after_commit", "ours: idle poll after the commit (collects garbage)"),
    ):
        s = r[name]
        lines.append(
            row(label, f"{s['cpu']:.2f}", ratio(s["cpu"], anchor["cpu"]), f"{s['wall']:.1f}", s["lists"],
                s.get("items", "-"), s["chunks_written"], f"{s['bytes_written']:,}")
        )  # fmt: skip
    inline = r["inline_cursor_bytes"]
    lines += [
        "",
        row("size", "value"),
        row("---", "---"),
        row("cursor (ProcessState value, trigger kwargs, event commit block)",
            f"{r['cursor_bytes']:,} bytes (after the changes: {r['changes_cursor_bytes']:,})"),
        row("the same snapshot as one inline cursor (before chunks)",
            f"{inline:,} bytes: {inline / LIMIT:.1f}x the 64 KiB limit; "
            f"inline / ours {inline / r['cursor_bytes']:,.0f}x"),
        row("state store: chunk and page values",
            f"{r['values']:,} values, {r['state_bytes']:,} bytes, {r['state_bytes'] / keys:.1f} bytes per key"),
        row("largest value", f"{r['largest_value']:,} bytes (limit {LIMIT:,})"),
        row("after the commit and its garbage collection",
            f"{r['values_after']:,} values, {r['state_bytes_after']:,} bytes "
            f"({r['after_commit']['chunks_deleted']} replaced values deleted)"),
        row("loading the snapshot in a new run (sensor or trigger start)",
            f"{r['load']['cpu']:.2f} CPU s, {r['load']['wall']:.2f} s"),
        "",
        f"CPU s: this process only (botocore, comparison, SQLite); moto runs in another process. Setup: {keys:,} "
        f"objects preloaded through moto's backend in {r['preload_s']:.1f} s; {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000, help="objects under the prefix (default 100,000)")
    parser.add_argument("--smoke", action="store_true", help="a quick run with 2,000 keys (what make test runs)")
    args, others = parser.parse_known_args(argv)
    if others:  # make bench passes one ARGS to every benchmark
        print(f"{parser.prog}: ignoring arguments meant for other benchmarks: {' '.join(others)}", file=sys.stderr)
    keys = 2000 if args.smoke else args.keys
    import logging

    logging.getLogger("airflow_trigger_kit").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="trigger-kit-bench-s3-") as tmp, counting_s3_server() as server:
        results = asyncio.run(run(keys, server, Path(tmp)))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
