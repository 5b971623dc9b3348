"""Pure S3 detection logic: synthetic listings in, items and cursors out (no S3, no Airflow)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterable
from datetime import datetime, timezone

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError, TransientSourceError
from airflow_trigger_kit.sources.s3 import (
    PrefixListing,
    S3Object,
    S3WatchConfig,
    check_cursor,
    classify_error,
    decode_edge,
    decode_snapshot,
    detect,
    empty_cursor,
    encode_edge,
    encode_snapshot,
    etag_hash,
)
from airflow_trigger_kit.sources.s3.snapshot_memory import SnapshotMemory
from airflow_trigger_kit.sources.s3.snapshot_store import MemoryChunkStore

pytestmark = pytest.mark.unit

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def obj(key: str, lm: int = T0, etag: str | None = None, size: int = 10) -> S3Object:
    return S3Object(
        key=key,
        etag=etag or f"etag-{key}",
        size=size,
        last_modified=lm,
        last_modified_iso=datetime.fromtimestamp(lm, tz=timezone.utc).isoformat(),
    )


def listing(prefix: str, objects: Iterable[S3Object], start_after: str | None = None) -> PrefixListing:
    """A complete listing as S3 would return it: keys after ``start_after``, in key order."""
    objs = sorted((o for o in objects if o.key.startswith(prefix)), key=lambda o: o.key)
    if start_after is not None:
        objs = [o for o in objs if o.key > start_after]
    preds: list[str | None] = [start_after, *[o.key for o in objs[:-1]]]
    return PrefixListing(
        prefix=prefix,
        objects=objs,
        predecessors=preds[: len(objs)],
        last_key=objs[-1].key if objs else None,
        requests=1,
        listed=len(objs),
    )


CHUNKS = MemoryChunkStore()
"""Where snapshot-layout polls of this module keep their chunks (refs are random: tests never collide)."""


def poll(config: S3WatchConfig, cursor: JSON | None, bucket: list[S3Object], max_items: int = 1000) -> Batch:
    """One poll of ``bucket`` (a list of objects) from ``cursor``, as S3Source.poll does it.

    Snapshot polls go through a fresh :class:`SnapshotMemory` each time, so every poll also loads
    and decodes the chunks its cursor names, as a restarted trigger would.
    """
    current = empty_cursor(config) if cursor is None else check_cursor(config, cursor)
    listings = []
    for prefix in config.prefixes:
        start_after = current["prefixes"].get(prefix) if config.layout == "lexicographic" else None
        listings.append(listing(prefix, bucket, start_after))
    if config.layout == "snapshot":
        return asyncio.run(SnapshotMemory(CHUNKS).detect(config, current, listings, max_items))
    return detect(config, current, listings, max_items)


def drain(config: S3WatchConfig, cursor: JSON | None, bucket: list[S3Object], max_items: int) -> tuple[list, JSON]:
    """Poll until nothing is left; return every item reported and the final cursor."""
    items = []
    for _ in range(10_000):
        batch = poll(config, cursor, bucket, max_items)
        assert len(batch.items) <= max_items
        items.extend(batch.items)
        cursor = batch.cursor
        if not batch.more:
            assert not poll(config, cursor, bucket, max_items).items
            return items, cursor
    raise AssertionError("did not drain")


def keys(items: Iterable) -> list[str]:
    return [i.data["key"] for i in items]


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": ""}, "bucket must be a non-empty"),
        ({"bucket": "s3://data/landing/"}, "bucket must be a bare bucket name"),
        ({"bucket": "a"}, "bucket 'a' is not a valid S3 bucket name: it must be 3 to 63 characters long, not 1"),
        ({"bucket": "ok-bucket", "prefixes": []}, "prefixes must name at least one"),
        ({"bucket": "ok-bucket", "prefixes": ["a/", "a/"]}, "prefixes lists 'a/' twice"),
        ({"bucket": "ok-bucket", "prefixes": ["a/", "a/b/"]}, "prefixes 'a/' and 'a/b/' overlap"),
        ({"bucket": "ok-bucket", "prefixes": ["", "x/"]}, "prefixes '' and 'x/' overlap"),
        ({"bucket": "ok-bucket", "prefixes": 3}, "prefixes must be a string or a list"),
        ({"bucket": "ok-bucket", "glob": ""}, "glob must hold non-empty strings, got ''"),
        ({"bucket": "ok-bucket", "glob": ["*.csv", 1]}, "glob must hold non-empty strings"),
        ({"bucket": "ok-bucket", "glob": "*.csv", "regex": "x"}, "give glob or regex, not both"),
        ({"bucket": "ok-bucket", "regex": "(unclosed"}, "regex is not a valid regular expression: '(unclosed'"),
        ({"bucket": "ok-bucket", "min_size": -1}, "min_size must be an integer number of bytes >= 0, got -1"),
        ({"bucket": "ok-bucket", "min_size": True}, "min_size must be an integer"),
        ({"bucket": "ok-bucket", "key_order": "time"}, "key_order must be 'any' or 'lexicographic', got 'time'"),
        ({"bucket": "ok-bucket", "event_kinds": ["created", "renamed"]}, "event_kinds must be 'all' or a list"),
        ({"bucket": "ok-bucket", "lookback_seconds": -5}, "lookback_seconds must be a number of seconds >= 0"),
        ({"bucket": "ok-bucket", "lookback_seconds": float("inf")}, "lookback_seconds must be a number"),
        ({"bucket": "ok-bucket", "lookback_seconds": 1.5}, "lookback_seconds must be a whole number"),
        (
            {"bucket": "ok-bucket", "key_order": "lexicographic", "event_kinds": ["created", "modified"]},
            "event_kinds=['created', 'modified'] needs key_order='any'",
        ),
        ({"bucket": "ok-bucket", "key_order": "lexicographic", "event_kinds": "all"}, "needs key_order='any'"),
    ],
)
def test_invalid_configuration_names_parameter_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        S3WatchConfig.create(**kwargs)


def test_configuration_round_trips_through_kwargs() -> None:
    config = S3WatchConfig.create(
        bucket="ok-bucket", prefixes=["a/", "b/"], glob=["*.csv", "*.json"], event_kinds="all", lookback_seconds=60.0
    )
    kwargs = config.to_kwargs()
    json.dumps(kwargs)
    assert S3WatchConfig.create(**kwargs) == config
    assert kwargs["event_kinds"] == ["created", "modified", "deleted"]
    assert config.layout == "snapshot"
    assert S3WatchConfig.create(bucket="ok-bucket").layout == "window"
    assert S3WatchConfig.create(bucket="ok-bucket", key_order="lexicographic").layout == "lexicographic"


def test_filters_glob_regex_min_size_and_folder_markers() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", glob=["*.csv", "*/keep/*"], min_size=5)
    assert config.counts(obj("in/a.csv"))
    assert config.counts(obj("in/deep/b.csv"))  # '*' matches '/' too
    assert config.counts(obj("x/keep/c.bin"))
    assert not config.counts(obj("in/a.json"))
    assert not config.counts(obj("in/a.csv", size=4))
    regex = S3WatchConfig.create(bucket="ok-bucket", regex=r"^in/\d{4}/.*\.parquet$")
    assert regex.counts(obj("in/2026/x.parquet"))
    assert not regex.counts(obj("in/26/x.parquet"))
    plain = S3WatchConfig.create(bucket="ok-bucket")
    assert not plain.counts(obj("in/folder/", size=0))
    assert plain.counts(obj("in/empty-file", size=0))


# --------------------------------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------------------------------
def test_edge_and_snapshot_encodings_round_trip() -> None:
    rng = random.Random(7)
    edge = {T0 + s: {rng.randbytes(8) for _ in range(rng.randint(1, 5))} for s in range(0, 300, 7)}
    assert decode_edge(T0, encode_edge(T0, edge)) == edge
    known = {f"landing/2026/01/{d:02d}/part-{i:05d}.csv": rng.randbytes(6) for d in range(1, 4) for i in range(50)}
    known["ünïcode/ключ"] = etag_hash("x")
    assert decode_snapshot(encode_snapshot(known)) == known


def test_window_cursor_size_is_about_eleven_bytes_per_object_in_the_window() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/")
    burst = [obj(f"in/{i:06d}.csv", T0 + i // 500) for i in range(6000)]  # 500 objects per second
    batch = poll(config, None, burst, max_items=10_000)
    size = len(json.dumps(batch.cursor, separators=(",", ":")))
    assert len(batch.items) == 6000
    assert size < 65536, size
    assert 10 * 6000 < size < 11 * 6000 + 500
    steady = [obj(f"in/{i:06d}.csv", T0 + i) for i in range(3600)]  # one object per second, for an hour
    steady_size = len(json.dumps(poll(config, None, steady, 10_000).cursor, separators=(",", ":")))
    assert steady_size < 14 * 3600, steady_size


def test_snapshot_cursor_stays_small_and_chunks_hold_about_ten_bytes_per_date_partitioned_key() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="landing/", event_kinds="all")
    bucket = [
        obj(f"landing/2026/01/{d:02d}/events-{i:05d}.json", size=1000 + i) for d in range(1, 31) for i in range(150)
    ]  # 4,500 objects
    before = set(CHUNKS.values)
    batch = poll(config, None, bucket, max_items=10_000)
    size = len(json.dumps(batch.cursor, separators=(",", ":")))
    assert len(batch.items) == 4500
    assert size < 300, batch.cursor  # the per-key memory is in chunks, not in the cursor
    stored = sum(len(CHUNKS.values[ref]) + 2 for ref in set(CHUNKS.values) - before)
    assert stored / 4500 < 14, stored


# --------------------------------------------------------------------------------------------------
# lexicographic layout
# --------------------------------------------------------------------------------------------------
def test_lexicographic_reports_each_key_once_across_truncated_batches_and_prefixes() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes=["a/", "b/"], key_order="lexicographic")
    bucket = [obj(f"a/{i:04d}", T0 + i % 7) for i in range(230)] + [obj(f"b/{i:04d}", T0 + i % 3) for i in range(95)]
    items, cursor = drain(config, None, bucket, max_items=40)
    assert sorted(keys(items)) == sorted(o.key for o in bucket)
    assert len(set(i.dedup_id for i in items)) == len(bucket)
    assert cursor["prefixes"] == {"a/": "a/0229", "b/": "b/0094"}
    # Each prefix is reported in key order (its cursor is a key).
    for prefix in ("a/", "b/"):
        reported = [k for k in keys(items) if k.startswith(prefix)]
        assert reported == sorted(reported)
    # New keys after the cursor are reported; keys sorting before it are not (the documented contract).
    bucket += [obj("a/9999"), obj("a/0000-late")]
    assert keys(poll(config, cursor, bucket).items) == ["a/9999"]


def test_lexicographic_passes_filtered_keys_but_never_skips_a_left_out_one() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="p/", key_order="lexicographic", glob="*.csv")
    bucket = [obj("p/1.csv"), obj("p/2.tmp"), obj("p/3.csv"), obj("p/4.tmp"), obj("p/5.csv"), obj("p/6.tmp")]
    first = poll(config, None, bucket, max_items=2)
    assert keys(first.items) == ["p/1.csv", "p/3.csv"] and first.more
    assert first.cursor["prefixes"]["p/"] == "p/4.tmp"  # just before p/5.csv, which was left out
    second = poll(config, first.cursor, bucket, max_items=2)
    assert keys(second.items) == ["p/5.csv"] and not second.more
    assert second.cursor["prefixes"]["p/"] == "p/6.tmp"  # filtered keys at the end are passed


def test_lexicographic_is_a_pure_function_of_the_cursor() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="p/", key_order="lexicographic")
    bucket = [obj(f"p/{i}") for i in range(10)]
    assert poll(config, None, bucket, 4) == poll(config, None, bucket, 4)


# --------------------------------------------------------------------------------------------------
# window layout
# --------------------------------------------------------------------------------------------------
def test_window_objects_sharing_one_second_are_exact_across_polls_and_truncation() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", lookback_seconds=0)
    bucket = [obj(f"in/{i:03d}", T0) for i in range(25)]
    items, cursor = drain(config, None, bucket, max_items=10)
    assert sorted(keys(items)) == sorted(o.key for o in bucket)
    # More objects land in the very same second after the cursor moved: still reported, once.
    bucket += [obj(f"in/late-{i}", T0) for i in range(3)]
    late = poll(config, cursor, bucket)
    assert sorted(keys(late.items)) == ["in/late-0", "in/late-1", "in/late-2"]
    assert not poll(config, late.cursor, bucket).items


def test_window_reports_a_late_multipart_upload_older_than_objects_seen() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", lookback_seconds=600)
    bucket = [obj("in/a", T0 + 100), obj("in/b", T0 + 200)]
    first = poll(config, None, bucket)
    assert first.cursor["prefixes"]["in/"]["hwm"] == T0 + 200
    # The multipart upload started at T0 + 50 and completed now: LastModified is its start time.
    bucket.append(obj("in/big-multipart", T0 + 50, etag="abc-12"))
    second = poll(config, first.cursor, bucket)
    assert keys(second.items) == ["in/big-multipart"]
    assert not poll(config, second.cursor, bucket).items


def test_window_misses_only_what_is_older_than_the_lookback_and_floor_never_moves_back() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", lookback_seconds=60)
    bucket = [obj("in/a", T0), obj("in/b", T0 + 1000)]
    cursor = poll(config, None, bucket).cursor
    assert cursor["prefixes"]["in/"]["floor"] == T0 + 940
    assert cursor["prefixes"]["in/"]["n"] == 1  # in/a left the edge
    bucket.append(obj("in/too-late", T0 + 900))  # beyond lookback: documented loss
    assert not poll(config, cursor, bucket).items
    # Widening the lookback later does not re-fire in/a: the floor never moves back.
    wider = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", lookback_seconds=100_000)
    assert not poll(wider, cursor, bucket).items


def test_window_overwrite_is_a_new_version_and_identical_rewrite_is_not() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/")
    bucket = [obj("in/a", T0, etag="v1")]
    cursor = poll(config, None, bucket).cursor
    bucket = [obj("in/a", T0 + 5, etag="v1")]  # same bytes rewritten
    assert not poll(config, cursor, bucket).items
    bucket = [obj("in/a", T0 + 9, etag="v2")]
    batch = poll(config, cursor, bucket)
    assert [(i.data["key"], i.data["kind"], i.data["etag"]) for i in batch.items] == [("in/a", "created", "v2")]


def test_window_ignores_deletions_and_stale_prefixes_are_dropped() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes=["in/", "new/"])
    cursor = poll(config, None, [obj("in/a"), obj("in/b")]).cursor
    cursor["prefixes"]["gone/"] = {"floor": 0, "hwm": None, "n": 0, "edge": ""}
    batch = poll(config, cursor, [obj("in/a"), obj("new/x")])
    assert keys(batch.items) == ["new/x"]  # a prefix added to a watch starts from its beginning
    assert set(batch.cursor["prefixes"]) == {"in/", "new/"}


def test_window_random_interleavings_never_lose_or_repeat() -> None:
    """Objects land with LastModified up to 30 s out of order; polls happen at random moments."""
    rng = random.Random(11)
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes=["a/", "b/"], lookback_seconds=30)
    bucket: list[S3Object] = []
    cursor: JSON = None
    reported: list[str] = []
    now = T0
    for step in range(300):
        now += rng.randint(0, 2)
        for _ in range(rng.randint(0, 6)):
            key = f"{rng.choice('ab')}/{step:04d}-{rng.randint(0, 10**6)}"
            bucket.append(obj(key, now - rng.randint(0, 30)))
        batch = poll(config, cursor, bucket, max_items=rng.randint(1, 8))
        reported += [i.dedup_id for i in batch.items]
        cursor = batch.cursor
    items, _ = drain(config, cursor, bucket, max_items=50)
    reported += [i.dedup_id for i in items]
    assert len(reported) == len(set(reported)) == len(bucket)


# --------------------------------------------------------------------------------------------------
# snapshot layout
# --------------------------------------------------------------------------------------------------
def test_snapshot_created_modified_deleted_with_truncation() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all")
    bucket = [obj(f"in/{i}", T0 + i) for i in range(5)]
    items, cursor = drain(config, None, bucket, max_items=2)
    assert {i.data["kind"] for i in items} == {"created"} and len(items) == 5
    bucket = [
        obj("in/0", T0),
        obj("in/1", T0 + 50, etag="new"),
        obj("in/3", T0 + 3),
        obj("in/4", T0 + 51, etag="newer"),
        obj("in/9", T0 - 3600, etag="multipart-1"),  # old LastModified: still a new key
    ]
    items, cursor = drain(config, cursor, bucket, max_items=2)
    assert [(i.data["kind"], i.data["key"]) for i in items] == [
        ("created", "in/9"),
        ("modified", "in/1"),
        ("modified", "in/4"),
        ("deleted", "in/2"),
    ]
    deleted = items[-1]
    assert deleted.data["size"] is None and deleted.data["etag"] is None and deleted.data["last_modified"] is None
    # The same deletion observed again from the same cursor has the same dedup id.
    again = poll(config, cursor, bucket)
    assert not again.items


def test_snapshot_reports_a_deletion_and_a_creation_in_one_poll() -> None:
    """As many keys listed as known, yet one of them is new and one is gone."""
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all")
    cursor = poll(config, None, [obj("in/a"), obj("in/b"), obj("in/c")]).cursor
    batch = poll(config, cursor, [obj("in/a"), obj("in/b"), obj("in/d")])
    assert [(i.data["kind"], i.data["key"]) for i in batch.items] == [("created", "in/d"), ("deleted", "in/c")]


def test_snapshot_unreported_kinds_move_the_cursor_silently() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds=["created", "deleted"])
    cursor = poll(config, None, [obj("in/a", etag="1"), obj("in/b")]).cursor
    batch = poll(config, cursor, [obj("in/a", T0 + 1, etag="2")])
    assert [(i.data["kind"], i.data["key"]) for i in batch.items] == [("deleted", "in/b")]
    assert not poll(config, batch.cursor, [obj("in/a", T0 + 1, etag="2")]).items


def test_snapshot_object_shrinking_below_min_size_is_forgotten_not_deleted() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all", min_size=5)
    cursor = poll(config, None, [obj("in/a", size=10)]).cursor
    shrunk = poll(config, cursor, [obj("in/a", T0 + 1, etag="small", size=1)])
    assert not shrunk.items
    grown = poll(config, shrunk.cursor, [obj("in/a", T0 + 2, etag="big", size=50)])
    assert [(i.data["kind"], i.data["key"]) for i in grown.items] == [("created", "in/a")]


def test_snapshot_keys_no_longer_matching_a_changed_glob_leave_without_a_deletion() -> None:
    broad = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all")
    cursor = poll(broad, None, [obj("in/a.csv"), obj("in/b.json")]).cursor
    narrow = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all", glob="*.csv")
    batch = poll(narrow, cursor, [obj("in/a.csv")])
    assert batch.items == []
    assert batch.cursor["prefixes"]["in/"]["n"] == 1
    # Widening the glob again: in/b.json is new to the snapshot now.
    again = poll(broad, batch.cursor, [obj("in/a.csv"), obj("in/b.json")])
    assert [(i.data["kind"], i.data["key"]) for i in again.items] == [("created", "in/b.json")]


def test_dedup_ids_are_stable_and_distinguish_versions_and_kinds() -> None:
    config = S3WatchConfig.create(bucket="ok-bucket", prefixes="in/", event_kinds="all")
    first = poll(config, None, [obj("in/a", etag="v1")])
    assert first.items[0].dedup_id == poll(config, None, [obj("in/a", etag="v1")]).items[0].dedup_id
    modified = poll(config, first.cursor, [obj("in/a", etag="v2")]).items[0]
    deleted = poll(config, first.cursor, []).items[0]
    assert len({first.items[0].dedup_id, modified.dedup_id, deleted.dedup_id}) == 3
    other_bucket = S3WatchConfig.create(bucket="other-bucket", prefixes="in/", event_kinds="all")
    assert poll(other_bucket, None, [obj("in/a", etag="v1")]).items[0].dedup_id != first.items[0].dedup_id


def test_cursor_of_another_layout_or_version_is_rejected_with_a_fix() -> None:
    window = S3WatchConfig.create(bucket="ok-bucket")
    snapshot = S3WatchConfig.create(bucket="ok-bucket", event_kinds="all")
    with pytest.raises(PermanentSourceError, match=r"stored cursor has the 'window' layout.*trigger-kit state reset"):
        check_cursor(snapshot, empty_cursor(window))
    with pytest.raises(PermanentSourceError, match="not an S3-watch cursor"):
        check_cursor(window, {"v": 1, "layout": "watermark", "dirs": {}})
    damaged = {"v": 1, "layout": "window", "prefixes": {"": {"floor": 0, "hwm": 1, "edge": "!!"}}}
    with pytest.raises(PermanentSourceError, match="window cursor is damaged"):
        detect(window, damaged, [PrefixListing(prefix="")], 10)


# --------------------------------------------------------------------------------------------------
# error classification (real botocore exceptions, as aiobotocore raises them)
# --------------------------------------------------------------------------------------------------
def client_error(code: str, status: int, message: str = "msg") -> ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "ListObjectsV2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "cls", "message"),
    [
        (client_error("NoSuchBucket", 404), PermanentSourceError, "bucket 'raw-data' does not exist"),
        (client_error("AccessDenied", 403), PermanentSourceError, "access denied.*s3:ListBucket"),
        (client_error("InvalidAccessKeyId", 403), PermanentSourceError, "rejected the credentials"),
        (client_error("SignatureDoesNotMatch", 403), PermanentSourceError, "rejected the credentials"),
        (client_error("ExpiredToken", 400), PermanentSourceError, "rejected the credentials"),
        (client_error("PermanentRedirect", 301), PermanentSourceError, "another region"),
        (client_error("SomethingNew", 400), PermanentSourceError, "S3 refused"),
        (client_error("SlowDown", 503), TransientSourceError, "throttling or unavailable"),
        (client_error("503", 503), TransientSourceError, "throttling or unavailable"),
        (client_error("RequestTimeout", 400), TransientSourceError, "throttling or unavailable"),
        (client_error("InternalError", 500), TransientSourceError, "throttling or unavailable"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), TransientSourceError, "cannot reach S3"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), TransientSourceError, "cannot reach S3"),
        (NoCredentialsError(), PermanentSourceError, "no usable AWS credentials"),
    ],
)
def test_errors_are_classified_and_name_bucket_prefix_and_conn_id(exc: Exception, cls: type, message: str) -> None:
    mapped = classify_error(exc, bucket="raw-data", prefix="landing/", conn_id="aws_lake")
    assert isinstance(mapped, cls)
    text = str(mapped)
    assert re.search(message, text), text
    assert "aws_lake" in text
    assert "raw-data" in text and "landing/" in text
