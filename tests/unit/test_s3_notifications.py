"""S3 change notifications: reading messages, the queue URL check, and when a message may be deleted.

Pure logic only (the listener on a real queue has integration tests in
``tests/integration/test_s3_notifications.py``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from airflow_trigger_kit.assets.s3 import s3_asset
from airflow_trigger_kit.hub.scheduling import Waiter
from airflow_trigger_kit.hub.sqs import PendingDeletes
from airflow_trigger_kit.sensors.s3 import S3ObjectsSensor
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.notifications import concerns, parse_message, queue_region
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger

pytestmark = pytest.mark.unit

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/landing-events"
WATCH: dict[str, Any] = {"namespace": "n", "name": "w"}


def s3_body(*records: tuple[str, str]) -> str:
    return json.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": b}, "object": {"key": k}}}
                for b, k in records
            ]
        }
    )


# -- reading messages --------------------------------------------------------------------------------
def test_s3_records_give_bucket_and_decoded_key() -> None:
    body = s3_body(("lake", "in/a+b%2Bc.csv"), ("lake", "in%2Fd.csv"))
    assert parse_message(body) == [("lake", "in/a b+c.csv"), ("lake", "in/d.csv")]


def test_sns_envelope_and_eventbridge_events_are_read_too() -> None:
    sns = json.dumps({"Type": "Notification", "Message": s3_body(("lake", "in/x.csv"))})
    assert parse_message(sns) == [("lake", "in/x.csv")]
    bridge = json.dumps({"source": "aws.s3", "detail": {"bucket": {"name": "lake"}, "object": {"key": "in/y z"}}})
    assert parse_message(bridge) == [("lake", "in/y z")], "EventBridge keys are not URL-encoded"


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "lake"}),
        "not json",
        "[]",
        json.dumps({"Records": []}),
        json.dumps({"Records": [{"s3": {"bucket": {}}}]}),
        json.dumps({"Type": "Notification", "Message": "{broken"}),
    ],
)
def test_test_events_and_unreadable_messages_wake_everyone(body: str) -> None:
    assert parse_message(body) is None


def test_a_record_concerns_watches_of_its_bucket_whose_prefix_starts_the_key() -> None:
    config = S3WatchConfig.create(bucket="lake", prefixes=["in/", "other/"], glob="*.csv")
    assert concerns(config, "lake", "in/a.csv")
    assert concerns(config, "lake", "other/deep/b.json"), "bucket and prefix only: the poll applies the glob"
    assert not concerns(config, "lake", "out/a.csv")
    assert not concerns(config, "another", "in/a.csv")


def test_region_comes_from_aws_queue_hosts_only() -> None:
    assert queue_region(QUEUE) == "eu-west-1"
    assert queue_region("https://eu-central-1.queue.amazonaws.com/123456789012/q") == "eu-central-1"
    assert queue_region("http://127.0.0.1:4566/000000000000/q") is None


# -- the parameter -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("arn:aws:sqs:eu-west-1:123456789012:landing-events", "sqs_queue_url must be an SQS queue URL"),
        ("landing-events", "sqs_queue_url must be an SQS queue URL"),
        ("https://sqs.eu-west-1.amazonaws.com/landing-events", "12-digit account id"),
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/landing-events?x=1", "sqs_queue_url must be"),
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/landing.fifo", "FIFO queue"),
        ("", "sqs_queue_url must be an SQS queue URL"),
    ],
)
def test_bad_queue_urls_are_refused_at_parse_time_naming_the_parameter(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        S3ObjectsTrigger(bucket="lake", sqs_queue_url=url, **WATCH)
    assert repr(url) in str(info.value)
    with pytest.raises(ValueError, match=message):
        S3ObjectsSensor(task_id="t", bucket="lake", sqs_queue_url=url)
    with pytest.raises(ValueError, match=message):
        s3_asset("a", bucket="lake", sqs_queue_url=url)


def test_queue_url_round_trips_and_is_part_of_the_identity_only_when_set() -> None:
    with_queue = S3ObjectsTrigger(bucket="lake", sqs_queue_url=QUEUE, reconcile_interval=120, **WATCH)
    classpath, kwargs = with_queue.serialize()
    assert kwargs["sqs_queue_url"] == QUEUE and kwargs["reconcile_interval"] == 120
    assert S3ObjectsTrigger(**kwargs).serialize() == (classpath, kwargs)
    without = S3ObjectsTrigger(bucket="lake", **WATCH)
    assert "sqs_queue_url" not in without.serialize()[1], "the kwargs of ordinary watches stay as they were"
    assert with_queue.source_identity() != without.source_identity()
    sensor = S3ObjectsSensor(task_id="t", bucket="lake", sqs_queue_url=QUEUE)
    assert sensor.make_trigger("n", "w").serialize()[1]["sqs_queue_url"] == QUEUE


# -- when a message may be deleted ---------------------------------------------------------------------
def waiter(loop: asyncio.AbstractEventLoop) -> Waiter:
    return Waiter(None, 10, 30.0, loop.create_future(), owner=object())


def test_deleted_once_every_woken_waiter_got_a_poll_started_after_the_wake() -> None:
    loop = asyncio.new_event_loop()
    try:
        pending = PendingDeletes()
        a, b = waiter(loop), waiter(loop)
        assert pending.woke("m1", "h1", 10.0, [a, b]) == []
        assert pending.handed_over([a], 9.0) == [], "a poll started before the wake does not count"
        assert pending.handed_over([a], 10.0) == [], "b still waits for its poll"
        assert pending.handed_over([b], 10.5) == ["h1"]
        assert len(pending) == 0
    finally:
        loop.close()


def test_a_failed_poll_leaves_the_message_for_its_visibility_timeout() -> None:
    loop = asyncio.new_event_loop()
    try:
        pending = PendingDeletes()
        a = waiter(loop)
        pending.woke("m1", "h1", 10.0, [a])
        assert pending.handed_over([a], None) == []
        assert pending.handed_over([a], 11.0) == [], "abandoned: never deleted by this receipt"
        assert pending.abandoned == 1 and len(pending) == 0
    finally:
        loop.close()


def test_a_batch_from_an_earlier_poll_counts_and_so_does_a_waiter_that_went_away() -> None:
    loop = asyncio.new_event_loop()
    try:
        pending = PendingDeletes()
        busy, gone = waiter(loop), waiter(loop)
        pending.woke("m1", "h1", 10.0, [busy, gone])
        busy.future.set_result(object())  # type: ignore[arg-type]  # its trigger polls again at once
        assert pending.handed_over([busy], 9.0) == []
        gone.future.cancel()
        assert pending.sweep(11.0, max_age=30.0) == ["h1"]
    finally:
        loop.close()


def test_no_waiter_no_wait_a_received_again_message_keeps_its_newest_handle_old_ones_are_forgotten() -> None:
    loop = asyncio.new_event_loop()
    try:
        pending = PendingDeletes()
        assert pending.woke("m0", "h0", 10.0, []) == ["h0"], "nobody waits: whoever waits later polls first"
        a = waiter(loop)
        pending.woke("m1", "old", 10.0, [a])
        pending.woke("m1", "new", 20.0, [a])
        assert pending.handed_over([a], 15.0) == []
        assert pending.handed_over([a], 20.0) == ["new"]
        pending.woke("m2", "h2", 30.0, [a])
        assert pending.sweep(100.0, max_age=30.0) == [] and len(pending) == 0
    finally:
        loop.close()
