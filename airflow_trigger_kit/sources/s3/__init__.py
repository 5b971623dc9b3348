"""S3 detection: new, overwritten and deleted objects under one or more prefixes of a bucket.

Design and invariants (the cursor is what makes the watch exact, so read this before changing it):

* **Listing.** ``ListObjectsV2`` pages of up to 1,000 keys (``MaxKeys=1000``), in S3's key order,
  through one aiobotocore client per trigger run, created on the first poll and closed in
  :meth:`S3Source.aclose`. Prefixes are listed concurrently (at most four at a time). Nothing
  blocks the event loop: requests are async, and the pure comparison of a large listing with the
  cursor runs in a worker thread.
* **Which objects count.** Keys under a prefix that match ``glob`` (fnmatch on the full key, ``*``
  also matches ``/``; several globs: any) or ``regex`` (``re.search`` on the full key), that are
  not zero-byte "folder" markers (keys ending in ``/``), and whose size is at least ``min_size``.
* **Identity.** An object version is ``(key, ETag)``: an overwrite changes the ETag. An identical
  rewrite (same bytes, same ETag) is not a change. Dedup ids are
  ``stable_id("s3", bucket, key, ETag, kind)``, so a repeat after a crash carries the same id.
* **LastModified** has one-second precision in listings (sub-second parts some S3-compatible
  stores return are dropped for the comparison), many objects share one second, and a multipart
  upload's LastModified is the time the upload *started*, so it can be older than objects already
  seen. The cursors below are built so none of this loses or repeats an object.
* **Three cursor layouts**, chosen by ``key_order`` and ``event_kinds``:

  - ``key_order="lexicographic"`` — *lexicographic*: per prefix the last key passed,
    ``{"prefixes": {prefix: key | null}}``, sent as ``StartAfter``. For keys that grow over time
    (dates, sequence numbers). An empty poll is one request per prefix whatever the bucket size.
    Keys that sort before the cursor, overwrites and deletions are never seen, so only
    ``created`` is allowed. Size: the prefixes and one key (at most 1 KiB) each.
  - ``key_order="any"`` with ``event_kinds=["created"]`` — *window*: per prefix a ``floor``
    (epoch seconds; everything older counts as seen), the high watermark ``hwm`` (the newest
    LastModified reported) and an ``edge``: 8-byte BLAKE2b hashes of ``(key, ETag)`` of the
    versions reported with LastModified in ``[floor, hwm]``, grouped by second and packed
    (``base64(varint second delta, varint count, hashes...)``). A version is new when its
    LastModified is ``>= floor`` and its hash is not in the edge; after each batch
    ``floor = max(floor, hwm - lookback_seconds)`` and older groups are dropped. The edge makes
    objects that share one second exact; the window makes late arrivals (multipart uploads,
    in-flight PUTs that finish out of order) exact as long as they arrive within
    ``lookback_seconds`` of the newest object seen — set it above your longest upload. The floor
    never moves back, so changing ``lookback_seconds`` never re-fires old objects. Every new
    version counts as ``created``: telling an overwrite from a new key needs the snapshot.
    Size: about 10.7 bytes per object whose LastModified falls in the window (13.4 when objects
    arrive one per second), plus ~60 bytes per prefix: the default 64 KiB state limit holds about
    6,000 objects landed within one ``lookback_seconds``.
  - ``key_order="any"`` with ``modified`` or ``deleted`` — *snapshot*: per prefix every tracked
    object, ``{key: 6-byte BLAKE2b hash of its ETag}``. A key not in the snapshot is
    ``created``, a known key with another ETag is ``modified``, a known key absent from the
    listing is ``deleted``. Exact without any time reasoning (a late multipart upload is simply a
    new key). The per-key memory is **not in the cursor**: it is cut into content-defined chunks
    (front-coded, zlib, base64; about 8 KiB of entries each) stored as values of their own next
    to the cursor in the watch's ProcessState, listed by pages; the cursor holds per prefix the
    page refs and a count, plus a generation ``g`` — about 130 bytes for one prefix, whatever
    the number of objects. Chunks are written before the batch leaves the source, so a committed
    cursor always names stored chunks; unchanged chunks keep their refs, so a change rewrites
    only the chunks it touches; chunks no committable cursor can reference are deleted by
    generation. Design, invariants and crash behaviour:
    :mod:`~airflow_trigger_kit.sources.s3.snapshot_chunks` and
    :mod:`~airflow_trigger_kit.sources.s3.snapshot_memory`. Stored size: about 11 bytes per
    object for sequential or date-partitioned keys, about 41 for random keys such as UUIDs
    (100,000 UUID keys: 4.1 MB in ~720 values, none over 24 KB). Keys that stop matching a
    changed ``glob``/``regex`` leave the snapshot without being reported; an object shrinking
    below ``min_size`` likewise.

* **Cost per poll.** lexicographic: one LIST request per prefix when nothing is new (plus one per
  1,000 new keys); any: ``ceil(objects under the prefix / 1000)`` LIST requests per prefix. The
  snapshot layout adds no state request to an idle poll once its chunks are loaded (one bulk
  read when a source starts), one state read while its newest cursor is not committed yet, and
  one bulk write of the touched chunks and pages per poll that found changes.
* **Truncation.** Candidates are ordered by ``(LastModified, prefix, key)`` (deletions last); the
  first ``max_items`` are reported and the cursor moves only past them (and past changes before
  them that are not reported), so the rest come next. In the lexicographic layout each prefix
  stays in key order (the prefixes' queues are merged oldest first), each prefix's cursor stops
  just before its first left-out key, and listing stops once more than ``max_items`` candidates
  were found, so a large backlog costs only the pages of the next batch (one page when
  ``max_items`` < 1,000).
* **Prefixes** must not overlap (an object would be reported twice). A prefix added to a watch
  starts from its beginning; state of a removed prefix is dropped.
* **Errors.** ``NoSuchBucket``, ``AccessDenied``, rejected credentials (``InvalidAccessKeyId``,
  ``SignatureDoesNotMatch``, expired tokens), a wrong region and other 4xx answers raise
  :class:`~airflow_trigger_kit.sources.base.PermanentSourceError` naming bucket, prefix and conn
  id. Throttling (``SlowDown``, 503, ``RequestTimeout``), 5xx answers and network errors
  (``EndpointConnectionError``, timeouts, closed connections) raise
  :class:`~airflow_trigger_kit.sources.base.TransientSourceError` and are retried with backoff.

Modules: ``config`` (parameters and their validation), ``naming`` (bucket naming rules, prefix
warnings), ``listing`` (ListObjectsV2 pages to objects), ``encodings`` (varints, hashes, packed
edges and snapshot entries), ``cursor`` (envelope and validation), ``changes`` (a detected change
and its item), ``detect`` with one ``detect_*`` module per layout, ``snapshot_chunks`` (the
snapshot's content-defined chunks), ``snapshot_store`` (where chunks live), ``snapshot_memory``
(loading, storing and collecting chunks per poll), ``errors`` (permanent or transient),
``source`` (:class:`S3Source`). Every name other modules use is re-exported here.
"""

