"""Benchmark: directory detection latency with kernel notifications on vs off, against FileTrigger.

Latency is measured from the moment a writer closed a file (its last write) to the moment the
trigger yields the event that reports it. Every variant runs in its own process, in one event
loop, as a triggerer runs its triggers:

* **notify on** — ``MultiDirectoryTrigger`` in sensor mode, ``notify=True``, ``poll_interval`` 5 s,
  ``reconcile_interval`` 60 s: inotify wakes the hub, which polls once the directory has been quiet
  for ``settle_seconds``.
* **notify off** — the same trigger with ``notify=False``: it polls every ``poll_interval`` (5 s).
* **FileTrigger (anchor)** — Airflow's ``FileTrigger`` with ``poke_interval`` 5 s, one per expected
  file name (it has no memory, so it can only wait for a name that does not exist yet). It reports
  a file as soon as it exists, without waiting for it to settle.

``settle_seconds`` is 1 s for ours (small on purpose: a file is reportable only once it has not
changed for that long, so the target with notifications is p50 <= settle_seconds + 100 ms).
Each directory has one waiting trigger, re-created from the event's cursor after each event, as a
deferred sensor's next run would be. A writer thread writes files into the directories at random,
spaced moments. Nothing is asserted but completeness (every file reported exactly once): this
reports; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from benchmarks.common import emit, header, run_variants, table

MODULE = "benchmarks.bench_latency_dir"
VARIANTS = ["notify-on", "notify-off", "filetrigger"]
LABELS = {
    "notify-on": "MultiDirectoryTrigger, notify=True",
    "notify-off": "MultiDirectoryTrigger, notify=False",
    "filetrigger": "FileTrigger (anchor)",
}


def file_name(k: int) -> str:
    return f"file_{k:04d}.csv"


def writer(dirs: list[str], files: int, gap: tuple[float, float], closed: dict[str, float], seed: int) -> None:
    """Write ``files`` files per directory, one at a time at random moments; record when each was closed."""
    rng = random.Random(seed)
    order = [(d, k) for k in range(files) for d in dirs]
    for d, k in order:
        time.sleep(rng.uniform(*gap) / len(dirs))
        path = os.path.join(d, file_name(k))
        with open(path, "w") as f:
            f.write("id,value\n1,2\n")
        closed[path] = time.time()  # the file is closed: its last write is done


async def run_ours(args: argparse.Namespace, dirs: list[str], notify: bool) -> dict[str, Any]:
    from airflow_trigger_kit.hub import get_hub
    from airflow_trigger_kit.triggers import MultiDirectoryTrigger

    def make(d: str, cursor: Any) -> MultiDirectoryTrigger:
        return MultiDirectoryTrigger(
            directories=[d],
            namespace="bench-latency",
            name=f"w-{uuid.uuid4().hex[:8]}",
            mode="sensor",
            cursor=cursor,
            cursor_version=1,
            patterns="*.csv",
            settle_seconds=args.settle,
            poll_interval=args.interval,
            reconcile_interval=args.reconcile,
            notify=notify,
        )

    closed: dict[str, float] = {}
    latencies: dict[str, float] = {}
    expected = len(dirs) * args.files

    async def chain(d: str) -> None:
        cursor = await make(d, None).build_source().baseline()
        while sum(1 for p in latencies if p.startswith(d + os.sep)) < args.files:
            gen = make(d, cursor).run()
            try:
                event = await gen.__anext__()
            finally:
                await gen.aclose()
            now = time.time()
            payload = event.payload
            if "items" not in payload:
                raise RuntimeError(f"the trigger failed: {payload}")
            for item in payload["items"]:
                path = item["path"]
                if path in latencies:
                    raise RuntimeError(f"{path} reported twice")
                latencies[path] = now - closed[path]
            cursor = payload["commit"]["cursor"]

    chains = [asyncio.ensure_future(chain(d)) for d in dirs]
    await asyncio.sleep(0.5)  # every chain waits before the first file lands
    thread = threading.Thread(target=writer, args=(dirs, args.files, args.gap, closed, 7), daemon=True)
    thread.start()
    await asyncio.wait_for(asyncio.gather(*chains), timeout=args.files * args.gap[1] + 120)
    hub = get_hub().directories
    return {
        "latencies": sorted(latencies.values()),
        "expected": expected,
        "polls": hub.ticker.ticks,
        "events": hub.listener.events,
    }


async def run_filetrigger(args: argparse.Namespace, dirs: list[str]) -> dict[str, Any]:
    from airflow.providers.standard.triggers.file import FileTrigger

    closed: dict[str, float] = {}
    latencies: dict[str, float] = {}

    async def chain(d: str) -> None:
        for k in range(args.files):
            path = os.path.join(d, file_name(k))
            gen = FileTrigger(filepath=path, poke_interval=args.interval).run()
            try:
                await gen.__anext__()
            finally:
                await gen.aclose()
            latencies[path] = time.time() - closed[path]

    chains = [asyncio.ensure_future(chain(d)) for d in dirs]
    await asyncio.sleep(0.5)
    thread = threading.Thread(target=writer, args=(dirs, args.files, args.gap, closed, 7), daemon=True)
    thread.start()
    await asyncio.wait_for(asyncio.gather(*chains), timeout=args.files * args.gap[1] + 120)
    return {"latencies": sorted(latencies.values()), "expected": len(dirs) * args.files, "polls": 0, "events": 0}


def variant(args: argparse.Namespace) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="trigger-kit-bench-latency-")
    try:
        dirs = []
        for n in range(args.dirs):
            d = Path(root) / f"client_{n:02d}"
            d.mkdir()
            dirs.append(str(d))
        if args.variant == "filetrigger":
            return asyncio.run(run_filetrigger(args, dirs))
        return asyncio.run(run_ours(args, dirs, notify=args.variant == "notify-on"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small size, for `make test`")
    parser.add_argument("--dirs", type=int, default=10)
    parser.add_argument("--files", type=int, default=6, help="files per directory")
    parser.add_argument("--interval", type=float, default=5.0, help="poll_interval / poke_interval (s)")
    parser.add_argument("--reconcile", type=float, default=60.0, help="reconcile_interval (s)")
    parser.add_argument("--settle", type=float, default=1.0, help="settle_seconds (s)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.dirs, args.files, args.interval, args.settle = 2, 2, 1.0, 0.2
    args.gap = (2.0, 6.0) if not args.smoke else (0.3, 0.6)  # seconds between two files of one directory

    if args.variant:
        emit(variant(args))
        return

    common = [
        "--dirs", str(args.dirs), "--files", str(args.files), "--interval", str(args.interval),
        "--reconcile", str(args.reconcile), "--settle", str(args.settle),
    ]  # fmt: skip
    if args.smoke:
        common.append("--smoke")
    results = run_variants(MODULE, VARIANTS, common)
    expected = args.dirs * args.files
    print(
        header(
            f"Directory detection latency: {args.dirs} directories x {args.files} files, one waiting trigger each",
            f"From the writer's close of a file to the event the trigger yields. poll_interval / poke_interval "
            f"{args.interval:g} s, reconcile_interval {args.reconcile:g} s, settle_seconds {args.settle:g} s for "
            "ours (FileTrigger does not settle: it fires as soon as the name exists). Each column ran in its own "
            f"process; files land at random moments {args.gap[0]:g}-{args.gap[1]:g} s apart per directory.",
        )
    )
    rows = []
    for name in VARIANTS:
        r = results[name]
        lat = r["latencies"]
        rows.append(
            [
                LABELS[name],
                f"{len(lat)} of {r['expected']}",
                percentile(lat, 50) * 1000,
                percentile(lat, 95) * 1000,
                max(lat, default=0.0) * 1000,
                r["polls"] if name != "filetrigger" else "-",
                r["events"] if name == "notify-on" else "-",
            ]
        )
    print(table(["variant", "files reported", "p50 (ms)", "p95 (ms)", "max (ms)", "hub polls", "inotify events"], rows))
    missing = [name for name in VARIANTS if len(results[name]["latencies"]) != expected]
    if missing:
        raise SystemExit(f"not every file was reported by {missing}")


if __name__ == "__main__":
    main()
