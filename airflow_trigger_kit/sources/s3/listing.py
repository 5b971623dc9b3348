"""What one poll lists: ListObjectsV2 pages turned into objects, per prefix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_trigger_kit.sources.base import TransientSourceError
from airflow_trigger_kit.sources.s3.objects import S3Object

if TYPE_CHECKING:
    from airflow_trigger_kit.sources.s3.config import S3WatchConfig

PAGE_SIZE = 1000
LIST_CONCURRENCY = 4


@dataclass
class PrefixListing:
    """What one poll listed under one prefix.

    ``objects`` are the listed objects whose key matches the watch (in key order; other filters
    may already have dropped some); ``predecessors[i]`` is the key listed just before
    ``objects[i]`` (or the ``StartAfter`` key), which the lexicographic cursor stops at when
    ``objects[i]`` is left for the next batch. ``last_key`` is the last key listed at all.
    """

    prefix: str
    objects: list[S3Object] = field(default_factory=list)
    predecessors: list[str | None] = field(default_factory=list)
    last_key: str | None = None
    complete: bool = True
    requests: int = 0
    listed: int = 0


def keep_only(listing: PrefixListing, keep: Callable[[S3Object], bool]) -> PrefixListing:
    """What a watch keeps of a full listing (shared with other watches): the same as listing with ``keep``."""
    kept = PrefixListing(prefix=listing.prefix, last_key=listing.last_key, complete=listing.complete)
    kept.requests, kept.listed = listing.requests, listing.listed
    for obj, previous in zip(listing.objects, listing.predecessors, strict=True):
        if keep(obj):
            kept.objects.append(obj)
            kept.predecessors.append(previous)
    return kept


async def list_prefix(
    client: Any,
    config: S3WatchConfig,
    prefix: str,
    *,
    start_after: str | None,
    keep: Callable[[S3Object], bool],
    stop_after: int | None,
    classify: Callable[[BaseException], Exception],
    conn_id: str | None,
) -> PrefixListing:
    """List ``prefix`` page by page (from ``start_after``), keeping the objects ``keep`` accepts.

    Stops early, with ``complete=False``, once ``stop_after`` reportable objects were kept (the
    lexicographic layout reads a large backlog one batch at a time). A failed request is raised
    as ``classify(exc)`` (permanent or transient).
    """
    params: dict[str, Any] = {"Bucket": config.bucket, "Prefix": prefix, "MaxKeys": PAGE_SIZE}
    if start_after:
        params["StartAfter"] = start_after
    listing = PrefixListing(prefix=prefix)
    previous = start_after
    reportable = 0
    while True:
        try:
            response = await client.list_objects_v2(**params)
        except Exception as exc:
            mapped = classify(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        listing.requests += 1
        for raw in response.get("Contents", ()):
            obj = S3Object.from_listing(raw)
            listing.listed += 1
            if keep(obj):
                listing.objects.append(obj)
                listing.predecessors.append(previous)
                if config.counts(obj):
                    reportable += 1
            previous = obj.key
        listing.last_key = previous if previous != start_after else None
        if not response.get("IsTruncated"):
            listing.complete = True
            return listing
        if stop_after is not None and reportable >= stop_after:
            listing.complete = False
            return listing
        token = response.get("NextContinuationToken")
        if not token:
            raise TransientSourceError(
                f"S3 returned a truncated listing of s3://{config.bucket}/{prefix} without a continuation "
                f"token (aws_conn_id={conn_id!r}); retrying"
            )
        params["ContinuationToken"] = token
