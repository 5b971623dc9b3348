"""``make test`` runs the S3 benchmarks once at their smoke size: they must complete and report.

No timing is asserted (benchmarks report, tests check behaviour); what is checked is that each
benchmark runs end to end against its own moto server, prints its table, and stops every process
it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(module: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--smoke"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its moto server exits with its parent
        proc.communicate()
        pytest.fail(f"{module} --smoke did not finish in 420 s")
    assert proc.returncode == 0, f"{module} --smoke failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return out


def test_s3_memory_benchmark_completes_and_reports_sizes_and_cpu() -> None:
    out = run_benchmark("benchmarks.bench_s3_memory")
    assert "S3 snapshot tracking over 2,000 random keys" in out
    for row in ("anchor: plain listing chain, no memory", "ours: idle poll", "ours: poll after 100 changes"):
        assert row in out, out
    assert "| 100 |" in out  # the poll after 100 changes reported 100 items
    assert "largest value" in out and "bytes per key" in out


def test_s3_waits_benchmark_completes_and_counts_list_requests_on_the_server() -> None:
    out = run_benchmark("benchmarks.bench_s3_waits")
    assert "20 S3 waits on one prefix" in out
    assert "| LIST requests per tick (server) |" in out
    assert "| waits fired after the object landed | 20/20 | 20/20 | - |" in out, out
