"""Pure detection logic: "what is new since this cursor", with no Airflow import.

A source turns a cursor (a JSON value, or ``None`` for "from the beginning") into a
:class:`~airflow_trigger_kit.sources.base.Batch` of items plus the cursor after them. The triggers in
:mod:`airflow_trigger_kit.triggers` decide when to poll and when a cursor becomes durable.
"""

from airflow_trigger_kit.sources.base import (
    Batch,
    Item,
    PermanentSourceError,
    Source,
    TransientSourceError,
    stable_id,
)

__all__ = ["Batch", "Item", "PermanentSourceError", "Source", "TransientSourceError", "stable_id"]
