from __future__ import annotations

import random

import pytest

from airflow_trigger_kit.retry import Backoff, is_transient
from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.state import StateStoreUnavailable

pytestmark = pytest.mark.unit


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    backoff = Backoff(base_seconds=1, max_seconds=30, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [min(30, 2**n) for n in range(10)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0.1 * ceiling <= delay <= ceiling
    assert len(set(delays)) == len(delays), "no jitter"
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_error_classification() -> None:
    assert is_transient(TransientSourceError("throttled"))
    assert is_transient(StateStoreUnavailable("db down"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(PermanentSourceError("no such bucket"))
    assert not is_transient(ValueError("a bug"))
