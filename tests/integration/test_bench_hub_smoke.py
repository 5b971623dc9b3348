"""`make bench`'s hub benchmarks run at their smoke size: they complete and print their tables.

No timing is asserted (benchmarks report, tests check behaviour); this keeps the benchmarks working
as the code changes. Each starts and stops what it needs (a directory tree, a throwaway PostgreSQL).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(module: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__TRIGGER_KIT__")}
    env.pop("AIRFLOW_HOME", None)  # the benchmark makes its own
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    return done.stdout


def test_directory_benchmark_prints_its_tables_with_one_listing_per_directory() -> None:
    out = run_smoke("benchmarks.bench_directories")
    assert "(a) 30 directory waits, 3 per directory, over 10 directories x 100 files" in out
    assert "| CPU to first poll (s) |" in out and "| CPU per idle tick (ms) |" in out
    # The count the hub is for: one listing per directory, not per wait (ours, anchor, floor).
    assert "| directory listings per first poll | 10 | 30 | 10 | - | - |" in out
    assert "(b) identical watches of the same 10 directories" in out
    assert "| 10 | 10 | 100 |" in out, "10 watches of 10 directories: 10 listings shared, 100 per-wait"


def test_postgres_waits_benchmark_prints_its_tables_within_the_pool() -> None:
    out = run_smoke("benchmarks.bench_postgres_waits")
    assert "(c) 120 Postgres waits on one server (max_connections=100), 10 tables" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 100 identical", "| every wait its own filter | "))]
    assert len(rows) == 3, out
    for row in rows[:2]:
        connections, failed = int(row.split("|")[2]), int(row.split("|")[-2])
        assert 1 <= connections <= 4 and failed == 0, row
    held, refused, error = int(rows[2].split("|")[2]), int(rows[2].split("|")[4]), rows[2].split("|")[5]
    assert held == 100 and refused == 20 and "TooManyConnections" in error, "one connection per wait hits the limit"
