"""S3Source: one aiobotocore client per trigger run, concurrent listings, detection off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from airflow_trigger_kit.aws_connection import AwsClientConfig
from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError, Source
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.cursor import check_cursor, empty_cursor, iso_seconds
from airflow_trigger_kit.sources.s3.detect import detect
from airflow_trigger_kit.sources.s3.detect_window import stored_floor
from airflow_trigger_kit.sources.s3.errors import classify_error
from airflow_trigger_kit.sources.s3.listing import LIST_CONCURRENCY, PrefixListing, keep_only, list_prefix
from airflow_trigger_kit.sources.s3.listing_cache import ListingCache
from airflow_trigger_kit.sources.s3.objects import S3Object
from airflow_trigger_kit.sources.s3.snapshot_memory import SnapshotMemory
from airflow_trigger_kit.sources.s3.snapshot_store import ChunkStore

log = logging.getLogger(__name__)

ClientConfigResolver = Callable[[], Awaitable[AwsClientConfig]]


class S3Source(Source):
    """Watches ``config.prefixes`` of ``config.bucket`` through one lazily created aiobotocore client.

    :param resolve_client: returns the client settings; called once, on the first poll, so the
        connection is looked up at run time (never at DAG parse time, never serialized).
    :param conn_id: the connection id, for error messages and logs.
    :param chunk_store: returns where the snapshot layout keeps its chunks (the watch's own
        ProcessState, next to its cursor); called on the first snapshot poll. Required for
        ``event_kinds`` with ``modified`` or ``deleted``, unused otherwise.
    :param listings: full listings shared with the other watches of the process (the ``window``
        and ``snapshot`` layouts list each prefix whole; see
        :mod:`airflow_trigger_kit.sources.s3.listing_cache`); ``None`` lists alone.
    """

    kind = "s3"

    def __init__(
        self,
        config: S3WatchConfig,
        resolve_client: ClientConfigResolver,
        conn_id: str | None,
        chunk_store: Callable[[], ChunkStore] | None = None,
        listings: ListingCache | None = None,
    ) -> None:
        self.config = config
        self._listings = listings
        self._resolve_client = resolve_client
        self.conn_id = conn_id
        self._chunk_store = chunk_store
        self._memory: SnapshotMemory | None = None
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

        def fail(exc: BaseException) -> Exception:
            return classify_error(
                exc, bucket=self.config.bucket, prefix=prefix, conn_id=self.conn_id, endpoint=endpoint
            )

        return await list_prefix(
            client,
            self.config,
            prefix,
            start_after=start_after,
            keep=keep,
            stop_after=stop_after,
            classify=fail,
            conn_id=self.conn_id,
        )

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
                floor = stored_floor(old.get(prefix))
                return lambda o: o.last_modified >= floor and config.matches_key(o.key)
            return lambda o: config.matches_key(o.key)

        shared = self._listings if config.layout != "lexicographic" and max_items is not None else None

        async def whole(prefix: str) -> PrefixListing:
            async with semaphore:
                return await self._list_prefix(prefix, start_after=None, keep=lambda o: True, stop_after=None)

        async def one(prefix: str) -> PrefixListing:
            if shared is not None:
                listing = await shared.listing((self.conn_id, config.bucket, prefix), lambda: whole(prefix))
                return keep_only(listing, keep_for(prefix))
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

    @property
    def memory(self) -> SnapshotMemory:
        """The snapshot layout's chunk memory of this run (created on first use)."""
        if self._memory is None:
            if self._chunk_store is None:
                raise PermanentSourceError(
                    f"{self.describe()}: event_kinds {list(self.config.event_kinds)} keep a snapshot of every "
                    "object in chunks next to the cursor, but this source was built without a chunk store"
                )
            self._memory = SnapshotMemory(self._chunk_store())
        return self._memory

    async def _detect(self, cursor: dict[str, JSON], listings: list[PrefixListing], max_items: int) -> Batch:
        if self.config.layout == "lexicographic":
            return detect(self.config, cursor, listings, max_items)
        if self.config.layout == "snapshot":
            return await self.memory.detect(self.config, cursor, listings, max_items)
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
        if self.config.layout == "snapshot":
            # Load first: a cursor that lost its chunks to a newer commit fails before any listing.
            await self.memory.load(self.config, current)
            await self.memory.collect_garbage(current)
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
                    "hwm": iso_seconds(state.get("hwm")),
                    "floor": iso_seconds(state.get("floor")),
                    "edge": state.get("n"),
                }
            elif isinstance(state, dict):
                summary[prefix] = {"tracked": state.get("n"), "pages": len(state.get("m") or [])}
        return summary
