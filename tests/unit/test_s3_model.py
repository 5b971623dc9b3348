"""Model-based test of the S3 watch's cursor logic (pure ``detect``; Hypothesis).

A model bucket with two watched prefixes receives random interleavings of uploads (some finishing
late, with a LastModified up to ``lookback_seconds - 1`` old, as multipart uploads do), overwrites
(new ETag), identical rewrites (same ETag), deletions, folder markers and keys the ``glob`` does
not match, while the clock moves in steps from 0 (many objects per second) to 100 s. Polls use
random ``max_items``; a crashed poll loses its cursor; every committed cursor goes through JSON.
Listings are built as ``S3Source`` lists: every key under the prefix in key order (after
``StartAfter`` for the lexicographic layout), each kept object with the key listed just before it.
Checked after every drain (see :mod:`tests.model_support`):

* ``key_order="any"``, ``created`` (window cursor): every counted object version (key, ETag)
  present now was delivered, unless it was there at the baseline;
* ``key_order="any"``, ``event_kinds="all"`` (snapshot cursor): the consumer's view rebuilt from the
  committed deliveries in order equals the bucket's counted objects;
* ``key_order="lexicographic"``: every counted object present now was delivered (keys grow over
  time, as that layout requires);
* every report of one change carries its first dedup id, and two different changes never share one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from airflow_trigger_kit.sources.base import Batch
from airflow_trigger_kit.sources.s3 import PrefixListing, S3Object, S3WatchConfig, detect, empty_cursor
from airflow_trigger_kit.sources.s3.snapshot_memory import SnapshotMemory
from airflow_trigger_kit.sources.s3.snapshot_store import MemoryChunkStore
from tests.model_support import CursorModel, model_settings

pytestmark = pytest.mark.unit

T0 = 1_767_225_600
BUCKET = "model-bucket"
PREFIXES = ("a/", "b/")
GLOB = "*.csv"
LOOKBACK = 30
STEPS = (0, 0, 1, 5, 100)
LATE = (0, 1, 10, LOOKBACK - 1)
"""How much older than now an upload's LastModified is when it becomes visible (< LOOKBACK)."""
NAMES = ("x.csv", "y.csv", "z.csv", "deep/w.csv", "skip.txt", "folder/")


@dataclass(frozen=True)
class Obj:
    etag: str
    size: int
    last_modified: int


