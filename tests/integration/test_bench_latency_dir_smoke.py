"""The directory latency benchmark runs at its smoke size: it completes and reports every file.

Counts only (every file reported once, in every variant): latencies are printed, never asserted.
"""

from __future__ import annotations

import pytest

from tests.integration.test_bench_hub_smoke import run_smoke

pytestmark = pytest.mark.integration


def test_directory_latency_benchmark_reports_every_file_with_notifications_on_and_off() -> None:
    out = run_smoke("benchmarks.bench_latency_dir")
    assert "Directory detection latency: 2 directories x 2 files" in out
    for variant in ("notify=True", "notify=False", "FileTrigger (anchor)"):
        row = next(line for line in out.splitlines() if variant in line and line.startswith("| "))
        assert "| 4 of 4 |" in row, row
