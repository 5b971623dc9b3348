"""The snapshot layout's memory at run time: load chunks, store new ones, collect garbage.

One :class:`SnapshotMemory` lives as long as its :class:`~airflow_trigger_kit.sources.s3.S3Source`
(one trigger run). Per poll:

1. **Load** the snapshots the cursor names: its pages, then their chunks, only those not cached
   (a ref's value never changes, so the decoded chunks of the previous poll are reused).
2. **Collect garbage** relative to the committed cursor (rule in
   :mod:`~airflow_trigger_kit.sources.s3.snapshot_chunks`), once per commit this memory sees;
   best effort, a failure is logged and retried at a later poll.
3. **Detect** in a worker thread (pure, :func:`~airflow_trigger_kit.sources.s3.detect_snapshot.detect_snapshot`).
4. **Store** the new chunks and pages *before* the batch leaves the source. The returned cursor
   only names stored values, so whoever commits it later (the sensor on the worker, a downstream
   task with ``commit="manual"``, the watcher's ``advance``) commits a complete snapshot.

Crash behaviour. A crash before step 4 completes leaves unreferenced chunks of a generation above
the committed one: nothing references them, the committed cursor is untouched, the next poll
starts from it again (same items, same dedup ids) and the orphans are collected once a later
commit's generation reaches theirs. A crash after step 4 is the same as one before a commit. A
chunk missing when loading means the cursor lost a race with a newer commit and its garbage
collection (:class:`~airflow_trigger_kit.sources.s3.snapshot_store.SnapshotSuperseded`: the
watch restarts from the committed cursor), or, if the missing chunk belongs to the committed
cursor itself, damage to the store (a permanent error naming the watch; reset it).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Batch, PermanentSourceError
from airflow_trigger_kit.sources.s3.config import S3WatchConfig
from airflow_trigger_kit.sources.s3.detect_snapshot import SnapshotResult, detect_snapshot
from airflow_trigger_kit.sources.s3.encodings import decode_entries, decode_refs
from airflow_trigger_kit.sources.s3.listing import PrefixListing
from airflow_trigger_kit.sources.s3.snapshot_chunks import (
    CHUNK_KEY_PREFIX,
    Chunk,
    Chunking,
    Page,
    PrefixSnapshot,
    ref_generation,
)
from airflow_trigger_kit.sources.s3.snapshot_store import ChunkStore

log = logging.getLogger(__name__)

DECODE_IN_THREAD_ABOVE = 8
"""Decode more chunks than this in a worker thread (each is up to 32 KiB of entries)."""


class SnapshotMemory:
    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.chunking = Chunking.for_limit(store.max_value_bytes)
        self._chunks: dict[str, Chunk] = {}
        self._pages: dict[str, Page] = {}
        self._gc_checked: JSON = None
        self._gc_done_for: JSON = None
        self.stats: dict[str, int] = {"chunks_read": 0, "chunks_written": 0, "bytes_written": 0, "chunks_deleted": 0}

    # -- one poll -----------------------------------------------------------------------------------
    async def detect(
        self, config: S3WatchConfig, cursor: dict[str, JSON], listings: Sequence[PrefixListing], max_items: int
    ) -> Batch:
        """Steps 1, 3 and 4 for listings already taken (the source lists between load and detect)."""
        snapshots = await self.load(config, cursor)
        result: SnapshotResult = await asyncio.to_thread(
            detect_snapshot, config, cursor, snapshots, listings, max_items, self.chunking
        )
        if result.written:
            await self.store.put_chunks(result.written)
            self.stats["chunks_written"] += len(result.written)
            self.stats["bytes_written"] += sum(len(v) for v in result.written.values())
        for snapshot in result.snapshots:
            self._pages.update((p.ref, p) for p in snapshot.pages)
            self._chunks.update((c.ref, c) for c in snapshot.chunks)
        self._forget_all_but([*snapshots, *result.snapshots])
        return result.batch

    async def load(self, config: S3WatchConfig, cursor: dict[str, JSON]) -> list[PrefixSnapshot]:
        """The snapshot of every configured prefix (a prefix new to the watch starts empty)."""
        states = cursor.get("prefixes") or {}
        page_refs: dict[str, list[str]] = {}
        for prefix in config.prefixes:
            raw = states.get(prefix)
            if raw is None:
                page_refs[prefix] = []
                continue
            if not isinstance(raw, dict) or not isinstance(raw.get("m"), list):
                raise self._damaged(f"prefix {prefix!r} has no page list: {str(raw)[:120]!r}")
            page_refs[prefix] = [str(r) for r in raw["m"]]
        await self._fetch_pages(cursor, [r for refs in page_refs.values() for r in refs])
        chunk_refs = [c for refs in page_refs.values() for r in refs for c in self._pages[r].refs]
        await self._fetch_chunks(cursor, chunk_refs)
        return [
            PrefixSnapshot(
                chunks=[self._chunks[c] for r in page_refs[prefix] for c in self._pages[r].refs],
                pages=[self._pages[r] for r in page_refs[prefix]],
            )
            for prefix in config.prefixes
        ]

    # -- garbage ------------------------------------------------------------------------------------
    async def collect_garbage(self, cursor: dict[str, JSON]) -> None:
        """Delete chunks no cursor that may still be committed can reference (see the module docstring).

        Runs when this memory polls from a cursor it has not checked yet, and deletes relative to
        the committed cursor at most once per committed cursor. Best effort: errors are logged.
        """
        if cursor == self._gc_checked:
            return
        try:
            committed = await self.store.committed_cursor()
            if committed is None or not _is_snapshot_cursor(committed[0]):
                self._gc_checked = cursor
                return
            value = committed[0]
            if value != self._gc_done_for:
                await self._collect_relative_to(value)
                self._gc_done_for = value
            if value == cursor:
                self._gc_checked = cursor  # caught up: nothing to collect until this cursor changes
        except Exception as exc:
            log.warning("%s: collecting unused snapshot chunks failed, retrying later: %s", self.store.describe(), exc)

    async def _collect_relative_to(self, committed: dict[str, Any]) -> None:
        generation = int(committed.get("g") or 0)
        page_refs = [str(r) for state in (committed.get("prefixes") or {}).values() for r in state.get("m", [])]
        missing = [r for r in page_refs if r not in self._pages]
        values = await self.store.get_chunks(missing) if missing else {}
        if len(values) < len(missing):
            return  # superseded again meanwhile: collect relative to the next committed cursor
        live = set(page_refs)
        for ref in page_refs:
            live.update(self._pages[ref].refs if ref in self._pages else decode_refs(values[ref]))
        stored = await self.store.chunk_refs(CHUNK_KEY_PREFIX)
        garbage = []
        for ref in stored:
            ref_gen = ref_generation(ref)
            if ref_gen is not None and ref_gen <= generation and ref not in live:
                garbage.append(ref)
        if garbage:
            deleted = await self.store.delete_chunks(garbage)
            self.stats["chunks_deleted"] += deleted
            log.debug("%s: deleted %d unused snapshot chunk(s)", self.store.describe(), deleted)

    # -- internals ----------------------------------------------------------------------------------
    async def _fetch_pages(self, cursor: dict[str, JSON], refs: Sequence[str]) -> None:
        missing = [r for r in dict.fromkeys(refs) if r not in self._pages]
        if not missing:
            return
        values = await self._get(cursor, missing)
        for ref in missing:
            try:
                self._pages[ref] = Page(ref, tuple(decode_refs(_text(values[ref]))))
            except (ValueError, TypeError, UnicodeDecodeError, zlib.error, binascii.Error) as exc:
                raise self._damaged(f"snapshot page {ref!r} cannot be decoded ({exc})") from None

    async def _fetch_chunks(self, cursor: dict[str, JSON], refs: Sequence[str]) -> None:
        missing = [r for r in dict.fromkeys(refs) if r not in self._chunks]
        if not missing:
            return
        values = await self._get(cursor, missing)
        try:
            texts = {ref: _text(values[ref]) for ref in missing}
        except TypeError as exc:
            raise self._damaged(str(exc)) from None
        if len(texts) > DECODE_IN_THREAD_ABOVE:
            decoded = await asyncio.to_thread(_decode_chunks, texts)
        else:
            decoded = _decode_chunks(texts)
        self._chunks.update(decoded)

    async def _get(self, cursor: dict[str, JSON], refs: list[str]) -> dict[str, JSON]:
        values = await self.store.get_chunks(refs)
        self.stats["chunks_read"] += len(values)
        lost = [r for r in refs if r not in values]
        if lost:
            committed = await self.store.committed_cursor()
            detail = f"{len(lost)} of its {len(refs)} chunk(s) to read are gone, e.g. {lost[0]!r}"
            if committed is None or committed[0] == cursor:
                raise self._damaged(detail)
            raise self.store.superseded(committed[1], detail)
        return values

    def _damaged(self, detail: str) -> PermanentSourceError:
        return PermanentSourceError(
            f"the stored S3 snapshot of {self.store.describe()} is damaged ({detail}); "
            "reset the watch with `trigger-kit state reset NAMESPACE NAME` (it then starts from start_from)"
        )

    def _forget_all_but(self, snapshots: Iterable[PrefixSnapshot]) -> None:
        keep_chunks: set[str] = set()
        keep_pages: set[str] = set()
        for snapshot in snapshots:
            keep_chunks.update(c.ref for c in snapshot.chunks)
            keep_pages.update(p.ref for p in snapshot.pages)
        self._chunks = {r: c for r, c in self._chunks.items() if r in keep_chunks}
        self._pages = {r: p for r, p in self._pages.items() if r in keep_pages}


def _text(value: JSON) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a snapshot chunk must be a string, got {type(value).__name__}")
    return value


def _decode_chunks(texts: dict[str, str]) -> dict[str, Chunk]:
    chunks: dict[str, Chunk] = {}
    for ref, text in texts.items():
        try:
            keys, hashes = decode_entries(text)
        except (ValueError, UnicodeDecodeError, zlib.error, binascii.Error) as exc:
            raise PermanentSourceError(
                f"the stored S3 snapshot chunk {ref!r} cannot be decoded ({exc}); "
                "reset the watch with `trigger-kit state reset NAMESPACE NAME`"
            ) from None
        chunks[ref] = Chunk(ref, keys, hashes)
    return chunks


def _is_snapshot_cursor(value: JSON) -> bool:
    return isinstance(value, dict) and value.get("layout") == "snapshot" and isinstance(value.get("prefixes"), dict)
