"""Detection for ``modified``/``deleted``: every tracked object's key and ETag hash."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError, take_in_order
from airflow_trigger_kit.sources.s3.changes import Change, listing_stats, present_change
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.encodings import decode_snapshot, encode_snapshot, etag_hash
from airflow_trigger_kit.sources.s3.listing import PrefixListing


def _load_snapshot(raw: Any) -> dict[str, bytes]:
    if raw is None:
        return {}
    try:
        return decode_snapshot(raw["z"])
    except (KeyError, TypeError, ValueError, zlib.error, UnicodeDecodeError) as exc:
        raise PermanentSourceError(
            f"the stored S3 snapshot cursor is damaged ({exc}); reset it with `trigger-kit state reset NAMESPACE NAME`"
        ) from None


def detect_snapshot(
    config: S3WatchConfig, cursor: dict[str, JSON], listings: Sequence[PrefixListing], max_items: int
) -> Batch:
    old: dict[str, Any] = cursor["prefixes"]
    # Keys that no longer match (glob or regex changed) leave the snapshot without being reported.
    snapshots = [
        {k: h for k, h in _load_snapshot(old.get(listing.prefix)).items() if config.matches_key(k)}
        for listing in listings
    ]
    changes: list[Change] = []
    for i, listing in enumerate(listings):
        known = snapshots[i]
        present: set[str] = set()
        for obj in listing.objects:
            if not config.matches_key(obj.key):
                continue
            present.add(obj.key)
            prev = known.get(obj.key)
            if not config.counts(obj):
                if prev is not None:  # shrank below min_size: forget it silently
                    changes.append(present_change(i, listing.prefix, "forget", obj))
                continue
            if prev is None:
                changes.append(present_change(i, listing.prefix, "created", obj))
            elif prev != etag_hash(obj.etag):
                changes.append(present_change(i, listing.prefix, "modified", obj))
        for key, h in known.items():
            if key not in present:
                changes.append(Change(i, listing.prefix, "deleted", key, None, None, 0, None, h.hex()))

    # Apply changes in order up to the max_items-th reportable one, so the cursor never moves past a
    # change left for the next batch (changes that are not reported included).
    def apply(change: Change) -> None:
        known = snapshots[change.index]
        if change.kind in ("deleted", "forget"):
            known.pop(change.key, None)
        else:
            known[change.key] = etag_hash(change.etag or "")

    taken, more = take_in_order(
        sorted(changes, key=Change.sort_key),
        reported=lambda change: change.kind in config.event_kinds,
        apply=apply,
        max_items=max_items,
    )
    prefixes: dict[str, JSON] = {
        listing.prefix: {"n": len(known), "z": encode_snapshot(known)}
        for listing, known in zip(listings, snapshots, strict=True)
    }
    return Batch(
        items=[c.item(config.bucket) for c in taken],
        cursor={**cursor, "prefixes": prefixes},
        more=more,
        stats=listing_stats(listings),
    )
