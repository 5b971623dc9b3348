"""Failure streaks (pure bookkeeping) and their place in the status record."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from airflow_trigger_kit.hub.streaks import JITTER_FLOOR, FailureStreak, FailureStreaks
from airflow_trigger_kit.retry import ends_in_restart, is_transient
from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.state import StateConflict
from airflow_trigger_kit.state.model import StateStoreUnavailable
from airflow_trigger_kit.status import backoff_of, new_record, record_backoff, record_error, record_recovery

pytestmark = pytest.mark.unit

KEY = ("assets", "uploads")


def test_delays_double_from_the_base_up_to_the_cap_and_are_never_short() -> None:
    streaks = FailureStreaks(rng=random.Random(3))
    delays = []
    for n in range(12):
        streak = streaks.failed(KEY, "boom", base_seconds=0.5, max_seconds=10, now=1000.0 + n)
        delays.append(streak.next_retry_at - (1000.0 + n))
        assert streak.failures == n + 1
        assert streak.since == 1000.0 and streak.active
    ceilings = [min(10.0, 0.5 * 2**n) for n in range(12)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert JITTER_FLOOR * ceiling <= delay <= ceiling
    assert len(set(delays)) == len(delays), "no jitter"


def test_watches_have_separate_streaks() -> None:
    streaks = FailureStreaks()
    streaks.failed(KEY, "a", base_seconds=1, max_seconds=60, now=0)
    other = streaks.failed(("assets", "other"), "b", base_seconds=1, max_seconds=60, now=0)
    assert other.failures == 1 and len(streaks) == 2


def test_recovery_ends_the_streak_but_keeps_its_count_during_the_probation() -> None:
    streaks = FailureStreaks()
    for n in range(4):
        streaks.failed(KEY, "denied", base_seconds=1, max_seconds=60, now=float(n))
    recovered = streaks.recovered(KEY, probation_seconds=60, now=10.0)
    assert recovered is not None and recovered.failures == 4 and not recovered.active
    assert streaks.recovered(KEY, probation_seconds=60, now=11.0) is None, "a recovery is reported once"
    # Failing again within the probation continues the streak (e.g. a cursor over the size limit).
    again = streaks.failed(KEY, "denied", base_seconds=1, max_seconds=60, now=20.0)
    assert again.failures == 5 and again.since == 0.0 and again.active
    # After the probation a failure starts a new streak, and the recovered entry is gone.
    streaks.recovered(KEY, probation_seconds=60, now=30.0)
    assert streaks.get(KEY, now=89.0) is not None
    assert streaks.get(KEY, now=91.0) is None and len(streaks) == 0
    fresh = streaks.failed(KEY, "denied", base_seconds=1, max_seconds=60, now=95.0)
    assert fresh.failures == 1 and fresh.since == 95.0


def test_recovered_entries_are_pruned_when_others_fail() -> None:
    streaks = FailureStreaks()
    for n in range(50):
        streaks.failed(("ns", f"w{n}"), "x", base_seconds=1, max_seconds=5, now=0.0)
        streaks.recovered(("ns", f"w{n}"), probation_seconds=5, now=1.0)
    streaks.failed(KEY, "x", base_seconds=1, max_seconds=5, now=100.0)
    assert len(streaks) == 1


def test_a_restored_streak_never_replaces_this_process_own() -> None:
    streaks = FailureStreaks()
    own = streaks.failed(KEY, "x", base_seconds=1, max_seconds=5, now=0.0)
    recorded = FailureStreak(failures=9, since=0.0, next_retry_at=50.0, last_error="y")
    assert streaks.restore(KEY, recorded) is own
    assert streaks.restore(("ns", "new"), recorded) is recorded


def test_what_backs_off_and_what_restarts() -> None:
    assert not is_transient(PermanentSourceError("permission denied")) and not ends_in_restart(PermanentSourceError())
    assert not is_transient(KeyError("a bug")) and not ends_in_restart(KeyError())
    assert ends_in_restart(StateConflict("assets", "uploads", "cursor", expected_version=3, actual_version=4))
    assert is_transient(StateStoreUnavailable("down")) and not ends_in_restart(StateStoreUnavailable("down"))


def test_status_record_backoff_until_recovery() -> None:
    record = new_record()
    record_error(record, message="PermanentSourceError: denied", at="t1", transient=False)
    record_backoff(record, failures=3, since="2026-01-01T00:00:00+00:00", next_retry_at="2026-01-01T00:00:08+00:00")
    backoff = backoff_of(record)
    assert backoff is not None and backoff["failures"] == 3
    assert backoff["next_retry_at"] == datetime(2026, 1, 1, 0, 0, 8, tzinfo=timezone.utc)
    record_recovery(record, at="t2")
    assert backoff_of(record) is None and record["recovered_at"] == "t2"
    record_backoff(record, failures=1, since="2026-01-01T01:00:00+00:00", next_retry_at="2026-01-01T01:00:01+00:00")
    assert "recovered_at" not in record, "failing again is no longer recovered"


@pytest.mark.parametrize(
    "damaged",
    [
        None,
        "text",
        {"backoff": "soon"},
        {"backoff": {"failures": 0, "since": "2026-01-01T00:00:00+00:00", "next_retry_at": "2026-01-01T00:00:01"}},
        {"backoff": {"failures": True, "since": "2026-01-01T00:00:00+00:00", "next_retry_at": "2026-01-01T00:00:01"}},
        {"backoff": {"failures": 2, "since": "yesterday", "next_retry_at": "2026-01-01T00:00:01+00:00"}},
        {"backoff": {"failures": 2, "since": "2026-01-01T00:00:00+00:00"}},
    ],
)
def test_a_damaged_backoff_in_the_status_record_is_ignored(damaged: object) -> None:
    assert backoff_of(damaged) is None


def test_the_watches_table_shows_a_backing_off_watcher_with_its_next_retry() -> None:
    from airflow_trigger_kit.cli import format_watch_table

    row = {
        "namespace": "assets",
        "name": "uploads",
        "kind": "watcher",
        "source": "directory",
        "target": "asset uploads",
        "cursor_version": 4,
        "cursor_updated_at": None,
        "seconds_since_detection": None,
        "items_delivered": 7,
        "last_error": {"message": "PermanentSourceError: permission denied", "transient": False},
        "recovered_at": None,
        "backoff": {"failures": 3, "since": "2026-01-01T00:00:00+00:00", "next_retry_at": "2026-01-01T00:00:08+00:00"},
    }
    assert "[FAILED x3, next retry 2026-01-01 00:00:08] PermanentSourceError" in format_watch_table([row])
    row["recovered_at"] = "2026-01-01T00:00:09+00:00"
    assert "[recovered] PermanentSourceError" in format_watch_table([row])
