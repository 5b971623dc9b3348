"""Detection of the layouts whose memory is the cursor alone (pure: listings and cursor in, items and cursor out).

The snapshot layout keeps its memory in chunks outside the cursor: see
:class:`~airflow_trigger_kit.sources.s3.snapshot_memory.SnapshotMemory` and
:func:`~airflow_trigger_kit.sources.s3.detect_snapshot.detect_snapshot`.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_trigger_kit.sources.base import JSON, Batch
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.detect_lexicographic import detect_lexicographic
from airflow_trigger_kit.sources.s3.detect_window import detect_window
from airflow_trigger_kit.sources.s3.listing import PrefixListing


def detect(
    config: S3WatchConfig,
    cursor: dict[str, JSON],
    listings: Sequence[PrefixListing],
    max_items: int,
) -> Batch:
    """Compare listings with the cursor; report at most ``max_items`` items and the covering cursor.

    ``listings`` holds one entry per configured prefix, in ``config.prefixes`` order.
    """
    if config.layout == "lexicographic":
        return detect_lexicographic(config, cursor, listings, max_items)
    if config.layout == "window":
        return detect_window(config, cursor, listings, max_items)
    raise ValueError(
        "the snapshot layout (event_kinds with 'modified' or 'deleted') keeps its memory in chunks outside the "
        "cursor: detect through SnapshotMemory.detect"
    )
