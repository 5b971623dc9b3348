"""Detection for ``key_order="lexicographic"``: per prefix the last key passed, sent as ``StartAfter``."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Batch
from airflow_trigger_kit.sources.s3.changes import Change, listing_stats, present_change
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.listing import PrefixListing
from airflow_trigger_kit.sources.s3.objects import S3Object


def detect_lexicographic(
    config: S3WatchConfig, cursor: dict[str, JSON], listings: Sequence[PrefixListing], max_items: int
) -> Batch:
    old: dict[str, Any] = cursor["prefixes"]
    # Per prefix, the reportable objects in key order (with the key listed before each).
    queues: list[list[tuple[S3Object, str | None]]] = []
    for listing in listings:
        queues.append([(o, p) for o, p in zip(listing.objects, listing.predecessors, strict=True) if config.counts(o)])
    # Merge the per-prefix queues oldest first, keeping each prefix in key order (its cursor is a key).
    heap = [(q[0][0].last_modified, i, q[0][0].key) for i, q in enumerate(queues) if q]
    heapq.heapify(heap)
    positions = [0] * len(queues)
    taken: list[Change] = []
    while heap and len(taken) < max_items:
        _, i, _ = heapq.heappop(heap)
        obj, _ = queues[i][positions[i]]
        taken.append(present_change(i, listings[i].prefix, "created", obj))
        positions[i] += 1
        if positions[i] < len(queues[i]):
            nxt = queues[i][positions[i]][0]
            heapq.heappush(heap, (nxt.last_modified, i, nxt.key))
    prefixes: dict[str, JSON] = {}
    more = False
    for i, listing in enumerate(listings):
        if positions[i] < len(queues[i]):
            more = True
            prefixes[listing.prefix] = queues[i][positions[i]][1]  # just before the first left-out key
        else:
            prefixes[listing.prefix] = listing.last_key if listing.last_key is not None else old.get(listing.prefix)
    return Batch(
        items=[c.item(config.bucket) for c in taken],
        cursor={**cursor, "prefixes": prefixes},
        more=more,
        stats=listing_stats(listings),
    )
