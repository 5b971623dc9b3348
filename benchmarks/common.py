"""What every benchmark shares: an event-loop lag monitor, CPU and memory readings, tables.

Benchmarks report; they never assert timings. Each variant of a scenario runs in its own process
(:func:`run_variants`), so CPU time, RSS and loop lag belong to that variant alone, and the
results are printed side by side with ratios against the anchors of the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopLag:
    """How late a 1 ms ticker wakes up: what every other trigger on the loop waits, at worst."""

    tick: float = 0.001
    samples: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.samples.append(max(0.0, time.perf_counter() - before - self.tick))

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not self.samples:
            return {"lag_p99_ms": 0.0, "lag_max_ms": 0.0}
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return {"lag_p99_ms": p99 * 1000, "lag_max_ms": ordered[-1] * 1000}


class GcTime:
    """Time the process spent in garbage collection while installed (full collections reported apart)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.full = 0.0
        self._started = 0.0

    def __enter__(self) -> GcTime:
        import gc

        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        spent = time.perf_counter() - self._started
        self.total += spent
        if info["generation"] == 2:
            self.full += spent


def cpu_seconds() -> float:
    """CPU time of this process, every thread included."""
    return time.process_time()


def rss_mib() -> float:
    """Resident memory now (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpus} cores ({model}), {mem_kib / 2**20:.0f} GiB, Python {sys.version.split()[0]}"


def run_variants(module: str, variants: Sequence[str], args: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Run ``python -m module --variant V ...args`` for each variant; each prints one JSON line last."""
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--variant", variant, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{module} --variant {variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def emit(result: dict[str, Any]) -> None:
    """The one JSON line a variant process ends with."""
    print(json.dumps(result), flush=True)


def ratio(anchor: float, ours: float) -> str:
    if ours <= 0 or anchor <= 0:
        return "n/a"
    return f"{anchor / ours:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def header(title: str, method: str) -> str:
    return f"\n## {title}\n\nMachine: {machine()}; load average {load_average()} (1, 5, 15 min).\n\n{method}\n"


def time_it(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall seconds of ``fn``."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return median(samples)
