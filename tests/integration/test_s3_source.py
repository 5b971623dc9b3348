"""The S3 source against moto's S3 server over HTTP: pagination, both strategies, changes, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from aiobotocore.session import get_session

from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.triggers.session import open_session
from tests.s3_support import (
    CONN_ID,
    CREDENTIALS,
    ListCounter,
    backdate_object,
    create_bucket,
    put_many,
    put_many_plain,
    s3_client,
    set_moto_auth,
    source,
    trigger,
    unique_bucket,
    use_connection,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

BIG = 5050  # six ListObjectsV2 pages of at most 1,000 keys
BIG_KEYS = [f"big/{i:06d}.csv" for i in range(BIG)]
STATE_LIMIT = 65536  # the default [trigger_kit] state_max_value_bytes


def cursor_bytes(cursor: Any) -> int:
    return len(json.dumps(cursor, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.fixture(scope="module")
def big_bucket(s3_endpoint: str) -> str:
    """A bucket with 5,050 objects under ``big/``, uploaded concurrently once for this module."""
    bucket = unique_bucket("big")

    async def setup() -> None:
        await create_bucket(s3_endpoint, bucket)
        await put_many_plain(s3_endpoint, bucket, BIG_KEYS)

    asyncio.run(setup())
    return bucket


@pytest.fixture(autouse=True)
def s3_connection(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_connection(monkeypatch, s3_endpoint)


# --------------------------------------------------------------------------------------------------
# more than 5,000 objects across page boundaries, both strategies
# --------------------------------------------------------------------------------------------------
async def test_lexicographic_pages_through_5050_objects_then_an_empty_poll_is_one_request(big_bucket: str) -> None:
    src = source(big_bucket, prefixes="big/", key_order="lexicographic")
    try:
        lists = await ListCounter.attach(src)
        cursor, reported, batches = None, [], []
        while True:
            batch = await src.poll(cursor, 2000)
            reported += [i.data["key"] for i in batch.items]
            batches.append((len(batch.items), lists.take(), batch.more))
            cursor = batch.cursor
            if not batch.more:
                break
        assert reported == BIG_KEYS  # each key once, in key order
        # Listing stops once more than max_items keys were found: 3 pages per batch, never all 6.
        assert batches == [(2000, 3, True), (2000, 3, True), (1050, 2, False)]
        assert cursor["prefixes"] == {"big/": "big/005049.csv"}
        empty = await src.poll(cursor, 2000)
        assert (empty.items, lists.take(), empty.stats["list_requests"]) == ([], 1, 1)
        # start_from="now": the baseline lists everything once (6 pages); later empty polls cost 1.
        baseline = await src.baseline()
        assert lists.take() == 6 and baseline == cursor
        assert (await src.poll(baseline, 500)).items == [] and lists.take() == 1
    finally:
        await src.aclose()


async def test_full_listing_window_of_5050_objects_truncated_then_exact(big_bucket: str) -> None:
    src = source(big_bucket, prefixes="big/")  # key_order="any", created only: the window layout
    try:
        lists = await ListCounter.attach(src)
        first = await src.poll(None, 3000)
        assert len(first.items) == 3000 and first.more and lists.take() == 6
        second = await src.poll(first.cursor, 3000)
        assert len(second.items) == 2050 and not second.more and lists.take() == 6
        # The second poll listed all 5,050 objects again and reported only the 2,050 left out.
        ids = [i.dedup_id for i in first.items + second.items]
        assert len(set(ids)) == BIG
        assert sorted(i.data["key"] for i in first.items + second.items) == BIG_KEYS
        size = cursor_bytes(second.cursor)
        assert size < STATE_LIMIT, f"window cursor for {BIG} objects in the window: {size} bytes"
        assert second.cursor["prefixes"]["big/"]["n"] == BIG
    finally:
        await src.aclose()


async def test_full_listing_snapshot_of_5050_objects(big_bucket: str) -> None:
    src = source(big_bucket, prefixes="big/", event_kinds="all")
    try:
        batch = await src.poll(None, 10_000)
        assert len(batch.items) == BIG and {i.data["kind"] for i in batch.items} == {"created"}
        size = cursor_bytes(batch.cursor)
        assert size < STATE_LIMIT, f"snapshot cursor for {BIG} objects: {size} bytes"
        assert batch.cursor["prefixes"]["big/"]["n"] == BIG
    finally:
        await src.aclose()


async def test_empty_poll_in_lexicographic_mode_is_one_list_request_per_prefix(s3_endpoint: str) -> None:
    bucket = unique_bucket("lex")
    prefixes = ["in/a/", "in/b/", "in/c/"]
    await create_bucket(s3_endpoint, bucket, [f"{p}{n:03d}.csv" for p in prefixes for n in range(4)])
    src = source(bucket, prefixes=prefixes, key_order="lexicographic")
    try:
        lists = await ListCounter.attach(src)
        watch_client = await src.client()
        drained = await src.poll(None, 100)
        assert len(drained.items) == 12 and lists.take() == 3
        for _ in range(3):
            empty = await src.poll(drained.cursor, 100)
            assert empty.items == [] and lists.take() == 3 and empty.stats["list_requests"] == 3
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key="in/b/999.csv", Body=b"new")
        new = await src.poll(drained.cursor, 100)
        assert [i.data["key"] for i in new.items] == ["in/b/999.csv"] and lists.take() == 3
        assert await src.client() is watch_client  # one client for the whole run (five polls)
    finally:
        await src.aclose()
    assert src._client is None


# --------------------------------------------------------------------------------------------------
# LastModified edge cases
# --------------------------------------------------------------------------------------------------
async def _wait_for_a_fresh_second() -> None:
    """Sleep until just after a wall-clock second starts, so a quick burst shares one second."""
    await asyncio.sleep(1.0 - (time.time() % 1.0) + 0.02)


@pytest.mark.parametrize("key_order", ["any", "lexicographic"])
async def test_objects_sharing_one_last_modified_second_are_each_reported_once(
    s3_endpoint: str, key_order: str
) -> None:
    """Objects of one LastModified second, reported across truncated batches and later arrivals."""
    bucket = unique_bucket("second")
    await create_bucket(s3_endpoint, bucket)

    async def scenario(prefix: str) -> bool:
        """Exactly-once in any case; returns whether the whole burst really shared one second."""
        # lookback_seconds=0: nothing but the edge of same-second objects keeps the window exact.
        src = source(bucket, prefixes=prefix, key_order=key_order, lookback_seconds=0)
        first_wave = [f"{prefix}a{n:02d}" for n in range(12)]
        second_wave = [f"{prefix}b{n:02d}" for n in range(6)]
        try:
            async with s3_client(s3_endpoint) as client:
                await _wait_for_a_fresh_second()
                await put_many(client, bucket, first_wave)
                first = await src.poll(None, 5)  # truncated inside one second
                second = await src.poll(first.cursor, 5)
                await put_many(client, bucket, second_wave)  # the same second, after the cursor moved
                listed = await client.list_objects_v2(Bucket=bucket, Prefix=prefix)
            items = list(first.items) + list(second.items)
            cursor = second.cursor
            while True:
                batch = await src.poll(cursor, 5)
                items += batch.items
                cursor = batch.cursor
                if not batch.items:
                    break
        finally:
            await src.aclose()
        keys = [i.data["key"] for i in items]
        assert sorted(keys) == sorted(first_wave + second_wave) and len(set(keys)) == 18
        return len({int(o["LastModified"].timestamp()) for o in listed["Contents"]}) == 1

    # On a busy machine the burst may cross a second boundary; try again (correctness held anyway).
    for attempt in range(3):
        if await scenario(f"in{attempt}/"):
            break
    else:
        pytest.fail("three bursts in a row crossed a second boundary")


async def test_multipart_upload_older_than_objects_already_seen_is_reported(s3_endpoint: str) -> None:
    """A multipart upload started before objects that were already reported, completed after them.

    Checked with both full-listing layouts: the window (``created``) and the snapshot (``all``).
    """
    bucket = unique_bucket("multipart")
    await create_bucket(s3_endpoint, bucket, ["in/early.csv"])
    sources = [source(bucket, prefixes="in/"), source(bucket, prefixes="in/", event_kinds="all")]
    try:
        cursors = [await src.baseline() for src in sources]
        async with s3_client(s3_endpoint) as client:
            upload = await client.create_multipart_upload(Bucket=bucket, Key="in/big-upload.parquet")
            initiated = datetime.now(timezone.utc).replace(microsecond=0)
            await asyncio.sleep(1.1)  # objects that land meanwhile get a later LastModified
            await put_many(client, bucket, ["in/later-1.csv", "in/later-2.csv"])
            for n, src in enumerate(sources):
                seen = await src.poll(cursors[n], 100)
                assert sorted(i.data["key"] for i in seen.items) == ["in/later-1.csv", "in/later-2.csv"]
                cursors[n] = seen.cursor
            part = await client.upload_part(
                Bucket=bucket, Key="in/big-upload.parquet", UploadId=upload["UploadId"], PartNumber=1, Body=b"p" * 64
            )
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key="in/big-upload.parquet",
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
            )
            head = await client.head_object(Bucket=bucket, Key="in/big-upload.parquet")
            # moto stamps the completion time; AWS stamps the initiation time: reproduce AWS.
            assert head["LastModified"] >= initiated
            backdate_object(bucket, "in/big-upload.parquet", initiated)
            listed = await client.list_objects_v2(Bucket=bucket, Prefix="in/")
        last_modified = {o["Key"]: o["LastModified"] for o in listed["Contents"]}
        assert last_modified["in/big-upload.parquet"] < last_modified["in/later-1.csv"]
        assert cursors[0]["prefixes"]["in/"]["hwm"] > int(initiated.timestamp())  # older than the watermark
        for n, src in enumerate(sources):
            late = await src.poll(cursors[n], 100)
            assert [(i.data["key"], i.data["kind"]) for i in late.items] == [("in/big-upload.parquet", "created")]
            assert late.items[0].data["etag"].endswith("-1")  # a multipart ETag
            assert late.items[0].data["last_modified"] == initiated.isoformat()
            assert (await src.poll(late.cursor, 100)).items == []
    finally:
        for src in sources:
            await src.aclose()


# --------------------------------------------------------------------------------------------------
# overwrites and deletes
# --------------------------------------------------------------------------------------------------
async def test_overwrites_deletes_and_identical_rewrites_in_snapshot_mode(s3_endpoint: str) -> None:
    bucket = unique_bucket("changes")
    await create_bucket(s3_endpoint, bucket, ["in/a.csv", "in/b.csv", "in/c.csv", "other/x.csv"])
    src = source(bucket, prefixes="in/", event_kinds="all")
    try:
        cursor = await src.baseline()
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key="in/a.csv", Body=b"x")  # identical bytes: same ETag
            await client.put_object(Bucket=bucket, Key="in/b.csv", Body=b"changed")
            await client.delete_object(Bucket=bucket, Key="in/c.csv")
            await client.put_object(Bucket=bucket, Key="in/d.csv", Body=b"new")
            await client.delete_object(Bucket=bucket, Key="other/x.csv")  # not watched
        batch = await src.poll(cursor, 100)
        changes = sorted((i.data["kind"], i.data["key"]) for i in batch.items)
        assert changes == [("created", "in/d.csv"), ("deleted", "in/c.csv"), ("modified", "in/b.csv")]
        modified = next(i for i in batch.items if i.data["kind"] == "modified")
        assert (
            modified.data["size"] == 7 and modified.data["etag"] and modified.data["uri"] == f"s3://{bucket}/in/b.csv"
        )
        # Polling the same cursor again reports the same changes with the same dedup ids.
        assert [i.dedup_id for i in (await src.poll(cursor, 100)).items] == [i.dedup_id for i in batch.items]
        assert (await src.poll(batch.cursor, 100)).items == []
    finally:
        await src.aclose()


async def test_overwrite_in_window_mode_is_reported_as_a_new_version(s3_endpoint: str) -> None:
    bucket = unique_bucket("overwrite")
    await create_bucket(s3_endpoint, bucket, ["in/a.csv"])
    src = source(bucket, prefixes="in/")
    try:
        cursor = await src.baseline()
        async with s3_client(s3_endpoint) as client:
            await client.put_object(Bucket=bucket, Key="in/a.csv", Body=b"x")  # same bytes: not a change
            assert (await src.poll(cursor, 10)).items == []
            await client.put_object(Bucket=bucket, Key="in/a.csv", Body=b"version 2")
        batch = await src.poll(cursor, 10)
        assert [(i.data["key"], i.data["kind"], i.data["size"]) for i in batch.items] == [("in/a.csv", "created", 9)]
    finally:
        await src.aclose()


async def test_filters_apply_to_real_listings(s3_endpoint: str) -> None:
    bucket = unique_bucket("filters")
    await create_bucket(s3_endpoint, bucket)
    async with s3_client(s3_endpoint) as client:
        await client.put_object(Bucket=bucket, Key="in/folder/", Body=b"")  # console "folder" marker
        await client.put_object(Bucket=bucket, Key="in/folder/data.csv", Body=b"1,2,3")
        await client.put_object(Bucket=bucket, Key="in/tiny.csv", Body=b"1")
        await client.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"hello")
    src = source(bucket, prefixes="in/", glob="*.csv", min_size=2, start_from="beginning")
    try:
        assert [i.data["key"] for i in (await src.poll(None, 10)).items] == ["in/folder/data.csv"]
    finally:
        await src.aclose()


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def assert_names_bucket_prefix_conn(message: str, bucket: str, prefix: str, conn_id: str) -> None:
    assert (bucket in message and repr(prefix) in message) or f"{bucket}/{prefix}" in message, message
    assert f"aws_conn_id={conn_id!r}" in message, message


async def test_missing_bucket_is_permanent_and_named(s3_endpoint: str) -> None:
    bucket = unique_bucket("missing")
    src = source(bucket, prefixes="landing/")
    try:
        with pytest.raises(PermanentSourceError, match="NoSuchBucket") as info:
            await src.poll(None, 10)
        assert_names_bucket_prefix_conn(str(info.value), bucket, "landing/", CONN_ID)
    finally:
        await src.aclose()
    # A sensor-mode trigger turns it into an error event (the sensor fails with this message).
    gen = trigger(bucket, prefixes="landing/").run()
    event = await asyncio.wait_for(gen.__anext__(), 30)
    await gen.aclose()
    assert event.payload["status"] == "error" and "NoSuchBucket" in event.payload["message"]


@contextlib.asynccontextmanager
async def iam_user_without_list_permission(endpoint: str) -> AsyncIterator[tuple[str, str]]:
    async with get_session().create_client("iam", endpoint_url=endpoint, **CREDENTIALS) as iam:
        user = f"reader-{uuid.uuid4().hex[:8]}"
        await iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
        }
        await iam.put_user_policy(UserName=user, PolicyName="get-only", PolicyDocument=json.dumps(policy))
        key = (await iam.create_access_key(UserName=user))["AccessKey"]
        yield key["AccessKeyId"], key["SecretAccessKey"]


async def test_access_denied_and_rejected_credentials_are_permanent(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = unique_bucket("auth")
    await create_bucket(s3_endpoint, bucket, ["in/a.csv"])
    async with iam_user_without_list_permission(s3_endpoint) as (key_id, secret):
        cases = [
            ("s3_denied", key_id, secret, "AccessDenied"),
            ("s3_bad_secret", key_id, "not-the-secret-key", "SignatureDoesNotMatch"),
            ("s3_unknown_key", "AKIAUNKNOWNKEY000000", "whatever-secret-value", "InvalidAccessKeyId"),
        ]
        set_moto_auth(s3_endpoint, True)  # moto now checks keys, signatures and IAM policies
        try:
            for conn_id, k, s, code in cases:
                use_connection(monkeypatch, s3_endpoint, conn_id=conn_id, key=k, secret=s)
                src = source(bucket, prefixes="in/", aws_conn_id=conn_id)
                try:
                    with pytest.raises(PermanentSourceError, match=code) as info:
                        await src.poll(None, 10)
                finally:
                    await src.aclose()
                message = str(info.value)
                assert_names_bucket_prefix_conn(message, bucket, "in/", conn_id)
                assert s not in message
        finally:
            set_moto_auth(s3_endpoint, False)


async def test_unreachable_endpoint_is_transient(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    use_connection(monkeypatch, dead, conn_id="s3_dead", config_kwargs='{"retries": {"max_attempts": 1}}')
    src = source("some-bucket", prefixes="in/", aws_conn_id="s3_dead")
    try:
        with pytest.raises(TransientSourceError, match="cannot reach S3") as info:
            await src.poll(None, 10)
        assert_names_bucket_prefix_conn(str(info.value), "some-bucket", "in/", "s3_dead")
    finally:
        await src.aclose()


@contextlib.asynccontextmanager
async def throttling_proxy(upstream: str, throttle: int) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """An HTTP proxy to moto that answers the first ``throttle`` requests with 503 SlowDown."""
    from aiohttp import ClientSession, web

    counts = {"left": throttle, "throttled": 0, "forwarded": 0}
    session = ClientSession(auto_decompress=False)
    hop_by_hop = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}

    async def handle(request: web.Request) -> web.Response:
        if counts["left"] > 0:
            counts["left"] -= 1
            counts["throttled"] += 1
            body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return web.Response(status=503, body=body, content_type="application/xml")
        counts["forwarded"] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop_by_hop}
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=await request.read()
        ) as upstream_response:
            body_bytes = await upstream_response.read()
            out = {k: v for k, v in upstream_response.headers.items() if k.lower() not in hop_by_hop}
            return web.Response(status=upstream_response.status, body=body_bytes, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", counts
    finally:
        await runner.cleanup()
        await session.close()


async def test_throttling_is_retried_with_backoff_until_s3_answers(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = unique_bucket("throttle")
    await create_bucket(s3_endpoint, bucket, ["in/a.csv", "in/b.csv"])
    async with throttling_proxy(s3_endpoint, throttle=3) as (proxy, counts):
        # One attempt per botocore call, so each 503 reaches the trigger's own backoff.
        use_connection(monkeypatch, proxy, conn_id="s3_throttled", config_kwargs='{"retries": {"max_attempts": 1}}')
        t = trigger(bucket, prefixes="in/", aws_conn_id="s3_throttled", start_from="beginning")
        src = t.build_source()
        try:
            with pytest.raises(TransientSourceError, match="SlowDown"):
                await src.poll(None, 10)
            async with open_session(t) as session:  # the trigger's own retries, through the hub
                batch = await asyncio.wait_for(session.next_batch(None), 30)
        finally:
            await src.aclose()
    assert sorted(i.data["key"] for i in batch.items) == ["in/a.csv", "in/b.csv"]
    assert counts["throttled"] == 3 and counts["forwarded"] >= 1
