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
    object, ``{key: 6-byte BLAKE2b hash of its ETag}``, front-coded in key order, zlib-compressed
    and base64-encoded. A key not in the snapshot is ``created``, a known key with another ETag
    is ``modified``, a known key absent from the listing is ``deleted``. Exact without any time
    reasoning (a late multipart upload is simply a new key). Size grows with the number of
    matching objects (not with history): about 10.3 bytes per object for sequential or
    date-partitioned keys (about 6,300 objects in 64 KiB), about 40 bytes for random keys such as
    UUIDs (about 1,600); narrow it with ``glob``/``regex`` or raise
    ``[trigger_kit] state_max_value_bytes``. Keys that stop matching a changed ``glob``/``regex``
    leave the snapshot without being reported; an object shrinking below ``min_size`` likewise.

* **Cost per poll.** lexicographic: one LIST request per prefix when nothing is new (plus one per
  1,000 new keys); any: ``ceil(objects under the prefix / 1000)`` LIST requests per prefix.
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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import heapq
import logging
import math
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_trigger_kit.aws_connection import AwsClientConfig, redact_url
from airflow_trigger_kit.sources.base import (
    JSON,
    Batch,
    Item,
    PermanentSourceError,
    Source,
    TransientSourceError,
    stable_id,
    take_in_order,
)
from airflow_trigger_kit.sources.globs import check_globs

log = logging.getLogger(__name__)

EVENT_KINDS = ("created", "modified", "deleted")
KEY_ORDERS = ("any", "lexicographic")
CURSOR_VERSION = 1
PAGE_SIZE = 1000
LIST_CONCURRENCY = 4
EDGE_HASH_BYTES = 8
SNAPSHOT_HASH_BYTES = 6
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")

PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
        "InvalidArgument",
        "InvalidRequest",
        "NotSignedUp",
        "RequestTimeTooSkewed",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "500",
        "502",
        "503",
        "504",
    }
)
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3WatchConfig:
    """Validated, normalized parameters of an S3 watch."""

    bucket: str
    prefixes: tuple[str, ...] = ("",)
    glob: tuple[str, ...] = ()
    regex: str | None = None
    min_size: int = 0
    event_kinds: tuple[str, ...] = ("created",)
    key_order: str = "any"
    lookback_seconds: int = 3600

    @classmethod
    def create(
        cls,
        *,
        bucket: str,
        prefixes: str | Sequence[str] = "",
        glob: str | Sequence[str] | None = None,
        regex: str | None = None,
        min_size: int = 0,
        event_kinds: str | Sequence[str] = ("created",),
        key_order: str = "any",
        lookback_seconds: float = 3600,
    ) -> S3WatchConfig:
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket must be a non-empty bucket name, got {bucket!r}")
        if bucket.startswith("s3://") or "/" in bucket:
            raise ValueError(
                f"bucket must be a bare bucket name (put the key part in prefixes), got {bucket!r}; "
                "for 's3://my-bucket/landing/' use bucket='my-bucket', prefixes='landing/'"
            )
        if not _BUCKET_RE.match(bucket):
            raise ValueError(
                f"bucket must be 3-255 characters of letters, digits, '.', '-' or '_' "
                f"(starting and ending with a letter or digit), got {bucket!r}"
            )
        prefix_list = _string_list("prefixes", prefixes, allow_empty_string=True)
        if not prefix_list:
            raise ValueError("prefixes must name at least one prefix ('' watches the whole bucket), got []")
        for i, p in enumerate(prefix_list):
            if p in prefix_list[:i]:
                raise ValueError(f"prefixes lists {p!r} twice")
        for a in prefix_list:
            for b in prefix_list:
                if a != b and b.startswith(a):
                    raise ValueError(
                        f"prefixes {a!r} and {b!r} overlap (every key under {b!r} is also under {a!r}) "
                        "and would report objects twice; keep only one of them"
                    )
        globs = _string_list("glob", glob)
        check_globs("glob", globs)
        if globs and regex is not None:
            raise ValueError(f"give glob or regex, not both (got glob={globs!r}, regex={regex!r})")
        if regex is not None:
            if not isinstance(regex, str) or not regex:
                raise ValueError(f"regex must be a non-empty regular expression string, got {regex!r}")
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"regex is not a valid regular expression: {regex!r} ({exc})") from None
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ValueError(f"min_size must be an integer number of bytes >= 0, got {min_size!r}")
        if key_order not in KEY_ORDERS:
            raise ValueError(f"key_order must be 'any' or 'lexicographic', got {key_order!r}")
        kinds = _event_kinds(event_kinds)
        if key_order == "lexicographic" and kinds != ("created",):
            raise ValueError(
                f"event_kinds={list(kinds)!r} needs key_order='any': with key_order='lexicographic' the watch "
                "lists only keys after its cursor, so it never sees an overwrite or a deletion of a key it "
                "already passed; use event_kinds=['created'] or key_order='any'"
            )
        if (
            isinstance(lookback_seconds, bool)
            or not isinstance(lookback_seconds, (int, float))
            or not math.isfinite(lookback_seconds)
            or lookback_seconds < 0
        ):
            raise ValueError(f"lookback_seconds must be a number of seconds >= 0, got {lookback_seconds!r}")
        if lookback_seconds != int(lookback_seconds):
            raise ValueError(
                f"lookback_seconds must be a whole number of seconds (LastModified has 1-second precision), "
                f"got {lookback_seconds!r}"
            )
        return cls(
            bucket=bucket,
            prefixes=tuple(prefix_list),
            glob=tuple(globs),
            regex=regex,
            min_size=min_size,
            event_kinds=kinds,
            key_order=key_order,
            lookback_seconds=int(lookback_seconds),
        )

    def to_kwargs(self) -> dict[str, JSON]:
        return {
            "bucket": self.bucket,
            "prefixes": list(self.prefixes),
            "glob": list(self.glob) or None,
            "regex": self.regex,
            "min_size": self.min_size,
            "event_kinds": list(self.event_kinds),
            "key_order": self.key_order,
            "lookback_seconds": self.lookback_seconds,
        }

    @property
    def layout(self) -> str:
        if self.key_order == "lexicographic":
            return "lexicographic"
        return "window" if self.event_kinds == ("created",) else "snapshot"

    def matches_key(self, key: str) -> bool:
        """Whether ``key`` is one of the watched objects (sizes are checked separately)."""
        if self.glob and not any(fnmatch.fnmatchcase(key, g) for g in self.glob):
            return False
        return self.regex is None or re.search(self.regex, key) is not None

    def counts(self, obj: S3Object) -> bool:
        """Whether ``obj`` is reported at all: matching key, not a folder marker, big enough."""
        if obj.key.endswith("/") and obj.size == 0:
            return False
        return obj.size >= self.min_size and self.matches_key(obj.key)


