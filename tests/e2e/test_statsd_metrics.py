"""Metrics from the real triggerer reach a real StatsD endpoint: names, tags and values.

The session's stack points Airflow's ``[metrics]`` at a UDP socket this test suite bound on loopback
(see ``conftest.statsd_env``), with InfluxDB-style tags so the tags travel in the metric name. The
test feeds one file to the directory watcher and reads back what the triggerer sent.
"""

from __future__ import annotations

import time

import pytest

from devtools.deliveries import ASSET_STATE_NAMESPACE, wait_delivered
from tests.e2e.conftest import E2E

pytestmark = pytest.mark.e2e


def test_poll_duration_and_watermark_lag_reach_statsd_with_watch_tags(e2e: E2E) -> None:
    assert e2e.statsd is not None
    feeder = e2e.feeder("directory")
    fed_at = time.time()
    fed = {feeder.add_asset_item("statsd-lag")}
    wait_delivered(
        e2e.stack.api,
        feeder,
        e2e.asset_ids["directory"],
        fed,
        timeout=120,
        check=e2e.stack.check_alive,
        diagnose=e2e.stack.trigger_errors,
    )
    tags = {"source": "directory", "namespace": ASSET_STATE_NAMESPACE, "name": feeder.asset_name}

    polls = e2e.statsd.wait_for("airflow.trigger_kit.poll_duration", since=fed_at, tags=tags)
    assert all(m.kind == "ms" and 0 <= m.value < 60_000 for m in polls), polls[:5]

    # The commit follows the delivery once Airflow confirmed the event: wait for its gauge.
    lags = e2e.statsd.wait_for("airflow.trigger_kit.watermark_lag", timeout=60, since=fed_at, tags=tags)
    assert all(m.kind == "g" for m in lags)
    newest = lags[0].value
    # The lag of the commit that covered our file: at least the watcher's settle time (2 s), and no
    # more than the time since we wrote the file (plus a second of clock granularity).
    assert 1.0 <= newest <= time.time() - fed_at + 1.0, (newest, time.time() - fed_at)

    commits = e2e.statsd.matching("airflow.trigger_kit.commits", since=fed_at, tags={"source": "directory"})
    assert commits and all(m.kind == "c" and m.value >= 1 for m in commits)
