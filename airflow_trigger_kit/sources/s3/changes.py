"""One detected change, the order batches are cut in, and the items it becomes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from airflow_trigger_kit.sources.base import JSON, Item, stable_id
from airflow_trigger_kit.sources.s3.listing import PrefixListing
from airflow_trigger_kit.sources.s3.objects import S3Object


@dataclass(frozen=True)
class Change:
    index: int  # position of the prefix in config.prefixes
    prefix: str
    kind: str
    key: str
    etag: str | None
    size: int | None
    last_modified: int
    last_modified_iso: str | None
    token: str  # what identifies the version in the dedup id (the ETag, or its stored hash)

    def sort_key(self) -> tuple[int, int, int, str]:
        # Deletions carry no time of their own; they sort after every present object.
        return (1 if self.kind == "deleted" else 0, self.last_modified, self.index, self.key)

    def item(self, bucket: str) -> Item:
        data: dict[str, JSON] = {
            "kind": self.kind,
            "bucket": bucket,
            "key": self.key,
            "uri": f"s3://{bucket}/{self.key}",
            "prefix": self.prefix,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified_iso,
        }
        return Item(stable_id("s3", bucket, self.key, self.token, self.kind), data)


def present_change(index: int, prefix: str, kind: str, obj: S3Object) -> Change:
    return Change(index, prefix, kind, obj.key, obj.etag, obj.size, obj.last_modified, obj.last_modified_iso, obj.etag)


def listing_stats(listings: Iterable[PrefixListing]) -> dict[str, JSON]:
    listings = list(listings)
    return {
        "list_requests": sum(x.requests for x in listings),
        "objects_listed": sum(x.listed for x in listings),
    }