class S3CursorModel(CursorModel):
    key_order: ClassVar[str]
    event_kinds: ClassVar[str | list[str]]

    def __init__(self) -> None:
        self.chunks = MemoryChunkStore()
        super().__init__()
        self.config = S3WatchConfig.create(
            bucket=BUCKET,
            prefixes=list(PREFIXES),
            glob=GLOB,
            event_kinds=self.event_kinds,
            key_order=self.key_order,
            lookback_seconds=LOOKBACK,
        )
        self.layout = self.config.layout
        self.now = T0
        self.etags = 0
        self.sequence = 0
        self.bucket: dict[str, Obj] = {}
        self.cursor: Any = empty_cursor(self.config)
        self.at_baseline: set[tuple[str, str]] = set()
        self.view: dict[str, str] = {}
        """Snapshot layout: the consumer's view from committed deliveries, key -> ETag."""

    # -- the bucket --------------------------------------------------------------------------------------
    def counted(self, key: str, obj: Obj) -> bool:
        return not (key.endswith("/") and obj.size == 0) and fnmatch.fnmatchcase(key, GLOB)

    def new_etag(self) -> str:
        self.etags += 1
        return f"etag-{self.etags:06d}"

    def key_for(self, prefix: int, name: str) -> str:
        """A key; in the lexicographic layout keys grow over time (a sequence number leads the name)."""
        if self.layout == "lexicographic":
            self.sequence += 1
            return f"{PREFIXES[prefix]}{self.sequence:06d}-{name}"
        return f"{PREFIXES[prefix]}{name}"

    def listings(self) -> list[PrefixListing]:
        listings = []
        for prefix in PREFIXES:
            start_after = self.cursor["prefixes"].get(prefix) if self.layout == "lexicographic" else None
            listing = PrefixListing(prefix=prefix)
            previous = start_after
            for key in sorted(k for k in self.bucket if k.startswith(prefix)):
                if start_after is not None and key <= start_after:
                    continue
                obj = self.bucket[key]
                s3obj = S3Object(
                    key,
                    obj.etag,
                    obj.size,
                    obj.last_modified,
                    datetime.fromtimestamp(obj.last_modified, tz=timezone.utc).isoformat(),
                )
                listing.listed += 1
                if self.config.matches_key(key):
                    listing.objects.append(s3obj)
                    listing.predecessors.append(previous)
                previous = key
            listing.last_key = previous if previous != start_after else None
            listing.requests = 1
            listings.append(listing)
        return listings

    @initialize(
        existing=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(NAMES)), max_size=5),
        start=st.sampled_from(["now", "beginning"]),
    )
    def setup(self, existing: list[tuple[int, str]], start: str) -> None:
        for prefix, name in existing:
            self.bucket[self.key_for(prefix, name)] = Obj(self.new_etag(), 0 if name.endswith("/") else 10, T0 - 3600)
        if start == "now":
            batch = self.detect(10**12)
            self.cursor = json.loads(json.dumps(batch.cursor))
            for key, obj in self.bucket.items():
                if self.counted(key, obj):
                    self.at_baseline.add((key, obj.etag))
                    self.view[key] = obj.etag

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: int) -> None:
        self.now += step

    @rule(prefix=st.integers(0, 1), name=st.sampled_from(NAMES), late=st.sampled_from(LATE))
    def upload(self, prefix: int, name: str, late: int) -> None:
        """A PUT, or a multipart upload that started ``late`` seconds ago and completes now."""
        if self.layout == "lexicographic":
            late = 0  # a key that sorts before the cursor would be missed, by that layout's design
        size = 0 if name.endswith("/") else 10
        self.bucket[self.key_for(prefix, name)] = Obj(self.new_etag(), size, self.now - late)

    @rule(pick=st.integers(0, 100), same_bytes=st.booleans())
    def overwrite(self, pick: int, same_bytes: bool) -> None:
        """New bytes (a new ETag), or the very same bytes again (same ETag: not a change)."""
        if not self.bucket:
            return
        key = sorted(self.bucket)[pick % len(self.bucket)]
        obj = self.bucket[key]
        self.bucket[key] = Obj(obj.etag if same_bytes else self.new_etag(), obj.size, self.now)

    @rule(pick=st.integers(0, 100))
    def delete(self, pick: int) -> None:
        if self.bucket:
            del self.bucket[sorted(self.bucket)[pick % len(self.bucket)]]

    # -- the watch ---------------------------------------------------------------------------------------
    def detect(self, max_items: int) -> Batch:
        """One comparison of the listings with the cursor; the snapshot layout keeps its per-key memory in
        chunks outside the cursor, here in memory, loaded afresh each time (as after a restart)."""
        if self.layout != "snapshot":
            return detect(self.config, self.cursor, self.listings(), max_items)
        memory = SnapshotMemory(self.chunks)
        return asyncio.run(memory.detect(self.config, self.cursor, self.listings(), max_items))

    def poll_once(self, max_items: int, *, crash: bool = False) -> Batch:
        batch = self.detect(max_items)
        assert len(batch.items) <= max_items
        for item in batch.items:
            kind, key, etag = str(item.data["kind"]), str(item.data["key"]), item.data["etag"]
            if kind == "deleted":  # the item names no ETag: the version deleted is the one last delivered
                etag = self.view.get(key)
            else:
                assert self.counted(key, Obj(str(etag), int(item.data["size"]), 0)), f"reported {key}: not watched"  # type: ignore[call-overload]
            self.log.reported((kind, key, etag), item.dedup_id, committed=not crash)
            if not crash and self.layout == "snapshot":
                if kind == "deleted":
                    assert key in self.view, f"deletion of {key} that was never reported"
                    del self.view[key]
                else:
                    self.view[key] = str(etag)
        if not crash:
            self.cursor = json.loads(json.dumps(batch.cursor))
        return batch

    def check_drained(self, before: object) -> None:
        present = {key: obj.etag for key, obj in self.bucket.items() if self.counted(key, obj)}
        if self.layout == "snapshot":
            assert self.view == present, f"consumer view {self.view} differs from the bucket {present}"
            return
        delivered = {(key, etag) for kind, key, etag in self.log.committed if kind == "created"}
        if self.layout == "lexicographic":  # overwrites are not seen there, by design: keys count
            delivered_keys = {key for key, _ in delivered | self.at_baseline}
            missing = sorted(key for key in present if key not in delivered_keys)
        else:
            missing = sorted(set(present.items()) - delivered - self.at_baseline)
        assert not missing, f"objects never delivered: {missing}"

    def teardown(self) -> None:
        self.drain()


def run_model(key_order: str, event_kinds: str | list[str], max_examples: int) -> None:
    attrs = {"key_order": key_order, "event_kinds": event_kinds}
    machine = type("S3CursorModel", (S3CursorModel,), attrs)
    run_state_machine_as_test(machine, settings=model_settings(max_examples, steps=50))


def test_window_cursor_skips_no_object_version() -> None:
    run_model("any", ["created"], 200)


def test_snapshot_cursor_keeps_the_consumer_view_equal_to_the_bucket() -> None:
    run_model("any", "all", 200)


def test_lexicographic_cursor_skips_no_object_with_growing_keys() -> None:
    run_model("lexicographic", ["created"], 200)