def _string_list(param: str, value: str | Sequence[str] | None, *, allow_empty_string: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        values: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise ValueError(f"{param} must be a string or a list of strings, got {value!r}")
    for v in values:
        if not isinstance(v, str) or (not v and not allow_empty_string):
            raise ValueError(f"{param} must hold non-empty strings, got {v!r} in {values!r}")
    return list(values)


def _event_kinds(value: str | Sequence[str]) -> tuple[str, ...]:
    kinds = _string_list("event_kinds", value)
    if kinds == ["all"]:
        return EVENT_KINDS
    bad = [k for k in kinds if k not in EVENT_KINDS]
    if bad or not kinds:
        raise ValueError(f"event_kinds must be 'all' or a list of {', '.join(EVENT_KINDS)}; got {value!r}")
    return tuple(k for k in EVENT_KINDS if k in kinds)


# --------------------------------------------------------------------------------------------------
# Listings
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Object:
    """One object from a listing. ``last_modified`` is whole epoch seconds (S3's precision)."""

    key: str
    etag: str
    size: int
    last_modified: int
    last_modified_iso: str

    @classmethod
    def from_listing(cls, raw: dict[str, Any]) -> S3Object:
        lm = raw.get("LastModified")
        if isinstance(lm, datetime):
            if lm.tzinfo is None:
                lm = lm.replace(tzinfo=timezone.utc)
            lm = lm.astimezone(timezone.utc)
        else:
            lm = datetime.fromtimestamp(0, tz=timezone.utc)
        return cls(
            key=str(raw["Key"]),
            etag=str(raw.get("ETag") or "").strip('"'),
            size=int(raw.get("Size") or 0),
            last_modified=int(lm.timestamp()),
            last_modified_iso=lm.isoformat(),
        )


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


# --------------------------------------------------------------------------------------------------
# Compact encodings
# --------------------------------------------------------------------------------------------------
def _varint(n: int, out: bytearray) -> None:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def version_hash(key: str, etag: str) -> bytes:
    """8-byte hash of an object version ``(key, ETag)`` (the window layout's edge entries)."""
    return hashlib.blake2b(f"{key}\x1f{etag}".encode(), digest_size=EDGE_HASH_BYTES).digest()


def etag_hash(etag: str) -> bytes:
    """6-byte hash of an ETag (the snapshot layout's change check)."""
    return hashlib.blake2b(etag.encode(), digest_size=SNAPSHOT_HASH_BYTES).digest()


def encode_edge(floor: int, edge: dict[int, set[bytes]]) -> str:
    """``{second: {hash, ...}}`` -> base64 of (varint second delta, varint count, sorted hashes)..."""
    out = bytearray()
    previous = floor
    for second in sorted(edge):
        hashes = sorted(edge[second])
        if not hashes:
            continue
        _varint(second - previous, out)
        _varint(len(hashes), out)
        for h in hashes:
            out += h
        previous = second
    return base64.b64encode(bytes(out)).decode("ascii")


def decode_edge(floor: int, text: str) -> dict[int, set[bytes]]:
    data = base64.b64decode(text.encode("ascii"), validate=True)
    edge: dict[int, set[bytes]] = {}
    pos, second = 0, floor
    while pos < len(data):
        delta, pos = _read_varint(data, pos)
        count, pos = _read_varint(data, pos)
        second += delta
        end = pos + count * EDGE_HASH_BYTES
        if end > len(data):
            raise ValueError("truncated edge")
        edge[second] = {data[i : i + EDGE_HASH_BYTES] for i in range(pos, end, EDGE_HASH_BYTES)}
        pos = end
    return edge


def encode_snapshot(known: dict[str, bytes]) -> str:
    """``{key: etag hash}`` -> base64(zlib(front-coded keys, each followed by its hash)), in key order."""
    out = bytearray()
    previous = b""
    for key in sorted(known):
        raw = key.encode("utf-8")
        shared = 0
        limit = min(len(raw), len(previous))
        while shared < limit and raw[shared] == previous[shared]:
            shared += 1
        _varint(shared, out)
        _varint(len(raw) - shared, out)
        out += raw[shared:]
        out += known[key]
        previous = raw
    return base64.b64encode(zlib.compress(bytes(out), 9)).decode("ascii")


def decode_snapshot(text: str) -> dict[str, bytes]:
    data = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    known: dict[str, bytes] = {}
    pos, previous = 0, b""
    while pos < len(data):
        shared, pos = _read_varint(data, pos)
        length, pos = _read_varint(data, pos)
        raw = previous[:shared] + data[pos : pos + length]
        pos += length
        h = data[pos : pos + SNAPSHOT_HASH_BYTES]
        if len(h) != SNAPSHOT_HASH_BYTES:
            raise ValueError("truncated snapshot")
        pos += SNAPSHOT_HASH_BYTES
        known[raw.decode("utf-8")] = h
        previous = raw
    return known


# --------------------------------------------------------------------------------------------------
# Cursors
# --------------------------------------------------------------------------------------------------
def empty_cursor(config: S3WatchConfig) -> dict[str, JSON]:
    return {"v": CURSOR_VERSION, "layout": config.layout, "prefixes": {}}


def check_cursor(config: S3WatchConfig, cursor: JSON) -> dict[str, JSON]:
    """The stored cursor, validated against the configuration (a mismatch is permanent)."""
    if (
        not isinstance(cursor, dict)
        or cursor.get("v") != CURSOR_VERSION
        or not isinstance(cursor.get("prefixes"), dict)
    ):
        raise PermanentSourceError(
            f"the stored cursor is not an S3-watch cursor (version {CURSOR_VERSION}): {str(cursor)[:200]!r}; "
            "reset it with `trigger-kit state reset NAMESPACE NAME`"
        )
    if cursor.get("layout") != config.layout:
        raise PermanentSourceError(
            f"key_order/event_kinds changed: the stored cursor has the {cursor.get('layout')!r} layout but "
            f"key_order={config.key_order!r} with event_kinds={list(config.event_kinds)} needs {config.layout!r}; "
            "reset the watch with `trigger-kit state reset NAMESPACE NAME` (choosing start_from) to switch"
        )
    return cursor


@dataclass
class _WindowState:
    floor: int = 0
    hwm: int | None = None
    edge: dict[int, set[bytes]] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    """Every hash of the edge, flat, for O(1) lookups."""

    @classmethod
    def load(cls, raw: Any) -> _WindowState:
        if raw is None:
            return cls()
        try:
            floor = int(raw["floor"])
            hwm = None if raw.get("hwm") is None else int(raw["hwm"])
            edge = decode_edge(floor, raw["edge"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentSourceError(
                f"the stored S3 window cursor is damaged ({exc}); "
                "reset it with `trigger-kit state reset NAMESPACE NAME`"
            ) from None
        return cls(floor=floor, hwm=hwm, edge=edge, seen=set().union(*edge.values()))

    def add(self, second: int, h: bytes) -> None:
        self.hwm = second if self.hwm is None else max(self.hwm, second)
        self.edge.setdefault(second, set()).add(h)
        self.seen.add(h)

    def advance(self, lookback_seconds: int) -> None:
        """Move the floor up to ``hwm - lookback_seconds`` (never down) and drop older groups."""
        if self.hwm is not None:
            self.floor = max(self.floor, self.hwm - lookback_seconds)
        self.edge = {s: hs for s, hs in self.edge.items() if s >= self.floor}
        self.seen = set().union(*self.edge.values())

    def dump(self) -> dict[str, JSON]:
        return {
            "floor": self.floor,
            "hwm": self.hwm,
            "n": sum(len(v) for v in self.edge.values()),
            "edge": encode_edge(self.floor, self.edge),
        }


def _stored_floor(raw: Any) -> int:
    """The floor of a stored window state without decoding its edge (0 for a new prefix)."""
    if isinstance(raw, dict) and isinstance(raw.get("floor"), int):
        return int(raw["floor"])
    return 0


def _load_snapshot(raw: Any) -> dict[str, bytes]:
    if raw is None:
        return {}
    try:
        return decode_snapshot(raw["z"])
    except (KeyError, TypeError, ValueError, zlib.error, UnicodeDecodeError) as exc:
        raise PermanentSourceError(
            f"the stored S3 snapshot cursor is damaged ({exc}); reset it with `trigger-kit state reset NAMESPACE NAME`"
        ) from None


# --------------------------------------------------------------------------------------------------
# Detection (pure: listings + cursor in, items + cursor out)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Change:
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


def _present(index: int, prefix: str, kind: str, obj: S3Object) -> _Change:
    return _Change(index, prefix, kind, obj.key, obj.etag, obj.size, obj.last_modified, obj.last_modified_iso, obj.etag)


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
        return _detect_lexicographic(config, cursor, listings, max_items)
    if config.layout == "window":
        return _detect_window(config, cursor, listings, max_items)
    return _detect_snapshot(config, cursor, listings, max_items)


def _stats(listings: Iterable[PrefixListing]) -> dict[str, JSON]:
    listings = list(listings)
    return {
        "list_requests": sum(x.requests for x in listings),
        "objects_listed": sum(x.listed for x in listings),
    }


def _detect_lexicographic(
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
    taken: list[_Change] = []
    while heap and len(taken) < max_items:
        _, i, _ = heapq.heappop(heap)
        obj, _ = queues[i][positions[i]]
        taken.append(_present(i, listings[i].prefix, "created", obj))
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
        stats=_stats(listings),
    )


def _detect_window(
    config: S3WatchConfig, cursor: dict[str, JSON], listings: Sequence[PrefixListing], max_items: int
) -> Batch:
    old: dict[str, Any] = cursor["prefixes"]
    states = [_WindowState.load(old.get(listing.prefix)) for listing in listings]
    candidates: list[tuple[_Change, bytes]] = []
    for i, listing in enumerate(listings):
        state = states[i]
        for obj in listing.objects:
            if obj.last_modified < state.floor or not config.counts(obj):
                continue
            h = version_hash(obj.key, obj.etag)
            if h in state.seen:
                continue
            candidates.append((_present(i, listing.prefix, "created", obj), h))
    candidates.sort(key=lambda pair: pair[0].sort_key())
    taken = candidates[:max_items]
    for change, h in taken:
        states[change.index].add(change.last_modified, h)
    prefixes: dict[str, JSON] = {}
    for listing, state in zip(listings, states, strict=True):
        state.advance(config.lookback_seconds)
        prefixes[listing.prefix] = state.dump()
    return Batch(
        items=[c.item(config.bucket) for c, _ in taken],
        cursor={**cursor, "prefixes": prefixes},
        more=len(candidates) > max_items,
        stats=_stats(listings),
    )


def _detect_snapshot(
    config: S3WatchConfig, cursor: dict[str, JSON], listings: Sequence[PrefixListing], max_items: int
) -> Batch:
    old: dict[str, Any] = cursor["prefixes"]
    # Keys that no longer match (glob or regex changed) leave the snapshot without being reported.
    snapshots = [
        {k: h for k, h in _load_snapshot(old.get(listing.prefix)).items() if config.matches_key(k)}
        for listing in listings
    ]
    changes: list[_Change] = []
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
                    changes.append(_present(i, listing.prefix, "forget", obj))
                continue
            if prev is None:
                changes.append(_present(i, listing.prefix, "created", obj))
            elif prev != etag_hash(obj.etag):
                changes.append(_present(i, listing.prefix, "modified", obj))
        for key, h in known.items():
            if key not in present:
                changes.append(_Change(i, listing.prefix, "deleted", key, None, None, 0, None, h.hex()))

    # Apply changes in order up to the max_items-th reportable one, so the cursor never moves past a
    # change left for the next batch (changes that are not reported included).
    def apply(change: _Change) -> None:
        known = snapshots[change.index]
        if change.kind in ("deleted", "forget"):
            known.pop(change.key, None)
        else:
            known[change.key] = etag_hash(change.etag or "")

    taken, more = take_in_order(
        sorted(changes, key=_Change.sort_key),
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
        stats=_stats(listings),
    )


# --------------------------------------------------------------------------------------------------
# Error classification
# --------------------------------------------------------------------------------------------------
def classify_error(
    exc: BaseException, *, bucket: str, prefix: str, conn_id: str | None, endpoint: str | None = None
) -> Exception:
    """A :class:`PermanentSourceError` or :class:`TransientSourceError` for a failed S3 call.

    The message names the bucket, the prefix and the conn id (never a credential).
    """
    from botocore import exceptions as bex

    where = f"s3://{bucket}/{prefix}"
    conn = f"aws_conn_id={conn_id!r}"
    at = f" at {redact_url(endpoint)}" if endpoint else ""
    if isinstance(exc, (PermanentSourceError, TransientSourceError)):
        return exc
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {}) or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")
        status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return PermanentSourceError(
                f"bucket {bucket!r} does not exist (NoSuchBucket) while listing prefix {prefix!r} with {conn}{at}; "
                "check the bucket parameter and the connection's region and endpoint_url"
            )
        if code in ("AccessDenied", "AllAccessDisabled"):
            return PermanentSourceError(
                f"access denied ({code}) listing {where} with {conn}{at}: the credentials need "
                f"s3:ListBucket on arn:aws:s3:::{bucket} (prefix {prefix!r})"
            )
        if code in CREDENTIAL_CODES:
            return PermanentSourceError(
                f"S3 rejected the credentials of {conn} ({code}) listing bucket {bucket!r} prefix {prefix!r}{at}; "
                "check the connection's access key id, secret access key and session token"
            )
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
            return PermanentSourceError(
                f"bucket {bucket!r} is in another region than {conn} is configured for ({code}: {message}) "
                f"listing prefix {prefix!r}; set region_name in the connection's extras"
            )
        if code in TRANSIENT_CODES or status in (429, 500, 502, 503, 504):
            return TransientSourceError(
                f"S3 is throttling or unavailable ({code or status}: {message}) listing {where}{at} with {conn}"
            )
        if code in PERMANENT_CODES or 400 <= status < 500:
            return PermanentSourceError(f"S3 refused listing {where} with {conn}{at}: {code or status}: {message}")
        return TransientSourceError(f"S3 error listing {where}{at} with {conn}: {code or status}: {message}")
    if isinstance(exc, bex.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return PermanentSourceError(
            f"TLS certificate of the S3 endpoint{at} not trusted listing {where} with {conn}: {exc}; "
            "set the connection's 'verify' extra to a CA bundle path"
        )
    if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError, bex.CredentialRetrievalError)):
        return TransientSourceError(f"cannot reach S3{at} listing {where} with {conn}: {type(exc).__name__}: {exc}")
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError, bex.UnknownCredentialError)):
        return PermanentSourceError(
            f"no usable AWS credentials for {conn} listing {where} ({type(exc).__name__}): the connection has none "
            "and botocore's default chain found none (environment, shared files, web identity, instance profile)"
        )
    if isinstance(exc, bex.BotoCoreError):
        return PermanentSourceError(f"listing {where} with {conn}{at} failed: {type(exc).__name__}: {exc}")
    import aiohttp

    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError, aiohttp.ClientError)):
        return TransientSourceError(f"cannot reach S3{at} listing {where} with {conn}: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else Exception(str(exc))


# --------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------
ClientConfigResolver = Callable[[], Awaitable[AwsClientConfig]]


class S3Source(Source):
    """Watches ``config.prefixes`` of ``config.bucket`` through one lazily created aiobotocore client.

    :param resolve_client: returns the client settings; called once, on the first poll, so the
        connection is looked up at run time (never at DAG parse time, never serialized).
    :param conn_id: the connection id, for error messages and logs.
    """

    kind = "s3"

    def __init__(self, config: S3WatchConfig, resolve_client: ClientConfigResolver, conn_id: str | None) -> None:
        self.config = config
        self._resolve_client = resolve_client
        self.conn_id = conn_id
        self._client: Any = None
        self._client_config: AwsClientConfig | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        filters = ""
        if self.config.glob:
            filters = f" glob {list(self.config.glob)}"
        elif self.config.regex:
            filters = f" regex {self.config.regex!r}"
        return (
            f"s3://{self.config.bucket} prefixes {list(self.config.prefixes)}{filters} "
            f"key_order={self.config.key_order} aws_conn_id={self.conn_id!r}"
        )

    async def client(self) -> Any:
        """The aiobotocore S3 client of this run, created on first use."""
        async with self._lock:
            if self._client is None:
                prefix = self.config.prefixes[0]
                try:
                    config = await self._resolve_client()
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(config.create_client())
                except ValueError as exc:  # e.g. an endpoint_url that is not a URL
                    raise PermanentSourceError(
                        f"cannot create an S3 client for aws_conn_id={self.conn_id!r} "
                        f"(bucket {self.config.bucket!r}, prefix {prefix!r}): {exc}"
                    ) from exc
                except Exception as exc:
                    mapped = classify_error(exc, bucket=self.config.bucket, prefix=prefix, conn_id=self.conn_id)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                self._stack, self._client_config = stack, config
            return self._client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _list_prefix(
        self,
        prefix: str,
        *,
        start_after: str | None,
        keep: Callable[[S3Object], bool],
        stop_after: int | None,
    ) -> PrefixListing:
        client = await self.client()
        endpoint = self._client_config.endpoint_url if self._client_config else None
        params: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix, "MaxKeys": PAGE_SIZE}
        if start_after:
            params["StartAfter"] = start_after
        listing = PrefixListing(prefix=prefix)
        previous = start_after
        reportable = 0
        while True:
            try:
                response = await client.list_objects_v2(**params)
            except Exception as exc:
                mapped = classify_error(
                    exc, bucket=self.config.bucket, prefix=prefix, conn_id=self.conn_id, endpoint=endpoint
                )
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
                    if self.config.counts(obj):
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
                    f"S3 returned a truncated listing of s3://{self.config.bucket}/{prefix} without a continuation "
                    f"token (aws_conn_id={self.conn_id!r}); retrying"
                )
            params["ContinuationToken"] = token

    async def _list_all(self, cursor: dict[str, JSON], max_items: int | None) -> list[PrefixListing]:
        """List every prefix (at most LIST_CONCURRENCY at once), in ``config.prefixes`` order.

        ``max_items=None`` lists for a baseline: everything, but keeping only what the baseline
        cursor needs (the last key; the objects of the newest window; every matching object).
        """
        await self.client()  # create the client once, before the concurrent listings
        config = self.config
        old: dict[str, Any] = cursor["prefixes"]
        semaphore = asyncio.Semaphore(LIST_CONCURRENCY)

        def keep_for(prefix: str) -> Callable[[S3Object], bool]:
            if config.layout == "lexicographic":
                if max_items is None:
                    return lambda o: False  # the baseline is the last key listed
                return lambda o: config.matches_key(o.key)
            if config.layout == "window":
                if max_items is None:
                    newest = -1

                    def in_newest_window(o: S3Object) -> bool:
                        nonlocal newest
                        if not config.counts(o):
                            return False
                        newest = max(newest, o.last_modified)
                        return o.last_modified >= newest - config.lookback_seconds

                    return in_newest_window
                floor = _stored_floor(old.get(prefix))
                return lambda o: o.last_modified >= floor and config.matches_key(o.key)
            return lambda o: config.matches_key(o.key)

        async def one(prefix: str) -> PrefixListing:
            async with semaphore:
                lexicographic = config.layout == "lexicographic"
                return await self._list_prefix(
                    prefix,
                    start_after=old.get(prefix) if lexicographic else None,
                    keep=keep_for(prefix),
                    stop_after=max_items + 1 if lexicographic and max_items is not None else None,
                )

        tasks = [asyncio.ensure_future(one(p)) for p in config.prefixes]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _detect(self, cursor: dict[str, JSON], listings: list[PrefixListing], max_items: int) -> Batch:
        if self.config.layout == "lexicographic":
            return detect(self.config, cursor, listings, max_items)
        # Comparing thousands of objects and (de)compressing the cursor is CPU work: keep it off the loop.
        return await asyncio.to_thread(detect, self.config, cursor, listings, max_items)

    async def baseline(self) -> JSON:
        cursor = empty_cursor(self.config)
        listings = await self._list_all(cursor, None)
        # Everything that exists now counts as seen.
        batch = await self._detect(cursor, listings, 10**12)
        return batch.cursor

    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        current = empty_cursor(self.config) if cursor is None else check_cursor(self.config, cursor)
        listings = await self._list_all(current, max_items)
        batch = await self._detect(current, listings, max_items)
        log.debug(
            "%s: %d item(s), %s LIST request(s), %s object(s) listed",
            self.describe(),
            len(batch.items),
            batch.stats.get("list_requests"),
            batch.stats.get("objects_listed"),
        )
        return batch

    def describe_cursor(self, cursor: JSON | None) -> JSON:
        if not isinstance(cursor, dict):
            return None
        summary: dict[str, JSON] = {}
        for prefix, state in (cursor.get("prefixes") or {}).items():
            if cursor.get("layout") == "lexicographic":
                summary[prefix] = {"after": state}
            elif cursor.get("layout") == "window" and isinstance(state, dict):
                summary[prefix] = {
                    "hwm": _iso(state.get("hwm")),
                    "floor": _iso(state.get("floor")),
                    "edge": state.get("n"),
                }
            elif isinstance(state, dict):
                summary[prefix] = {"tracked": state.get("n")}
        return summary


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, int) or seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()
