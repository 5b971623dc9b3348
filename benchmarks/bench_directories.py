"""Benchmark: directory waits at scale, against Airflow's FileTrigger and the physical floor.

Scenarios (each variant runs in its own process, in one event loop, as a triggerer runs triggers):

(a) **1,000 waits, 10 per directory, over 100 directories x 1,000 files** — deferred sensors
    waiting for new files. Ours: 1,000 ``MultiDirectoryTrigger`` (sensor mode, each on one
    directory, started from its sensor's baseline cursor). Anchor: 1,000 Airflow ``FileTrigger``
    (each globs its directory for a name the existing files do not match — it has no memory, so it
    cannot wait for *new* files otherwise). Floor: one ``os.scandir`` + ``stat`` pass over every
    directory (a first poll), and one ``stat`` per directory (an idle tick).
(b) **Identical watches of 100 directories** — 100 and 1,000 watches, each over the same 100
    directories: directory listings and CPU until every watch completed its first poll. Anchor:
    the same watches each polling their own source, as every wait did before the hub.

Measured: CPU seconds of the process (every thread), event-loop lag (how late a 1 ms timer fires:
what every other trigger on the triggerer waits) p99 and max, RSS growth, listings. Nothing is
asserted: this reports, as ratios against the anchors of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from benchmarks.common import (
    GcTime,
    LoopLag,
    cpu_seconds,
    emit,
    header,
    median,
    ratio,
    rss_mib,
    run_variants,
    table,
)

MODULE = "benchmarks.bench_directories"


# --------------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------------
def build_tree(root: Path, dirs: int, files: int) -> list[str]:
    paths = []
    for d in range(dirs):
        path = root / f"client_{d:03d}"
        path.mkdir()
        for n in range(files):
            (path / f"{n:06d}.csv").write_bytes(b"id\n1\n")
        paths.append(str(path))
    old = time.time() - 3600  # upload directories are not seconds old
    for p in paths:
        os.utime(p, (old, old))
    return paths


def tree(root: str) -> list[str]:
    return sorted(str(p) for p in Path(root).iterdir() if p.is_dir())


# --------------------------------------------------------------------------------------------------
# Variants (each in its own process)
# --------------------------------------------------------------------------------------------------
def variant_floor(args: argparse.Namespace) -> dict[str, Any]:
    dirs = tree(args.root)

    def one_pass() -> int:
        n = 0
        for d in dirs:
            with os.scandir(d) as it:
                for entry in it:
                    entry.stat()
                    n += 1
        return n

    first, idle = [], []
    for _ in range(5):
        c0 = cpu_seconds()
        one_pass()
        first.append(cpu_seconds() - c0)
        c0 = cpu_seconds()
        for d in dirs:
            os.stat(d)
        idle.append(cpu_seconds() - c0)
    return {"first_poll_cpu_s": median(first), "idle_tick_cpu_ms": median(idle) * 1000, "listings": len(dirs)}


async def start_like_the_triggerer(
    make: Callable[[int, str, int], Any], dirs: list[str], per_dir: int
) -> list[asyncio.Future[Any]]:
    """Create and start triggers one by one, yielding to the loop in between, as the triggerer does.

    (``TriggerRunner.create_triggers`` awaits ``asyncio.sleep(0)`` around each trigger it inflates.)
    """
    tasks = []
    for i, d in enumerate(dirs):
        for n in range(per_dir):
            await asyncio.sleep(0)
            trigger = make(i, d, n)
            tasks.append(asyncio.ensure_future(trigger.run().__anext__()))
    return tasks


async def first_polls_done(hub: Any, waits: int) -> float:
    """CPU time at the end of the first tick after which every one of ``waits`` waits was compared."""
    done = asyncio.Event()
    mark: list[float] = []

    def observe() -> None:
        waiting = hub.ticker.waiters()
        if len(waiting) >= waits and all(w.seen is not None for w in waiting) and not mark:
            mark.append(cpu_seconds())
            done.set()

    hub.ticker.observers.append(observe)
    try:
        await done.wait()
    finally:
        hub.ticker.observers.remove(observe)
    return mark[0]


async def idle_cpu_ms(interval: float, intervals: int) -> float:
    """CPU milliseconds per poll interval while nothing changes (no lag monitor running)."""
    await asyncio.sleep(interval)
    c0 = cpu_seconds()
    await asyncio.sleep(interval * intervals)
    return (cpu_seconds() - c0) / intervals * 1000


async def variant_ours_a(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_trigger_kit.hub import get_hub
    from airflow_trigger_kit.sources.directory import DirectorySource, DirectoryWatchConfig
    from airflow_trigger_kit.triggers import MultiDirectoryTrigger

    dirs = tree(args.root)
    cursors = {}
    for d in dirs:  # what each sensor computed on its worker before deferring
        cursors[d] = await DirectorySource(DirectoryWatchConfig.create(directories=[d], patterns="*.csv")).baseline()
    hub = get_hub().directories
    waits = len(dirs) * args.per_dir
    rss0 = rss_mib()
    lag = LoopLag()
    lag.start()
    gc_time = GcTime().__enter__()
    c0 = cpu_seconds()
    tasks = await start_like_the_triggerer(
        lambda i, d, n: MultiDirectoryTrigger(
            directories=[d],
            patterns="*.csv",
            namespace="bench",
            name=f"wait_{i}_{n}",
            mode="sensor",
            cursor=cursors[d],
            cursor_version=1,
            settle_seconds=0,
            poll_interval=args.interval,
        ),
        dirs,
        args.per_dir,
    )
    first_cpu = await first_polls_done(hub, waits) - c0
    gc_time.__exit__()
    startup_lag = await lag.stop()
    rss = rss_mib() - rss0
    # Idle ticks, without the lag monitor (its own 1 ms wake-ups would be counted as CPU).
    idle_ms = await idle_cpu_ms(args.interval, args.idle_ticks)
    lag = LoopLag()
    lag.start()
    await asyncio.sleep(args.interval * 3)
    idle_lag = await lag.stop()
    listings = sum(x.listings for x in (hub.listings.get(k) for k in list(hub.listings._listings)) if x is not None)
    assert not any(t.done() for t in tasks), "a wait fired on old files"
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "first_poll_cpu_s": first_cpu,
        "first_poll_full_gc_s": gc_time.full,
        "idle_tick_cpu_ms": idle_ms,
        "startup_lag_p99_ms": startup_lag["lag_p99_ms"],
        "startup_lag_max_ms": startup_lag["lag_max_ms"],
        "lag_p99_ms": idle_lag["lag_p99_ms"],
        "lag_max_ms": idle_lag["lag_max_ms"],
        "rss_mib": rss,
        "listings": listings,
    }


async def variant_filetrigger_a(args: argparse.Namespace) -> dict[str, Any]:
    from airflow.providers.standard.triggers import file as file_module
    from airflow.providers.standard.triggers.file import FileTrigger

    dirs = tree(args.root)
    globs = 0
    real_glob = getattr(file_module, "glob")  # noqa: B009 - not re-exported; counted, not changed

    def counting_glob(*a: Any, **kw: Any) -> Any:
        nonlocal globs
        globs += 1
        return real_glob(*a, **kw)

    setattr(file_module, "glob", counting_glob)  # noqa: B010
    waits = len(dirs) * args.per_dir
    rss0 = rss_mib()
    lag = LoopLag()
    lag.start()
    gc_time = GcTime().__enter__()
    c0 = cpu_seconds()
    tasks = await start_like_the_triggerer(
        lambda i, d, n: FileTrigger(filepath=os.path.join(d, "incoming_*.csv"), poke_interval=args.interval),
        dirs,
        args.per_dir,
    )
    while globs < waits:  # noqa: ASYNC110 - polling a counter the triggers bump
        await asyncio.sleep(0)
    first_cpu = cpu_seconds() - c0
    gc_time.__exit__()
    startup_lag = await lag.stop()
    rss = rss_mib() - rss0
    idle_ms = await idle_cpu_ms(args.interval, args.idle_ticks)
    lag = LoopLag()
    lag.start()
    await asyncio.sleep(args.interval * 3)
    idle_lag = await lag.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "first_poll_cpu_s": first_cpu,
        "first_poll_full_gc_s": gc_time.full,
        "idle_tick_cpu_ms": idle_ms,
        "startup_lag_p99_ms": startup_lag["lag_p99_ms"],
        "startup_lag_max_ms": startup_lag["lag_max_ms"],
        "lag_p99_ms": idle_lag["lag_p99_ms"],
        "lag_max_ms": idle_lag["lag_max_ms"],
        "rss_mib": rss,
        "listings": waits,
    }


async def variant_identical(args: argparse.Namespace, *, shared: bool) -> dict[str, Any]:
    """(b): ``args.watches`` identical watches of every directory; CPU and listings to first poll."""
    from airflow_trigger_kit.hub import get_hub
    from airflow_trigger_kit.sources.directory import DirectorySource, DirectoryWatchConfig, listing
    from airflow_trigger_kit.triggers import MultiDirectoryTrigger

    dirs = tree(args.root)
    cursor = await DirectorySource(DirectoryWatchConfig.create(directories=dirs, patterns="*.csv")).baseline()
    scandirs = 0
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        nonlocal scandirs
        scandirs += 1
        return real_scandir(path)

    listing.os.scandir = counting_scandir  # type: ignore[attr-defined]
    c0 = cpu_seconds()
    triggers = [
        MultiDirectoryTrigger(
            directories=dirs,
            patterns="*.csv",
            namespace="bench",
            name=f"watch_{n}",
            mode="sensor",
            cursor=cursor,
            cursor_version=1,
            settle_seconds=0,
            poll_interval=args.interval,
        )
        for n in range(args.watches)
    ]
    if shared:
        hub = get_hub().directories
        tasks = [asyncio.ensure_future(t.run().__anext__()) for t in triggers]
        await first_polls_done(hub, args.watches)
        cpu = cpu_seconds() - c0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    else:
        # Before the hub: every wait polled its own source (one listing per directory and wait).
        sources = [t.build_source() for t in triggers]
        await asyncio.gather(*(s.poll(cursor, 500) for s in sources))
        cpu = cpu_seconds() - c0
    listing.os.scandir = real_scandir  # type: ignore[attr-defined]
    return {"first_poll_cpu_s": cpu, "listings": scandirs}


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small size, for `make test`")
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--per-dir", type=int, default=10, dest="per_dir")
    parser.add_argument("--interval", type=float, default=0.5, help="poll interval of every wait (s)")
    parser.add_argument("--idle-ticks", type=int, default=10, dest="idle_ticks")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--watches", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.dirs, args.files, args.per_dir, args.idle_ticks, args.interval = 10, 100, 3, 3, 0.2

    if args.variant:
        runners: dict[str, Any] = {
            "floor": lambda: variant_floor(args),
            "ours-a": lambda: asyncio.run(variant_ours_a(args)),
            "filetrigger-a": lambda: asyncio.run(variant_filetrigger_a(args)),
            "ours-b": lambda: asyncio.run(variant_identical(args, shared=True)),
            "per-wait-b": lambda: asyncio.run(variant_identical(args, shared=False)),
        }
        emit(runners[args.variant]())
        return

    root = tempfile.mkdtemp(prefix="trigger-kit-bench-dirs-")
    try:
        build_tree(Path(root), args.dirs, args.files)
        common = [
            "--root", root, "--dirs", str(args.dirs), "--files", str(args.files), "--per-dir", str(args.per_dir),
            "--interval", str(args.interval), "--idle-ticks", str(args.idle_ticks),
        ]  # fmt: skip
        a = run_variants(MODULE, ["floor", "ours-a", "filetrigger-a"], common)
        waits_small, waits_large = (10, 10) if args.smoke else (100, 1000)
        b: dict[str, dict[str, Any]] = {}
        for watches in sorted({waits_small, waits_large}):
            b[f"ours-{watches}"] = run_variants(MODULE, ["ours-b"], [*common, "--watches", str(watches)])["ours-b"]
        b[f"per-wait-{waits_small}"] = run_variants(MODULE, ["per-wait-b"], [*common, "--watches", str(waits_small)])[
            "per-wait-b"
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    waits = args.dirs * args.per_dir
    print(
        header(
            f"(a) {waits:,} directory waits, {args.per_dir} per directory, over {args.dirs} directories x "
            f"{args.files:,} files",
            f"Poll interval {args.interval} s for every wait. Each column ran in its own process. Floor: one "
            "`os.scandir` + `stat` pass over every directory (first poll), one `stat` per directory (idle tick). "
            "Ratios are anchor / ours (above 1: ours costs less) and ours / floor.",
        )
    )
    floor, ours, anchor = a["floor"], a["ours-a"], a["filetrigger-a"]
    rows = [
        [
            "CPU to first poll (s)",
            ours["first_poll_cpu_s"],
            anchor["first_poll_cpu_s"],
            floor["first_poll_cpu_s"],
            ratio(anchor["first_poll_cpu_s"], ours["first_poll_cpu_s"]),
            f"{ours['first_poll_cpu_s'] / floor['first_poll_cpu_s']:.2f}x",
        ],
        [
            "... of which full garbage collections (s)",
            ours["first_poll_full_gc_s"],
            anchor["first_poll_full_gc_s"],
            "-",
            "-",
            "-",
        ],
        [
            "CPU per idle tick (ms)",
            ours["idle_tick_cpu_ms"],
            anchor["idle_tick_cpu_ms"],
            floor["idle_tick_cpu_ms"],
            ratio(anchor["idle_tick_cpu_ms"], ours["idle_tick_cpu_ms"]),
            f"{ours['idle_tick_cpu_ms'] / max(floor['idle_tick_cpu_ms'], 1e-6):.2f}x",
        ],
        *[
            [label, ours[key], anchor[key], "-", ratio(anchor[key], ours[key]), "-"]
            for label, key in [
                ("event-loop lag p99, while starting (ms)", "startup_lag_p99_ms"),
                ("event-loop lag max, while starting (ms)", "startup_lag_max_ms"),
                ("event-loop lag p99, idle ticks (ms)", "lag_p99_ms"),
                ("event-loop lag max, idle ticks (ms)", "lag_max_ms"),
            ]
        ],
        ["RSS growth (MiB)", ours["rss_mib"], anchor["rss_mib"], "-", ratio(anchor["rss_mib"], ours["rss_mib"]), "-"],
        ["directory listings per first poll", ours["listings"], anchor["listings"], floor["listings"], "-", "-"],
    ]
    print(
        table(
            ["metric", "MultiDirectoryTrigger (hub)", "FileTrigger (anchor)", "floor", "anchor / ours", "ours / floor"],
            rows,
        )
    )
    small, large = f"ours-{waits_small}", f"ours-{waits_large}"
    print(
        header(
            f"(b) identical watches of the same {args.dirs} directories",
            "Each watch covers every directory. Anchor: each watch polling its own source, as before the hub "
            f"(run for {waits_small} watches only: it grows linearly).",
        )
    )
    per_wait = b[f"per-wait-{waits_small}"]
    columns = ["watches", "listings (hub)", "listings (per-wait sources)", "CPU to first poll, hub (s)"]
    rows = [
        [waits_small, b[small]["listings"], per_wait["listings"], b[small]["first_poll_cpu_s"]],
        [waits_large, b[large]["listings"], f"~{per_wait['listings'] * waits_large // waits_small:,} (linear)",
         b[large]["first_poll_cpu_s"]],
    ]  # fmt: skip
    rows[0] += [per_wait["first_poll_cpu_s"], ratio(per_wait["first_poll_cpu_s"], b[small]["first_poll_cpu_s"])]
    rows[1] += ["-", "-"]
    print(table([*columns, "CPU, per-wait sources (s)", "per-wait / hub"], rows))


if __name__ == "__main__":
    main()
