"""The status record's pure updates and the metric tag rules (no store, no Airflow process)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_trigger_kit.metrics import tag_value, watch_tags
from airflow_trigger_kit.status import (
    HISTORY_LIMIT,
    MAX_MESSAGE,
    item_time,
    new_record,
    newest_item_time,
    record_commit,
    record_error,
    record_recovery,
    record_rewind,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_item_time_reads_each_sources_own_clock() -> None:
    assert item_time({"mtime": "2026-01-01T00:00:00+00:00"}) == T0
    assert item_time({"last_modified": "2026-01-01T00:00:00+00:00"}) == T0
    # Postgres: the first watermark column when it is a timestamp (str() of a datetime), naive = UTC.
    assert item_time({"watermark": {"updated_at": "2026-01-01 00:00:00", "id": "7"}}) == T0
    assert item_time({"watermark": {"id": "7"}}) is None
    assert item_time({"kind": "row_count", "count": 3}) is None
    assert newest_item_time([{"mtime": "2026-01-01T00:00:00+00:00"}, {"mtime": "2026-01-02T00:00:00+00:00"}]) == (
        datetime(2026, 1, 2, tzinfo=timezone.utc)
    )


def test_commits_add_up_and_keep_a_bounded_history() -> None:
    record = new_record()
    for version in range(1, HISTORY_LIMIT + 6):
        record_commit(record, version=version, at=f"t{version}", items=2, events=1, newest_item_at=T0)
    assert record["items_delivered"] == 2 * (HISTORY_LIMIT + 5)
    assert [h["version"] for h in record["history"]] == list(range(6, HISTORY_LIMIT + 6))
    assert record["committed_version"] == HISTORY_LIMIT + 5 and record["newest_item_at"] == T0.isoformat()


def test_errors_recoveries_and_rewinds() -> None:
    record = new_record()
    record_recovery(record, at="t0")
    assert "recovered_at" not in record, "no error, nothing to recover from"
    record_error(record, message="x" * (MAX_MESSAGE + 50), at="t1", transient=True)
    assert len(record["last_error"]["message"]) == MAX_MESSAGE
    record_recovery(record, at="t2")
    assert record["recovered_at"] == "t2"
    record_error(record, message="again", at="t3", transient=False)
    assert "recovered_at" not in record
    record_commit(record, version=3, at="t4", items=5, events=1, newest_item_at=None)
    record["kind"] = "watcher"
    record_rewind(record, at="t5", by="admin")
    assert record["items_delivered"] == 0 and record["history"] == [] and "committed_version" not in record
    assert record["kind"] == "watcher" and record["rewound_by"] == "admin"


def test_tag_values_keep_to_what_airflows_stat_validator_accepts() -> None:
    assert tag_value("client uploads, EU=1") == "client_uploads__EU_1"
    assert tag_value("assets/x.y-z") == "assets/x.y-z"
    assert len(tag_value("n" * 500)) == 60
    assert watch_tags("s3", "assets", "") == {"source": "s3", "namespace": "assets", "name": "_"}
