"""Parameters of an S3 watch: validated once, at DAG parse time, with messages naming the parameter."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_trigger_kit.sources.base import JSON
from airflow_trigger_kit.sources.globs import check_globs
from airflow_trigger_kit.sources.s3.naming import is_directory_bucket, validate_bucket_name, warn_about_prefix

if TYPE_CHECKING:
    from airflow_trigger_kit.sources.s3.objects import S3Object

EVENT_KINDS = ("created", "modified", "deleted")
KEY_ORDERS = ("any", "lexicographic")


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
    legacy_bucket_name: bool = False
    sqs_queue_url: str | None = None
    """The SQS queue that receives the bucket's event notifications (they wake the watch early)."""

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
        legacy_bucket_name: bool = False,
        sqs_queue_url: str | None = None,
    ) -> S3WatchConfig:
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket must be a non-empty bucket name, got {bucket!r}")
        if bucket.startswith("s3://") or "/" in bucket:
            raise ValueError(
                f"bucket must be a bare bucket name (put the key part in prefixes), got {bucket!r}; "
                "for 's3://my-bucket/landing/' use bucket='my-bucket', prefixes='landing/'"
            )
        if not isinstance(legacy_bucket_name, bool):
            raise ValueError(f"legacy_bucket_name must be True or False, got {legacy_bucket_name!r}")
        validate_bucket_name(bucket, legacy=legacy_bucket_name)
        prefix_list = _string_list("prefixes", prefixes, allow_empty_string=True)
        if not prefix_list:
            raise ValueError("prefixes must name at least one prefix ('' watches the whole bucket), got []")
        for i, p in enumerate(prefix_list):
            if p in prefix_list[:i]:
                raise ValueError(f"prefixes lists {p!r} twice")
        for p in prefix_list:
            warn_about_prefix(p)
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
        if key_order == "lexicographic" and is_directory_bucket(bucket):
            raise ValueError(
                f"key_order='lexicographic' cannot watch the directory bucket {bucket!r}: S3 Express directory "
                "buckets do not list keys in lexicographic order, so a StartAfter cursor would skip keys; "
                "use key_order='any'"
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
        queue_url = validate_sqs_queue_url(sqs_queue_url)
        return cls(
            bucket=bucket,
            prefixes=tuple(prefix_list),
            glob=tuple(globs),
            regex=regex,
            min_size=min_size,
            event_kinds=kinds,
            key_order=key_order,
            lookback_seconds=int(lookback_seconds),
            legacy_bucket_name=legacy_bucket_name,
            sqs_queue_url=queue_url,
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
            # Only when set, so the kwargs (and the trigger hash) of ordinary watches stay as they were.
            **({"legacy_bucket_name": True} if self.legacy_bucket_name else {}),
            **({"sqs_queue_url": self.sqs_queue_url} if self.sqs_queue_url else {}),
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


_QUEUE_PATH = re.compile(r"/(?P<account>[0-9]{12})/(?P<name>[A-Za-z0-9_-]{1,80}(?:\.fifo)?)")


def validate_sqs_queue_url(url: str | None) -> str | None:
    """``url`` if it has the shape of an SQS queue URL (``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME``
    on AWS; any http(s) host, such as LocalStack's or moto's, with the same path); ``None`` stays ``None``.

    Only the shape is checked here, at DAG parse time: whether the queue exists and receives the
    bucket's notifications is known only when the trigger runs (and a missing queue only delays
    detections to the regular polls).
    """
    if url is None:
        return None
    example = "https://sqs.us-east-1.amazonaws.com/123456789012/my-bucket-events"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"sqs_queue_url must be an SQS queue URL such as {example!r} or None, got {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    path = _QUEUE_PATH.fullmatch(parts.path.rstrip("/")) if parts is not None else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname or parts.query or path is None:
        raise ValueError(
            f"sqs_queue_url must be an SQS queue URL, https://HOST/ACCOUNT-ID/QUEUE-NAME with a 12-digit account "
            f"id (such as {example!r}; the queue's 'URL', not its ARN or name), got {url!r}"
        )
    if path.group("name").endswith(".fifo"):
        raise ValueError(
            f"sqs_queue_url names a FIFO queue ({url!r}), but S3 event notifications can only be sent to "
            "standard queues; create a standard queue for the bucket's notifications"
        )
    return url


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
