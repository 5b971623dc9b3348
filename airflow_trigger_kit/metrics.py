"""Metrics through Airflow's Stats (StatsD, Datadog or OpenTelemetry as configured), never fatal.

Names (Airflow prefixes them with ``[metrics] statsd_prefix``, ``airflow`` by default):

* ``trigger_kit.polls`` (counter) — polls of a source, tagged ``source``.
* ``trigger_kit.detections`` (counter) — items reported in events, tagged ``source``.
* ``trigger_kit.failures`` (counter) — transient errors retried, and permanent errors raised.
* ``trigger_kit.wait_time`` (timer, ms) — from a sensor's trigger start to the event that ended it.
* ``trigger_kit.commits`` (counter) — watermarks committed after Airflow confirmed the event.
* ``trigger_kit.poll_duration`` (timer, ms) — one poll of one watch, tagged ``source``,
  ``namespace`` and ``name``.
* ``trigger_kit.watermark_lag`` (gauge, seconds) — at each commit, the age of the newest committed
  item (now minus the item's own time: a file's mtime, an object's LastModified, a row's first
  watermark column when it is a timestamp), tagged like ``poll_duration``.
* ``trigger_kit.failure_streak`` (gauge) — a watcher's failed attempts in a row, set at each
  failure (the watcher then backs off until its next retry time) and back to 0 when it recovers;
  tagged like ``poll_duration``. Above 0 means "backing off".
* ``trigger_kit.listener_up`` (gauge) — 1 while a change-notification listener is live, 0 while
  its watches fall back to ``poll_interval``; tagged ``source`` and ``listener``.
* ``trigger_kit.listener_failures`` (counter) — a listener failed and reconnects with backoff.
* ``trigger_kit.hints`` (counter) — coalesced notification hints that woke watches early.

Which Stats: Airflow 3.3 keeps two copies of its stats module. Server components (the triggerer
and the trigger runner it forks) initialise ``airflow._shared.observability.metrics.stats``; task
processes initialise the Task SDK's ``airflow.sdk._shared.observability.metrics.stats``. A metric
sent through the copy nobody initialised goes nowhere, so :func:`_stats` picks the initialised
copy, and initialises the SDK's from ``[metrics]`` when neither is (the CLI, ``dag.test()``).

Tags travel over plain StatsD only with ``[metrics] statsd_influxdb_enabled = True`` (appended to
the name as ``,key=value``) or with Datadog (``statsd_datadog_enabled``); tag values are reduced
to the characters Airflow's name validator accepts, so an odd watch name never drops a metric.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

log = logging.getLogger(__name__)

_UNSAFE_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")
MAX_TAG_VALUE = 60

_lock = threading.Lock()
_sdk_initialised_here = False


def _initialised(module: Any) -> bool:
    return getattr(module, "_factory", None) is not None


def _stats() -> Any:
    """The stats module this process initialised (see the module docstring), or None."""
    global _sdk_initialised_here
    sdk_stats: Any
    core_stats: Any
    try:
        from airflow.sdk._shared.observability.metrics import stats as sdk_stats
    except ImportError:  # pragma: no cover - other Task SDK layouts
        sdk_stats = None
    try:
        from airflow._shared.observability.metrics import stats as core_stats
    except ImportError:  # pragma: no cover - a worker without airflow-core
        core_stats = None
    if sdk_stats is not None and _initialised(sdk_stats):
        return sdk_stats
    if core_stats is not None and _initialised(core_stats):
        return core_stats
    if sdk_stats is None:
        return None
    with _lock:
        if not _sdk_initialised_here and not _initialised(sdk_stats):
            try:
                from airflow.sdk.configuration import conf
                from airflow.sdk.observability.metrics import stats_utils

                sdk_stats.initialize(
                    factory=stats_utils.get_stats_factory(),
                    export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=True),
                )
            except Exception:  # metrics must never break a watch
                log.debug("could not initialise Airflow's stats", exc_info=True)
                return None
            _sdk_initialised_here = True
    return sdk_stats


def tag_value(value: str) -> str:
    """``value`` reduced to what Airflow's stat name validator accepts (and at most 60 chars)."""
    return _UNSAFE_TAG_CHARS.sub("_", value)[:MAX_TAG_VALUE] or "_"


def watch_tags(source: str, namespace: str, name: str) -> dict[str, str]:
    """The tags of per-watch metrics."""
    return {"source": tag_value(source), "namespace": tag_value(namespace), "name": tag_value(name)}


def incr(name: str, count: int = 1, *, source: str) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.incr(f"trigger_kit.{name}", count, tags={"source": source})
    except Exception:  # metrics must never break a watch
        log.debug("metric %s not emitted", name, exc_info=True)


def timing(name: str, seconds: float, *, source: str, tags: dict[str, str] | None = None) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.timing(f"trigger_kit.{name}", seconds * 1000.0, tags=tags or {"source": source})
    except Exception:
        log.debug("metric %s not emitted", name, exc_info=True)


def gauge(name: str, value: float, *, tags: dict[str, str]) -> None:
    stats = _stats()
    if stats is None:
        return
    try:
        stats.gauge(f"trigger_kit.{name}", value, tags=tags)
    except Exception:
        log.debug("metric %s not emitted", name, exc_info=True)
