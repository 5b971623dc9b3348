"""S3 change notifications through SQS, against moto's server: S3 sends the bucket's events to a queue.

Real triggers in one event loop; moto's S3 server sends the bucket's event notifications to its own
SQS queue (``put_bucket_notification_configuration`` with ``QueueConfigurations``), which the hub's
listener long-polls over HTTP. ``poll_interval`` and ``reconcile_interval`` are 3600 s wherever
only a notification can explain a detection within the test's generous waits; the counts are the
hub's own (polls per channel, listener connects and failures, messages received and deleted) and
the queue's own (messages left in it). No time is asserted.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from airflow_trigger_kit.hub import get_hub
from airflow_trigger_kit.hub.channels import Channel
from airflow_trigger_kit.hub.sqs import SqsListener
from airflow_trigger_kit.triggers.session import open_session
from tests.s3_support import (
    CONN_ID,
    create_bucket,
    create_queue,
    notify_queue,
    put_many_plain,
    queue_depth,
    s3_client,
    s3_event,
    sqs_client,
    trigger,
    unique_bucket,
    use_connection,
)
from tests.triggerer_harness import first_payload, wait_until

pytestmark = pytest.mark.integration

HOUR = 3600.0
BURST = 1000
"""PutObjects in the burst test (moto's in-process server takes ~1 ms of this process's CPU each)."""


@pytest.fixture(autouse=True)
def s3_connection(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_connection(monkeypatch, s3_endpoint)


async def notified_bucket(endpoint: str, label: str, *, notify: bool = True, **queue: str) -> tuple[str, str]:
    """A new bucket and a new queue; with ``notify``, the bucket sends its object events to the queue."""
    bucket = unique_bucket(label)
    await create_bucket(endpoint, bucket)
    queue_url = await create_queue(endpoint, f"tk-{label}-{uuid.uuid4().hex[:8]}", **queue)
    if notify:
        await notify_queue(endpoint, bucket, queue_url)
    return bucket, queue_url


def listener_of(queue_url: str) -> SqsListener | None:
    return get_hub().sqs_listeners.listeners.get((CONN_ID, queue_url))


def channel_of(queue_url: str) -> Channel | None:
    for channel in get_hub().channels.channels.values():
        if getattr(channel.source, "config", None) and channel.source.config.sqs_queue_url == queue_url:  # type: ignore[attr-defined]
            return channel
    return None


def quiet(queue_url: str, waiters: int = 1) -> bool:
    """The listener is live and every waiter of its channel was polled, and none is due for a minute.

    Regular polls come on multiples of ``reconcile_interval`` (an hour) of the loop's clock: a waiter
    due within the minute waits for that tick to pass, so no regular poll falls into the test's
    30 s wait that follows.
    """
    listener, channel = listener_of(queue_url), channel_of(queue_url)
    if listener is None or channel is None or not listener.live or channel.running:
        return False
    now = asyncio.get_running_loop().time()
    mine = [w for w in get_hub().channels.ticker.waiters() if w.owner is channel]
    return len(mine) == waiters and all(not w.busy and w.due - now > 60 for w in mine)


async def test_a_notification_wakes_a_watch_that_would_not_poll_for_an_hour(s3_endpoint: str) -> None:
    bucket, queue_url = await notified_bucket(s3_endpoint, "wake")
    t = trigger(bucket, prefixes="in/", sqs_queue_url=queue_url, poll_interval=HOUR, reconcile_interval=HOUR)
    wait = asyncio.ensure_future(first_payload(t))
    try:
        await wait_until(lambda: quiet(queue_url), timeout=120, what="the listener live and the watch idle")
        listener, channel = listener_of(queue_url), channel_of(queue_url)
        assert listener is not None and channel is not None
        polls = channel.polls
        async with s3_client(s3_endpoint) as s3:
            await s3.put_object(Bucket=bucket, Key="elsewhere/skip.csv", Body=b"x")  # wakes no one
            await s3.put_object(Bucket=bucket, Key="in/a b.csv", Body=b"x")
        payload = await asyncio.wait_for(asyncio.shield(wait), 30)
    finally:
        wait.cancel()
    assert [i["key"] for i in payload["items"]] == ["in/a b.csv"]
    assert channel.polls - polls <= 2, "the notification woke one poll (two if the first raced the upload)"
    assert (listener.connects, listener.failures) == (1, 0)
    assert listener.received >= 2, "s3:TestEvent (maybe) and the two uploads"
    # The watch ended, so did the listener: every message it received was deleted, none before its poll.
    await wait_until(lambda: listener_of(queue_url) is None, what="the listener to stop with its last watch")
    assert await queue_depth(s3_endpoint, queue_url) == 0
    assert listener.deleted >= 2 and listener.delete_failures == 0


async def test_lost_notifications_lose_nothing_the_reconcile_poll_finds_the_objects(s3_endpoint: str) -> None:
    """The queue is read, but the bucket sends it nothing: the rare reconcile poll still finds everything."""
    bucket, queue_url = await notified_bucket(s3_endpoint, "lost", notify=False)
    t = trigger(
        bucket, prefixes="in/", sqs_queue_url=queue_url, poll_interval=HOUR, reconcile_interval=1, max_items=100
    )
    wait = asyncio.ensure_future(first_payload(t))
    try:
        await wait_until(lambda: (listener := listener_of(queue_url)) is not None and listener.live, timeout=30)
        listener = listener_of(queue_url)
        assert listener is not None
        await asyncio.sleep(0.5)  # let the first polls find the empty prefix
        async with s3_client(s3_endpoint) as s3:
            for n in range(3):
                await s3.put_object(Bucket=bucket, Key=f"in/{n}.csv", Body=b"x")
        payload = await asyncio.wait_for(asyncio.shield(wait), 30)
    finally:
        wait.cancel()
    found = {i["key"] for i in payload["items"]}
    assert found and found <= {f"in/{n}.csv" for n in range(3)}
    assert listener.live and listener.received == 0, "found by a reconcile poll, not by a notification"


async def test_a_burst_of_notifications_coalesces_into_few_polls(s3_endpoint: str) -> None:
    bucket, queue_url = await notified_bucket(s3_endpoint, "burst")
    t = trigger(
        bucket,
        prefixes="in/",
        sqs_queue_url=queue_url,
        poll_interval=HOUR,
        reconcile_interval=HOUR,
        max_items=BURST,
        start_from="beginning",
    )
    keys = {f"in/{n:05}.csv" for n in range(BURST)}
    seen: list[str] = []
    async with open_session(t) as session:

        async def consume() -> int:
            cursor = None
            batches = 0
            while len(seen) < BURST:
                batch = await session.next_batch(cursor)
                batches += 1
                seen.extend(str(i.data["key"]) for i in batch.items)
                cursor = batch.cursor
            return batches

        consumer = asyncio.ensure_future(consume())
        try:
            await wait_until(lambda: quiet(queue_url), timeout=120, what="the listener live and the watch idle")
            listener, channel = listener_of(queue_url), channel_of(queue_url)
            assert listener is not None and channel is not None
            polls, received = channel.polls, listener.received
            await put_many_plain(s3_endpoint, bucket, sorted(keys))
            batches = await asyncio.wait_for(asyncio.shield(consumer), 120)
            await wait_until(lambda: listener.received - received >= BURST, timeout=60, what="every notification")
            await wait_until(lambda: not channel.running, what="the last poll")
        finally:
            consumer.cancel()
        burst_polls = channel.polls - polls
        print(f"{BURST} notifications: {burst_polls} polls, {batches} batches, {listener.flushes} flushes")
        assert sorted(seen) == sorted(keys), "every object once"
        assert burst_polls <= BURST // 10, f"{BURST} notifications made {burst_polls} polls"
        await wait_until(lambda: _empty(s3_endpoint, queue_url), timeout=60, what="every message deleted")


async def _empty(endpoint: str, queue_url: str) -> bool:
    return await queue_depth(endpoint, queue_url) == 0


async def test_a_failing_listener_falls_back_reconnects_and_wakes_again(s3_endpoint: str) -> None:
    """The queue is deleted under the listener, then created again: it fails, polls meanwhile, reconnects."""
    bucket, queue_url = await notified_bucket(s3_endpoint, "fail")
    name = queue_url.rsplit("/", 1)[-1]
    t = trigger(bucket, prefixes="in/", sqs_queue_url=queue_url, poll_interval=HOUR, reconcile_interval=HOUR)
    wait = asyncio.ensure_future(first_payload(t))
    try:
        await wait_until(lambda: quiet(queue_url), timeout=120, what="the listener live and the watch idle")
        listener, channel = listener_of(queue_url), channel_of(queue_url)
        assert listener is not None and channel is not None
        async with sqs_client(s3_endpoint) as sqs:
            await sqs.delete_queue(QueueUrl=queue_url)
        # The long poll in progress ends within 20 s; the next one fails.
        await wait_until(lambda: listener.failures >= 1, timeout=60, what="the listener to fail")
        assert not listener.live
        assert await create_queue(s3_endpoint, name) == queue_url
        await notify_queue(s3_endpoint, bucket, queue_url)
        await wait_until(lambda: listener.connects >= 2, timeout=90, what="the listener to reconnect")
        await wait_until(lambda: quiet(queue_url), timeout=120, what="the watch idle again")
        assert not wait.done()
        async with s3_client(s3_endpoint) as s3:
            await s3.put_object(Bucket=bucket, Key="in/after.csv", Body=b"x")
        payload = await asyncio.wait_for(asyncio.shield(wait), 30)
    finally:
        wait.cancel()
    assert [i["key"] for i in payload["items"]] == ["in/after.csv"]
    assert listener.connects == 2 and listener.failures >= 1


async def test_a_message_whose_poll_failed_is_left_in_the_queue(s3_endpoint: str) -> None:
    """The poll a message woke fails (the bucket is gone): the message is not deleted, it comes back."""
    bucket, queue_url = await notified_bucket(s3_endpoint, "keep")
    t = trigger(bucket, prefixes="in/", sqs_queue_url=queue_url, poll_interval=HOUR, reconcile_interval=HOUR)
    wait = asyncio.ensure_future(first_payload(t))
    try:
        await wait_until(lambda: quiet(queue_url), timeout=120, what="the listener live and the watch idle")
        listener = listener_of(queue_url)
        assert listener is not None
        await wait_until(lambda: _empty(s3_endpoint, queue_url), timeout=30, what="s3:TestEvent deleted")
        async with s3_client(s3_endpoint) as s3:
            await s3.delete_bucket(Bucket=bucket)
        async with sqs_client(s3_endpoint) as sqs:
            await sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(bucket, "in/ghost.csv"))
        payload = await asyncio.wait_for(asyncio.shield(wait), 30)
    finally:
        wait.cancel()
    assert payload["status"] == "error" and bucket in payload["message"], payload
    await wait_until(lambda: listener_of(queue_url) is None, what="the listener to stop with its last watch")
    assert listener.pending.abandoned >= 1
    assert await queue_depth(s3_endpoint, queue_url) == 1, "the message waits for its visibility timeout"
