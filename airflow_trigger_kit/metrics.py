"""Metrics through Airflow's Stats (statsd / OpenTelemetry as configured), never fatal.

Names (all prefixed with Airflow's ``[metrics] statsd_prefix``):

* ``trigger_kit.polls`` (counter) — polls of a source, tagged by source kind.
* ``trigger_kit.detections`` (counter) — items reported in events.
* ``trigger_kit.failures`` (counter) — transient errors retried, and permanent errors raised.
* ``trigger_kit.wait_time`` (timer) — from a sensor's trigger start to the event that ended it.
* ``trigger_kit.commits`` (counter) — watermarks committed after Airflow confirmed the event.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _stats() -> Any:
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # pragma: no cover - older task SDK layouts
        try:
            from airflow.stats import Stats
        except ImportError:
            return None
    return Stats


def incr(name: str, count: int = 1, *, source: str) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.incr(f"trigger_kit.{name}", count, tags={"source": source})
    except Exception:  # metrics must never break a watch
        log.debug("metric %s not emitted", name, exc_info=True)


def timing(name: str, seconds: float, *, source: str) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.timing(f"trigger_kit.{name}", seconds * 1000.0, tags={"source": source})
    except Exception:
        log.debug("metric %s not emitted", name, exc_info=True)