from __future__ import annotations

from airflow_trigger_kit.sources.s3.config import EVENT_KINDS, KEY_ORDERS, S3WatchConfig
from airflow_trigger_kit.sources.s3.cursor import CURSOR_VERSION, check_cursor, empty_cursor
from airflow_trigger_kit.sources.s3.detect import detect
from airflow_trigger_kit.sources.s3.encodings import (
    EDGE_HASH_BYTES,
    SNAPSHOT_HASH_BYTES,
    decode_edge,
    decode_snapshot,
    encode_edge,
    encode_snapshot,
    etag_hash,
    version_hash,
)
from airflow_trigger_kit.sources.s3.errors import CREDENTIAL_CODES, PERMANENT_CODES, TRANSIENT_CODES, classify_error
from airflow_trigger_kit.sources.s3.listing import LIST_CONCURRENCY, PAGE_SIZE, PrefixListing
from airflow_trigger_kit.sources.s3.objects import S3Object
from airflow_trigger_kit.sources.s3.source import ClientConfigResolver, S3Source

__all__ = [
    "CREDENTIAL_CODES",
    "CURSOR_VERSION",
    "EDGE_HASH_BYTES",
    "EVENT_KINDS",
    "KEY_ORDERS",
    "LIST_CONCURRENCY",
    "PAGE_SIZE",
    "PERMANENT_CODES",
    "SNAPSHOT_HASH_BYTES",
    "TRANSIENT_CODES",
    "ClientConfigResolver",
    "PrefixListing",
    "S3Object",
    "S3Source",
    "S3WatchConfig",
    "check_cursor",
    "classify_error",
    "decode_edge",
    "decode_snapshot",
    "detect",
    "empty_cursor",
    "encode_edge",
    "encode_snapshot",
    "etag_hash",
    "version_hash",
]
