"""Reading S3 event notifications: which bucket and keys an SQS message is about (pure functions).

The hub's SQS listener (:mod:`airflow_trigger_kit.hub.sqs`, which holds the design) reads these
messages only to decide *whom* to wake; what a watch reports is always what its own poll finds.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from airflow_trigger_kit.sources.s3.config import S3WatchConfig

_AWS_QUEUE_HOST = re.compile(r"sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com")

Record = tuple[str, str]
"""A record of a notification: (bucket, key)."""


def parse_message(body: str) -> list[Record] | None:
    """The (bucket, key) records of an SQS message body; ``None``: wake every watch of the queue.

    Reads S3's own event notifications (``{"Records": [{"s3": {"bucket": {"name"}, "object":
    {"key"}}}]}``, keys URL-encoded with ``+`` for spaces), the same inside an SNS envelope
    (``{"Type": "Notification", "Message": "..."}``, for fan-out through a topic) and EventBridge's
    S3 events (``{"source": "aws.s3", "detail": {"bucket": {"name"}, "object": {"key"}}}``).
    ``s3:TestEvent`` (sent when a bucket's notification configuration is saved) and anything else
    give ``None``.
    """
    try:
        message: Any = json.loads(body)
        if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
            message = json.loads(message["Message"])
    except (TypeError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    try:
        if message.get("source") == "aws.s3" and isinstance(message.get("detail"), dict):
            detail = message["detail"]
            return [(str(detail["bucket"]["name"]), str(detail["object"]["key"]))]
        records = message.get("Records")
        if not isinstance(records, list) or not records:
            return None
        found = []
        for record in records:
            s3 = record["s3"]
            found.append((str(s3["bucket"]["name"]), unquote_plus(str(s3["object"]["key"]))))
        return found
    except (KeyError, TypeError):
        return None


def queue_region(queue_url: str) -> str | None:
    """The AWS region an SQS queue URL names (``sqs.eu-west-1.amazonaws.com``), if it names one."""
    host = (urlsplit(queue_url).hostname or "").lower()
    match = _AWS_QUEUE_HOST.fullmatch(host)
    if match is None:
        return None
    return match.group(1) or match.group(2)


def concerns(config: S3WatchConfig, bucket: str, key: str) -> bool:
    """Whether an event for ``key`` of ``bucket`` concerns a watch of ``config`` (bucket and prefixes only)."""
    return config.bucket == bucket and any(key.startswith(prefix) for prefix in config.prefixes)


def listing_concerns(listing_key: Any, bucket: str, key: str) -> bool:
    """Whether a shared listing keyed ``(conn_id, bucket, prefix)`` covers ``key`` of ``bucket``."""
    return (
        isinstance(listing_key, tuple)
        and len(listing_key) == 3
        and listing_key[1] == bucket
        and key.startswith(str(listing_key[2]))
    )
