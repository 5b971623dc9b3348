"""Helpers for the S3 tests (this module holds no tests): buckets, uploads and connections on moto.

Everything goes over HTTP to moto's server (the session's ``s3_endpoint``) through aiobotocore,
exactly as the code under test reaches AWS. The only in-process touch is
:func:`backdate_object`, which reproduces an AWS behaviour moto lacks (see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from airflow_trigger_kit.sources.s3 import S3Source
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

# moto's HTTP server logs every request; thousands of lines slow the uploads down.
logging.getLogger("werkzeug").setLevel(logging.ERROR)

CONN_ID = "s3_it"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def unique_bucket(label: str) -> str:
    return f"tk-{label}-{uuid.uuid4().hex[:10]}"


def unique_name() -> str:
    return f"s3-{uuid.uuid4().hex[:10]}"


def conn_uri(endpoint: str, *, key: str = "testing", secret: str = "testing", **extra: str) -> str:
    """An ``AIRFLOW_CONN_*`` URI: credentials as login/password, endpoint and region as extras."""
    query = {"endpoint_url": endpoint, "region_name": "us-east-1", **extra}
    params = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return f"aws://{quote(key, safe='')}:{quote(secret, safe='')}@/?{params}"


def use_connection(monkeypatch: pytest.MonkeyPatch, endpoint: str, conn_id: str = CONN_ID, **kw: Any) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn_uri(endpoint, **kw))
    return conn_id


@contextlib.asynccontextmanager
async def s3_client(endpoint: str, **kw: Any) -> AsyncIterator[Any]:
    """An aiobotocore client for test setup (creating buckets, uploading, deleting)."""
    config = AioConfig(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 5})
    async with get_session().create_client("s3", endpoint_url=endpoint, config=config, **{**CREDENTIALS, **kw}) as c:
        yield c


async def put_many(client: Any, bucket: str, keys: Iterable[str], body: bytes = b"x", chunk: int = 64) -> None:
    """Upload ``keys`` concurrently, ``chunk`` requests at a time."""
    pending = list(keys)
    for start in range(0, len(pending), chunk):
        await asyncio.gather(
            *(client.put_object(Bucket=bucket, Key=k, Body=body) for k in pending[start : start + chunk])
        )


async def put_many_plain(endpoint: str, bucket: str, keys: Iterable[str], body: bytes = b"x", chunk: int = 64) -> None:
    """Bulk upload as plain S3 REST ``PUT /bucket/key`` requests, without botocore's signing.

    moto accepts unsigned requests while its authentication is off; skipping botocore's per-request
    work (signing, checksums, hooks) in this process cuts the setup of thousands of objects by
    about a third, because moto's server shares the interpreter (and its GIL) with the tests.
    """
    import aiohttp

    pending = list(keys)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=chunk)) as http:

        async def put(key: str) -> None:
            async with http.put(f"{endpoint}/{bucket}/{quote(key)}", data=body) as response:
                assert response.status == 200, (key, response.status, await response.text())

        for start in range(0, len(pending), chunk):
            await asyncio.gather(*(put(k) for k in pending[start : start + chunk]))


async def create_bucket(endpoint: str, bucket: str, keys: Iterable[str] = (), body: bytes = b"x") -> None:
    async with s3_client(endpoint) as client:
        await client.create_bucket(Bucket=bucket)
        await put_many(client, bucket, keys, body)


def trigger(bucket: str, **kw: Any) -> S3ObjectsTrigger:
    params: dict[str, Any] = {
        "bucket": bucket,
        "namespace": "s3-tests",
        "name": unique_name(),
        "mode": "sensor",
        "aws_conn_id": CONN_ID,
        "poll_interval": 0.1,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
    }
    params.update(kw)
    return S3ObjectsTrigger(**params)


def source(bucket: str, **kw: Any) -> S3Source:
    """A source built by the trigger, so the connection is resolved the way the triggerer does it."""
    src = trigger(bucket, **kw).build_source()
    assert isinstance(src, S3Source)
    return src


class ListCounter:
    """Counts the ListObjectsV2 requests a source's client sends (an aiobotocore event hook)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, **kwargs: Any) -> None:
        self.count += 1

    @classmethod
    async def attach(cls, src: S3Source) -> ListCounter:
        counter = cls()
        client = await src.client()
        client.meta.events.register("before-send.s3.ListObjectsV2", counter)
        return counter

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def set_moto_auth(endpoint: str, enabled: bool) -> None:
    """Turn moto's IAM authentication on or off (``/moto-api/reset-auth``) for the whole server."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if enabled else b"inf",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def backdate_object(bucket: str, key: str, last_modified: datetime) -> None:
    """Give a stored object another LastModified, inside the in-process moto server.

    AWS stamps a completed multipart upload with the time the upload was *initiated*; moto stamps
    it with the completion time (and records no initiation time at all). To reproduce what AWS
    does, the test records the initiation time itself and writes it here after completing the
    upload. The code under test still sees it only through ListObjectsV2 over HTTP.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    stored = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys[key]
    stored.last_modified = last_modified.astimezone(timezone.utc).replace(tzinfo=None)


@contextlib.asynccontextmanager
async def sqs_client(endpoint: str) -> AsyncIterator[Any]:
    """An aiobotocore SQS client on moto's server (queues for S3 event notifications)."""
    async with get_session().create_client("sqs", endpoint_url=endpoint, **CREDENTIALS) as client:
        yield client


async def create_queue(endpoint: str, name: str, **attributes: str) -> str:
    """A standard queue (``attributes`` such as ``VisibilityTimeout``); its URL."""
    async with sqs_client(endpoint) as sqs:
        return str((await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"])


async def notify_queue(endpoint: str, bucket: str, queue_url: str) -> None:
    """Send every ObjectCreated/ObjectRemoved event of ``bucket`` to the queue (S3 also sends s3:TestEvent)."""
    async with sqs_client(endpoint) as sqs, s3_client(endpoint) as s3:
        attributes = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        await s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": attributes["Attributes"]["QueueArn"],
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    }
                ]
            },
        )


async def queue_depth(endpoint: str, queue_url: str) -> int:
    """Messages in the queue, visible or in flight (received, not deleted)."""
    async with sqs_client(endpoint) as sqs:
        attributes = (
            await sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def s3_event(bucket: str, key: str) -> str:
    """The body S3 sends to a queue for one created object (for tests that send messages themselves)."""
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": quote(key)}}}
    return json.dumps({"Records": [record]})
