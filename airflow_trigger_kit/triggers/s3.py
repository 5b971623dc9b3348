"""S3ObjectsTrigger: new and changed objects under S3 prefixes, without touching the bucket."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence

from typing_extensions import Unpack

from airflow_trigger_kit.aws_connection import DEFAULT_AWS_CONN_ID, aresolve_client_config
from airflow_trigger_kit.hub.channels import ChannelSubscription
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.settings import CommonTriggerKwargs, WatchSettings
from airflow_trigger_kit.sources.base import JSON, Source
from airflow_trigger_kit.sources.s3 import S3Source, S3WatchConfig
from airflow_trigger_kit.sources.s3.listing_cache import ListingCache
from airflow_trigger_kit.sources.s3.snapshot_store import SnapshotSuperseded
from airflow_trigger_kit.state import ProcessState
from airflow_trigger_kit.triggers.base import IncrementalTrigger
from airflow_trigger_kit.triggers.session import Subscription


class S3ObjectsTrigger(IncrementalTrigger):
    """Fires once per new (and, optionally, overwritten or deleted) object under ``prefixes``.

    Unlike ``S3KeyTrigger``, which fires for as long as a key exists, this trigger keeps a cursor,
    so an object is reported once and the bucket is left untouched (no deleting or moving objects
    to avoid re-triggering). Each item carries ``bucket``, ``key``, ``uri``, ``prefix``, ``size``,
    ``etag``, ``last_modified`` (ISO 8601), ``kind`` and ``dedup_id``.

    :param bucket: the bucket name (no ``s3://``).
    :param prefixes: one prefix or several non-overlapping ones (``""``: the whole bucket).
    :param glob: fnmatch pattern(s) on the full key (``*`` also matches ``/``); any may match.
    :param regex: a regular expression searched in the full key (instead of ``glob``).
    :param min_size: ignore objects smaller than this many bytes.
    :param event_kinds: ``created`` (default), ``modified``, ``deleted``, or ``"all"``.
    :param key_order: ``"any"`` (full listing each poll, any key layout) or ``"lexicographic"``
        (list after the last key seen: one request per prefix per empty poll; for keys that grow
        over time; ``created`` only).
    :param lookback_seconds: ``key_order="any"`` with ``created`` only: how far behind the newest
        object a late object (a multipart upload, whose LastModified is its start time) may be and
        still be reported. Set it above your longest upload.
    :param legacy_bucket_name: accept a bucket name outside S3's current naming rules (a bucket
        created before March 2018, or an S3-compatible store with other rules); by default
        ``bucket`` must follow AWS's rules for general purpose (or directory) buckets.
    :param sqs_queue_url: the URL of an SQS queue that receives the bucket's event notifications
        (opt-in): a message wakes the watch at once, and while the queue is read the watch polls
        only every ``reconcile_interval``. Read with the ``aws_conn_id`` connection; messages are
        deleted once the poll they woke was handed over, so dedicate the queue to the watches.
        See "Change notifications" in ``docs/s3.md``.
    :param aws_conn_id: Airflow AWS connection, looked up when the trigger runs (``None``:
        botocore's default credential chain). A missing ``aws_default`` also means the default chain.

    The common parameters (``namespace``, ``name``, ``mode``, ``start_from``, ``poll_interval``,
    ``max_items``, retries) are those of :class:`~airflow_trigger_kit.settings.WatchSettings`.
    The design, the cursor layouts and their sizes are described in
    :mod:`airflow_trigger_kit.sources.s3` and ``docs/s3.md``.

    Errors: a missing bucket, denied access and rejected credentials fail the trigger with a
    message naming bucket, prefix and conn id; throttling and network errors are retried with
    exponential backoff.
    """

    source_kind = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        namespace: str,
        name: str,
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
        poll_interval: float = 30.0,
        **common: Unpack[CommonTriggerKwargs],
    ) -> None:
        self.config = S3WatchConfig.create(
            bucket=bucket,
            prefixes=prefixes,
            glob=glob,
            regex=regex,
            min_size=min_size,
            event_kinds=event_kinds,
            key_order=key_order,
            lookback_seconds=lookback_seconds,
            legacy_bucket_name=legacy_bucket_name,
            sqs_queue_url=sqs_queue_url,
        )
        self.aws_conn_id = validate_aws_conn_id(aws_conn_id)
        settings = WatchSettings(namespace=namespace, name=name, poll_interval=poll_interval, **common)
        super().__init__(
            source_kwargs={**self.config.to_kwargs(), "aws_conn_id": self.aws_conn_id},
            settings=settings,
        )

    def source_identity(self) -> Hashable:
        """Watches of equal parameters share one source in the hub; with the snapshot layout, only
        watches of the same namespace and name do, since that layout keeps per-key memory in the
        watch's own ProcessState (see :mod:`airflow_trigger_kit.sources.s3.snapshot_memory`)."""
        identity = super().source_identity()
        if self.config.layout == "snapshot":
            return (identity, self.namespace, self.name)
        return identity

    async def subscribe(self) -> Subscription:
        """The hub's channel of this watch; with ``sqs_queue_url``, woken by that queue's messages."""
        subscription = await super().subscribe()
        queue_url = self.config.sqs_queue_url
        if queue_url is None or not isinstance(subscription, ChannelSubscription):
            return subscription
        from airflow_trigger_kit.hub import get_hub

        return get_hub().sqs_listeners.attach(subscription, self.aws_conn_id, queue_url)

    def build_source(self, listings: ListingCache | None = None) -> Source:
        namespace, name = self.namespace, self.name
        return S3Source(
            self.config,
            resolve_client=functools.partial(aresolve_client_config, self.aws_conn_id),
            conn_id=self.aws_conn_id,
            chunk_store=lambda: ProcessStateChunkStore(ProcessState(namespace, name)),
            listings=listings,
        )

    def build_shared_source(self) -> Source:
        """The hub's source: whole-prefix listings shared with every other S3 watch of the process."""
        from airflow_trigger_kit.hub import get_hub

        return self.build_source(listings=get_hub().s3_listings)


class ProcessStateChunkStore:
    """The snapshot layout's chunks in the watch's own ProcessState, next to its cursor.

    Chunks are values under ``s3snap.*`` keys of the same namespace and name as the cursor, so
    ``trigger-kit state reset`` clears them with it. See :mod:`airflow_trigger_kit.sources.s3.snapshot_memory`.
    """

    def __init__(self, state: ProcessState, cursor_key: str = CURSOR_KEY) -> None:
        self.state = state
        self.cursor_key = cursor_key
        self.max_value_bytes = state.max_value_bytes

    def describe(self) -> str:
        return f"watch namespace={self.state.namespace!r} name={self.state.name!r}"

    async def get_chunks(self, refs: Sequence[str]) -> dict[str, JSON]:
        return await self.state.aget_many(refs)

    async def put_chunks(self, values: Mapping[str, str]) -> None:
        await self.state.aset_many(values)

    async def delete_chunks(self, refs: Sequence[str]) -> int:
        return await self.state.adelete_many(refs)

    async def chunk_refs(self, prefix: str) -> list[str]:
        return await self.state.alist_keys(prefix)

    async def committed_cursor(self) -> tuple[JSON, int] | None:
        entry = await self.state.aget(self.cursor_key)
        return None if entry is None else (entry.value, entry.version)

    def superseded(self, committed_version: int, detail: str) -> SnapshotSuperseded:
        return SnapshotSuperseded(self.state.namespace, self.state.name, self.cursor_key, committed_version, detail)


def validate_aws_conn_id(aws_conn_id: str | None) -> str | None:
    if aws_conn_id is not None and (not isinstance(aws_conn_id, str) or not aws_conn_id.strip()):
        raise ValueError(
            f"aws_conn_id must be an Airflow connection id or None (botocore's default chain), got {aws_conn_id!r}"
        )
    return aws_conn_id
