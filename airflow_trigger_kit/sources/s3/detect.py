"""Detection (pure: listings and cursor in, items and cursor out), dispatched by cursor layout."""

from __future__ import annotations

from collections.abc import Sequence

from airflow_trigger_kit.sources.base import JSON, Batch
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.detect_lexicographic import detect_lexicographic
from airflow_trigger_kit.sources.s3.detect_snapshot import detect_snapshot
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
    return detect_snapshot(config, cursor, listings, max_items)
