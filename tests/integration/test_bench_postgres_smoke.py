"""`make bench`'s Postgres benchmark runs at its smoke size: it completes and prints its tables.

No timing is asserted (benchmarks report, tests check behaviour); this keeps the benchmark working
as the code changes. It starts and stops its own throwaway PostgreSQL, like a real run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_postgres_smoke_prints_its_tables() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__TRIGGER_KIT__")}
    env.pop("AIRFLOW_HOME", None)  # the benchmark makes its own
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_postgres", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    print(out)
    for line in (
        "(d) Postgres watch:",
        "| empty poll before the burst, back to back: median / p95 (ms) |",
        "| empty poll right after the burst, back to back: median / p95 (ms) |",
        "| lookback | 500 |",
        "| lookback | 5,000 |",
        "| xid_column | 500 + ProcessState commit per batch |",
        "| lookback | 5,000 + ProcessState commit per batch |",
        "(g) ProcessState compare-and-set writes/s",
        "| SQLite | 1 |",
        "| SQLite | 20 |",
        "| PostgreSQL | 1 |",
        "| PostgreSQL | 20 |",
    ):
        assert line in out, f"missing {line!r} in the benchmark's output"
    assert "partial" not in out, "the smoke size drains within its budget"
