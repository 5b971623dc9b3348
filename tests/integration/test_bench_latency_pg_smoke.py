"""The Postgres notification latency benchmark runs at its smoke size and reports every event.

Counts only (events per variant, listener connects); the latencies it prints are never asserted.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.test_bench_hub_smoke import run_smoke

pytestmark = pytest.mark.integration


def test_latency_benchmark_reports_every_event_of_every_variant() -> None:
    out = run_smoke("benchmarks.bench_latency_pg")
    assert "Postgres detection latency: COMMIT to the watcher's event" in out
    events = {
        label: int(match.group(1))
        for label in ("notifications on", "notifications off", "anchor: SqlSensor-style poke")
        if (match := re.search(rf"^\| {re.escape(label)}[^|]*\| (\d+) \|", out, re.M))
    }
    assert events == {"notifications on": 10, "notifications off": 5, "anchor: SqlSensor-style poke": 5}, out
    assert re.search(r"for 10 commits; listener connects 1, failures 0\.", out), out
