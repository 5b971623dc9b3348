"""Commit a sensor's watermark, from the sensor itself or from a downstream task (``commit="manual"``).

A sensor's event payload carries ``commit = {"key", "expected_version", "cursor"}``: the cursor that
covers the reported items and the version the sensor started from. Committing is a compare-and-set,
so two runs that saw the same data cannot both move the watermark, and committing the same payload
twice (a retried task) is recognised and accepted.
"""

from __future__ import annotations

from typing import Any

from airflow_trigger_kit import telemetry
from airflow_trigger_kit._sync import run_sync
from airflow_trigger_kit.state import ProcessState, StateConflict


async def acommit_watermark(payload: dict[str, Any], *, state: ProcessState | None = None) -> int:
    """Commit the cursor carried by a sensor payload; return the stored version.

    Raises ``StateConflict`` when the watermark moved since the sensor read it (another run
    committed first): nothing is written, and the next run starts from the newer watermark.
    """
    try:
        commit = payload["commit"]
        watch = payload["watch"]
        key, cursor, expected = commit["key"], commit["cursor"], commit["expected_version"]
    except (KeyError, TypeError):
        raise ValueError(
            "payload has no commit information: pass the value a sensor returned with commit='manual' "
            f"(got keys {sorted(payload) if isinstance(payload, dict) else type(payload).__name__})"
        ) from None
    state = state or ProcessState(watch["namespace"], watch["name"])
    try:
        version = await state.aset(key, cursor, expected_version=expected)
    except StateConflict:
        entry = await state.aget(key)
        if entry is not None and entry.value == cursor:
            return entry.version  # this very cursor was committed already (a retried task)
        raise
    await telemetry.sensor_committed(payload, state, version)
    return version


def commit_watermark(payload: dict[str, Any], *, state: ProcessState | None = None) -> int:
    """Sync twin of :func:`acommit_watermark`, for tasks."""
    return run_sync(acommit_watermark(payload, state=state))
