"""The S3 latency benchmark runs at its smoke size: it completes and every object put is detected.

Counts only (benchmarks report times, tests never assert them). The benchmark starts and stops its
own moto server process.
"""

from __future__ import annotations

import pytest

from tests.integration.test_bench_hub_smoke import run_smoke

pytestmark = pytest.mark.integration


def test_s3_latency_benchmark_detects_every_object_with_and_without_notifications() -> None:
    out = run_smoke("benchmarks.bench_latency_s3")
    assert "| S3ObjectsTrigger, SQS notifications (reconcile_interval 60 s) | 5/5 |" in out
    assert "| S3ObjectsTrigger, polling (poll_interval 1 s) | 3/3 |" in out
    assert "| S3KeyTrigger (anchor, poke_interval 1 s) | 2/2 |" in out
