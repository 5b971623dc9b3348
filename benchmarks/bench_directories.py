"""Benchmark: MultiDirectoryTrigger against Airflow's FileTrigger, side by side in one run.

Scenario: 10 directories holding ``--files`` existing CSV files each; the watch waits for new files.
The anchor is what Airflow ships: one ``FileTrigger`` per directory (it globs synchronously inside
``run()``; it has no memory, so it can only wait for a name pattern that existing files do not
match). Ours is one ``MultiDirectoryTrigger`` over all ten directories (scans in a worker thread,
stats every matching file, keeps a cursor).

Measured, for both, while they run in one event loop:

* worst event-loop stall — how long other triggers on the same triggerer are blocked;
* detection latency — from the new file's creation to the trigger's event;
* CPU seconds per poll.

Results are printed as a table with ratios (anchor / ours). No assertion: this reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="trigger-kit-bench-home-"))

from airflow.providers.standard.triggers.file import FileTrigger

from airflow_trigger_kit.triggers import MultiDirectoryTrigger

POLL = 0.5


async def loop_stall_monitor(stop: asyncio.Event, tick: float = 0.001) -> float:
    """Worst lateness of a 1 ms ticker: how long the loop was blocked at once."""
    worst = 0.0
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(tick)
        worst = max(worst, time.perf_counter() - before - tick)
    return worst


async def measure(
    name: str, runs: list[AsyncIterator[Any]], create_new: Callable[[], None], polls_before: int = 6
) -> dict[str, float]:
    stop = asyncio.Event()
    monitor = asyncio.create_task(loop_stall_monitor(stop))
    cpu0 = time.process_time()
    tasks = [asyncio.create_task(gen.__anext__()) for gen in runs]
    await asyncio.sleep(POLL * polls_before)  # steady polling with nothing new
    created = time.perf_counter()
    await asyncio.to_thread(create_new)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=60)
    latency = time.perf_counter() - created
    cpu = time.process_time() - cpu0
    stop.set()
    stall = await monitor
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for gen in runs:
        await gen.aclose()
    if not done:
        raise RuntimeError(f"{name} never fired")
    polls = polls_before + latency / POLL  # approximate: both poll every POLL seconds
    return {"stall_ms": stall * 1000, "latency_s": latency, "cpu_per_poll_ms": cpu / polls * 1000}


def populate(root: Path, dirs: int, files: int) -> list[Path]:
    paths = []
    for d in range(dirs):
        path = root / f"client_{d:02d}"
        path.mkdir()
        for n in range(files):
            (path / f"{n:06d}.csv").write_bytes(b"id\n1\n")
        paths.append(path)
    return paths


async def main(files: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trigger-kit-bench-") as tmp:
        dirs = populate(Path(tmp), 10, files)
        total = 10 * files
        await asyncio.sleep(2.5)  # upload directories are normally not seconds old

        anchor_runs = [FileTrigger(filepath=str(d / "incoming_*.csv"), poke_interval=POLL).run() for d in dirs]
        anchor = await measure(
            "FileTrigger x10", anchor_runs, lambda: (dirs[7] / "incoming_1.csv").write_bytes(b"id\n")
        )

        ours_trigger = MultiDirectoryTrigger(
            directories=[str(d) for d in dirs],
            patterns="*.csv",
            namespace="bench",
            name="dirs",
            mode="sensor",
            settle_seconds=0,
            poll_interval=POLL,
            max_items=100,
        )
        cursor = await ours_trigger.build_source().baseline()
        ours_trigger = MultiDirectoryTrigger(**{**ours_trigger.serialize()[1], "cursor": cursor, "cursor_version": 1})
        ours = await measure(
            "MultiDirectoryTrigger", [ours_trigger.run()], lambda: (dirs[3] / "new_1.csv").write_bytes(b"id\n")
        )

        # Steady state: the work of one idle poll, repeated (FileTrigger's is one glob per directory).
        from glob import glob

        rounds = 10
        await asyncio.sleep(2.5)  # the two directories that just got a file become quiet again
        cpu0 = time.process_time()
        for _ in range(rounds):
            for d in dirs:
                glob(str(d / "incoming_*.csv"))
        anchor["idle_poll_cpu_ms"] = (time.process_time() - cpu0) / rounds * 1000
        source = ours_trigger.build_source()
        first = await source.poll(cursor, 100)
        cpu0 = time.process_time()
        for _ in range(rounds):
            await source.poll(first.cursor, 100)
        ours["idle_poll_cpu_ms"] = (time.process_time() - cpu0) / rounds * 1000

    print(f"\n10 directories x {files} existing files ({total} files), poll interval {POLL}s\n")
    print("| metric | FileTrigger x10 (anchor) | MultiDirectoryTrigger | anchor / ours |")
    print("|---|---|---|---|")
    for key, label in [
        ("stall_ms", "worst event-loop stall (ms)"),
        ("latency_s", "detection latency (s)"),
        ("cpu_per_poll_ms", "CPU per poll, first listing included (ms)"),
        ("idle_poll_cpu_ms", "CPU of one idle poll, steady state (ms)"),
    ]:
        ratio = f"{anchor[key] / ours[key]:.2f}x" if ours[key] > 0.005 else "n/a (ours ~0)"
        print(f"| {label} | {anchor[key]:.2f} | {ours[key]:.2f} | {ratio} |")
    print(
        "\nFileTrigger also fires once with no memory: a file that matches stays matching, so it "
        "cannot tell new files from old ones; MultiDirectoryTrigger reports each new file once."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="existing files per directory")
    asyncio.run(main(parser.parse_args().files))
