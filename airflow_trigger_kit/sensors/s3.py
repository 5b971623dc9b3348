"""S3ObjectsSensor: wait for new objects under S3 prefixes, without holding a worker slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_trigger_kit.aws_connection import DEFAULT_AWS_CONN_ID
from airflow_trigger_kit.sensors.base import IncrementalSensor
from airflow_trigger_kit.sources.s3 import S3WatchConfig
from airflow_trigger_kit.triggers.s3 import S3ObjectsTrigger, validate_aws_conn_id


class S3ObjectsSensor(IncrementalSensor):
    """Succeeds when new (or changed) objects are found under ``prefixes``; returns them (XCom).

    Parameters as :class:`~airflow_trigger_kit.triggers.s3.S3ObjectsTrigger` (``bucket``,
    ``prefixes``, ``glob``, ``regex``, ``min_size``, ``event_kinds``, ``key_order``,
    ``lookback_seconds``, ``legacy_bucket_name``, ``sqs_queue_url``, ``aws_conn_id``) plus those of
    :class:`~airflow_trigger_kit.sensors.base.IncrementalSensor`. ``bucket``, ``prefixes``,
    ``glob`` and ``regex`` are templated. ``poke_interval`` is also the trigger's polling interval:
    each poll costs one LIST request per prefix (``key_order="lexicographic"``) or one per 1,000
    objects under the prefixes (``"any"``).

    The connection is looked up only when the sensor runs (on the worker, then in the triggerer),
    never at DAG parse time.
    """

    trigger_class = S3ObjectsTrigger
    template_fields: tuple[str, ...] = (*IncrementalSensor.template_fields, "bucket", "prefixes", "glob", "regex")

    def __init__(
        self,
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
        aws_conn_id: str | None = DEFAULT_AWS_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.prefixes = prefixes
        self.glob = glob
        self.regex = regex
        self.min_size = min_size
        self.event_kinds = event_kinds
        self.key_order = key_order
        self.lookback_seconds = lookback_seconds
        self.legacy_bucket_name = legacy_bucket_name
        self.sqs_queue_url = sqs_queue_url
        self.aws_conn_id = validate_aws_conn_id(aws_conn_id)
        if not any(_templated(v) for v in (bucket, prefixes, glob, regex)):
            self.source_kwargs()  # validate at DAG parse time

    def source_kwargs(self) -> dict[str, Any]:
        config = S3WatchConfig.create(
            bucket=self.bucket,
            prefixes=self.prefixes,
            glob=self.glob,
            regex=self.regex,
            min_size=self.min_size,
            event_kinds=self.event_kinds,
            key_order=self.key_order,
            lookback_seconds=self.lookback_seconds,
            legacy_bucket_name=self.legacy_bucket_name,
            sqs_queue_url=self.sqs_queue_url,
        )
        return {**config.to_kwargs(), "aws_conn_id": self.aws_conn_id}


def _templated(value: Any) -> bool:
    values = [value] if isinstance(value, str) else list(value or [])
    return any(isinstance(v, str) and "{{" in v for v in values)
