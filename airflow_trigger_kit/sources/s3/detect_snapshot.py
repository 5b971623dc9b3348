"""Detection for ``modified``/``deleted`` (the snapshot layout): listings against every tracked key.

Pure: the snapshots (already loaded from their chunks) and the listings come in; the batch, the new
snapshots and the chunk values to store before the batch is handed over go out. A key not in the
snapshot is ``created``, a known key with another ETag hash ``modified``, a known key missing from
the listing ``deleted``; an object that shrank below ``min_size`` is forgotten silently, and keys
that no longer match a changed ``glob``/``regex`` leave without a ``deleted``.

The cursor is ``{"v", "layout": "snapshot", "g": generation, "f": filter fingerprint,
"prefixes": {prefix: {"n": tracked objects, "m": [page refs]}}}``; see
:mod:`airflow_trigger_kit.sources.s3.snapshot_chunks` for the chunks and generations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_trigger_kit.sources.base import JSON, Batch, take_in_order
from airflow_trigger_kit.sources.s3.changes import Change, listing_stats, present_change
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.encodings import etag_hash
from airflow_trigger_kit.sources.s3.listing import PrefixListing
from airflow_trigger_kit.sources.s3.snapshot_chunks import Chunking, PrefixSnapshot, apply_edits, new_ref_factory


@dataclass
class SnapshotResult:
    batch: Batch
    snapshots: list[PrefixSnapshot]
    """The new snapshot of each prefix, in ``config.prefixes`` order."""
    written: dict[str, str]
    """Chunk and page values the new cursor references that are not stored yet: store them first."""


def filter_fingerprint(config: S3WatchConfig) -> str:
    """Identifies ``glob``/``regex``: while it is unchanged, every tracked key still matches."""
    text = json.dumps([list(config.glob), config.regex])
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def detect_snapshot(
    config: S3WatchConfig,
    cursor: dict[str, JSON],
    snapshots: Sequence[PrefixSnapshot],
    listings: Sequence[PrefixListing],
    max_items: int,
    chunking: Chunking,
) -> SnapshotResult:
    """Compare listings with snapshots; report at most ``max_items`` changes and the covering cursor.

    ``snapshots`` and ``listings`` hold one entry per configured prefix, in ``config.prefixes`` order.
    """
    fingerprint = filter_fingerprint(config)
    refilter = cursor.get("f") != fingerprint
    edits: list[dict[str, bytes | None]] = [{} for _ in listings]
    changes: list[Change] = []
    for i, (listing, snapshot) in enumerate(zip(listings, snapshots, strict=True)):
        known: dict[str, bytes] = {}
        for chunk in snapshot.chunks:
            known.update(zip(chunk.keys, chunk.hashes, strict=True))
        if refilter:
            # glob or regex changed: keys that no longer match leave silently, whatever the batch size.
            for key in [k for k in known if not config.matches_key(k)]:
                del known[key]
                edits[i][key] = None
        present: set[str] = set()
        still_listed = 0  # known keys in the listing: when all are, nothing was deleted
        for obj in listing.objects:
            if not config.matches_key(obj.key):
                continue
            present.add(obj.key)
            prev = known.get(obj.key)
            still_listed += prev is not None
            if not config.counts(obj):
                if prev is not None:  # shrank below min_size: forget it silently
                    changes.append(present_change(i, listing.prefix, "forget", obj))
                continue
            if prev is None:
                changes.append(present_change(i, listing.prefix, "created", obj))
            elif prev != etag_hash(obj.etag):
                changes.append(present_change(i, listing.prefix, "modified", obj))
        if still_listed < len(known):
            for key, h in known.items():
                if key not in present:
                    changes.append(Change(i, listing.prefix, "deleted", key, None, None, 0, None, h.hex()))

    # Apply changes in order up to the max_items-th reportable one, so the cursor never moves past a
    # change left for the next batch (changes that are not reported included).
    def apply(change: Change) -> None:
        edit = None if change.kind in ("deleted", "forget") else etag_hash(change.etag or "")
        edits[change.index][change.key] = edit

    taken, more = take_in_order(
        sorted(changes, key=Change.sort_key),
        reported=lambda change: change.kind in config.event_kinds,
        apply=apply,
        max_items=max_items,
    )
    generation = int(cursor.get("g") or 0)
    new_ref = new_ref_factory(generation + 1)
    new_snapshots: list[PrefixSnapshot] = []
    written: dict[str, str] = {}
    for snapshot, prefix_edits in zip(snapshots, edits, strict=True):
        updated, values = apply_edits(snapshot, prefix_edits, chunking, new_ref)
        new_snapshots.append(updated)
        written.update(values)
    prefixes: dict[str, JSON] = {
        listing.prefix: {"n": len(snapshot), "m": [p.ref for p in snapshot.pages]}
        for listing, snapshot in zip(listings, new_snapshots, strict=True)
    }
    new_cursor = {**cursor, "g": generation + 1 if written else generation, "f": fingerprint, "prefixes": prefixes}
    return SnapshotResult(
        batch=Batch(
            items=[c.item(config.bucket) for c in taken], cursor=new_cursor, more=more, stats=listing_stats(listings)
        ),
        snapshots=new_snapshots,
        written=written,
    )
