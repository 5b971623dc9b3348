"""Model-based test of the directory watch's cursor logic (pure ``detect``; Hypothesis).

A model filesystem of two watched directories receives random interleavings of files published
(new inode; some visible only late, with a stamp up to 9 s old, as network filesystems' attribute
caches do; some copied with an old mtime), appended to in place, replaced by rename, deleted, and
directories unmounted and mounted again, while the clock moves in steps from 0 (many files per
tick) to 20 s. Polls use random ``max_items``; a crashed poll loses its cursor; every committed
cursor goes through JSON, as ProcessState stores it. Checked after every drain (see
:mod:`tests.model_support`):

* ``event_kinds=["created"]`` (watermark cursor): every file present in a mounted directory whose
  stamp has settled was delivered as ``created`` under its inode, unless it existed at the baseline;
* ``event_kinds="all"`` (snapshot cursor): the consumer's view, rebuilt from the committed
  deliveries in order (created/modified set a path's version, deleted removes it), equals the
  settled files of the mounted directories;
* every report of one file version (path, inode, size, mtime) carries its first dedup id, and two
  different changes never share one.

The model keeps within the documented limits: late visibility stays below ``lookback_seconds``,
and the files in one window stay below the edge limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from airflow_trigger_kit.sources.base import Batch
from airflow_trigger_kit.sources.directory import DirectoryScan, DirectoryWatchConfig, detect, empty_cursor, file_stat
from tests.model_support import CursorModel, model_settings

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_767_225_600 * S
DIRS = ("/data/in/acme", "/data/in/globex")
NAMES = ("a.csv", "b.csv", "c.csv", "sub/d.csv")
SETTLE = 2
LOOKBACK = 10
STEPS_NS = (0, 1_000_000, S // 2, 3 * S, 20 * S)
LATE_NS = (0, S, 5 * S, 9 * S)
"""How much older than now a published file's stamp is when it becomes visible (< LOOKBACK)."""


@dataclass(frozen=True)
class File:
    inode: int
    size: int
    mtime_ns: int
    stamp: int
    created: int = 0
    """The poll count when this file (this inode at this path) was created: a file deleted and created
    again under a reused inode number is a new file, and must be delivered again."""

    def settled(self, now_ns: int) -> bool:
        return now_ns - self.stamp >= SETTLE * S


class DirectoryCursorModel(CursorModel):
    event_kinds: ClassVar[str | list[str]]

    def __init__(self) -> None:
        super().__init__()
        self.config = DirectoryWatchConfig.create(
            directories=list(DIRS),
            patterns="*.csv",
            recursive=True,
            event_kinds=self.event_kinds,
            settle_seconds=SETTLE,
            lookback_seconds=LOOKBACK,
        )
        self.snapshot = self.config.uses_snapshot
        self.now = T0
        self.inodes = 100
        self.files: dict[str, dict[str, File]] = {d: {} for d in DIRS}
        self.mounted = dict.fromkeys(DIRS, True)
        self.cursor: Any = empty_cursor(self.config)
        self.at_baseline: set[tuple[str, str, int, int]] = set()
        self.view: dict[tuple[str, str], tuple[int, int, int]] = {}
        """Snapshot mode: the consumer's view from committed deliveries, path -> (inode, size, mtime)."""
        self.polls = 0
        self.created_delivered: dict[tuple[str, str, int], int] = {}
        """(directory, path, inode) -> the poll count of its last committed ``created`` delivery."""

    # -- setup -----------------------------------------------------------------------------------------
    @initialize(
        existing=st.lists(st.tuples(st.sampled_from(DIRS), st.sampled_from(NAMES)), max_size=6),
        unmounted=st.sets(st.sampled_from(DIRS), max_size=1),
        start=st.sampled_from(["now", "beginning"]),
    )
    def setup(self, existing: list[tuple[str, str]], unmounted: set[str], start: str) -> None:
        """Files from long ago; a directory may be absent at first (a share not mounted yet)."""
        for directory, name in existing:
            self.files[directory][name] = self.new_file(self.now - 3600 * S)
        for directory in unmounted:
            self.mounted[directory] = False
        if start == "now":
            self.baseline()

    def new_file(self, stamp: int, *, mtime_ns: int | None = None, size: int = 10) -> File:
        self.inodes += 1
        return File(self.inodes, size, stamp if mtime_ns is None else mtime_ns, stamp, self.polls)

    def baseline(self) -> None:
        """``start_from="now"``: what is there and settled counts as seen (as DirectorySource.baseline)."""
        batch = detect(self.config, self.cursor, self.scans(), 10**12, self.now)
        self.cursor = json.loads(json.dumps(batch.cursor))
        for directory, name, f in self.visible():
            if f.settled(self.now):
                self.at_baseline.add((directory, name, f.inode, f.created))
                self.view[(directory, name)] = (f.inode, f.size, f.mtime_ns)

    # -- the filesystem ----------------------------------------------------------------------------------
    def visible(self) -> list[tuple[str, str, File]]:
        return [(d, n, f) for d in DIRS if self.mounted[d] for n, f in self.files[d].items()]

    def scans(self) -> list[DirectoryScan]:
        return [
            DirectoryScan(
                d,
                self.mounted[d],
                {n: file_stat(f.inode, f.size, f.mtime_ns, f.stamp) for n, f in self.files[d].items()}
                if self.mounted[d]
                else {},
                self.now,
            )
            for d in DIRS
        ]

    def mounted_dir(self, index: int) -> str | None:
        dirs = [d for d in DIRS if self.mounted[d]]
        return dirs[index % len(dirs)] if dirs else None

    @rule(step=st.sampled_from(STEPS_NS))
    def advance(self, step: int) -> None:
        self.now += step

    @rule(index=st.integers(0, 1), name=st.sampled_from(NAMES), late=st.sampled_from(LATE_NS))
    def publish(self, index: int, name: str, late: int) -> None:
        """Write elsewhere, rename into place (a new inode, replacing any file of that name)."""
        directory = self.mounted_dir(index)
        if directory is not None:
            self.files[directory][name] = self.new_file(self.now - late)

    @rule(index=st.integers(0, 1), name=st.sampled_from(NAMES))
    def copy_keeping_mtime(self, index: int, name: str) -> None:
        """``cp -p``: an old mtime, but the ctime (and so the stamp) is now."""
        directory = self.mounted_dir(index)
        if directory is not None:
            self.files[directory][name] = self.new_file(self.now, mtime_ns=self.now - 7200 * S)

    @rule(index=st.integers(0, 1), pick=st.integers(0, 100))
    def append(self, index: int, pick: int) -> None:
        """In-place write: same inode, new size and mtime."""
        directory = self.mounted_dir(index)
        if directory is None or not self.files[directory]:
            return
        name = sorted(self.files[directory])[pick % len(self.files[directory])]
        f = self.files[directory][name]
        self.files[directory][name] = File(f.inode, f.size + 1, self.now, max(self.now, f.stamp + 1), f.created)

    @rule(index=st.integers(0, 1), pick=st.integers(0, 100))
    def delete(self, index: int, pick: int) -> None:
        directory = self.mounted_dir(index)
        if directory is None or not self.files[directory]:
            return
        del self.files[directory][sorted(self.files[directory])[pick % len(self.files[directory])]]

    @rule(directory=st.sampled_from(DIRS))
    def toggle_mount(self, directory: str) -> None:
        """An unmounted share must not look like "every file deleted"; its files come back unchanged."""
        self.mounted[directory] = not self.mounted[directory]

    # -- the watch ---------------------------------------------------------------------------------------
    def poll_once(self, max_items: int, *, crash: bool = False) -> Batch:
        self.polls += 1
        batch = detect(self.config, self.cursor, self.scans(), max_items, self.now)
        assert len(batch.items) <= max_items
        for item in batch.items:
            d = item.data
            directory, rel, kind = str(d["directory"]), str(d["relative_path"]), str(d["kind"])
            version = (int(d["inode"]), int(d["size"]), int(d["mtime_ns"]))  # type: ignore[call-overload]
            self.log.reported((kind, directory, rel, *version), item.dedup_id, committed=not crash)
            if not crash and kind == "created":
                self.created_delivered[(directory, rel, version[0])] = self.polls
            if not crash and self.snapshot:
                if kind == "deleted":
                    assert (directory, rel) in self.view, f"deletion of {rel} in {directory} that was never reported"
                    self.view.pop((directory, rel))
                else:
                    self.view[(directory, rel)] = version
        if not crash:
            self.cursor = json.loads(json.dumps(batch.cursor))
        return batch

    def check_drained(self, before: object) -> None:
        settled = [(d, n, f) for d, n, f in self.visible() if f.settled(self.now)]
        if self.snapshot:
            expected = {(d, n): (f.inode, f.size, f.mtime_ns) for d, n, f in settled}
            unsettled = {(d, n) for d, n, f in self.visible() if not f.settled(self.now)}
            absent = {(d, n) for d in DIRS if not self.mounted[d] for n in NAMES}
            view = {path: v for path, v in self.view.items() if path not in unsettled | absent}
            expected = {path: v for path, v in expected.items() if path not in absent}
            assert view == expected, f"consumer view {view} differs from the settled files {expected}"
        else:
            missing = [
                (d, n, f)
                for d, n, f in settled
                if (d, n, f.inode, f.created) not in self.at_baseline
                and self.created_delivered.get((d, n, f.inode), -1) <= f.created
            ]
            assert not missing, f"settled files never delivered as created: {missing}"

    def teardown(self) -> None:
        self.mounted = dict.fromkeys(DIRS, True)
        self.now += (SETTLE + 1) * S
        self.drain()


def run_model(event_kinds: str | list[str], max_examples: int) -> None:
    machine = type("DirectoryCursorModel", (DirectoryCursorModel,), {"event_kinds": event_kinds})
    run_state_machine_as_test(machine, settings=model_settings(max_examples, steps=50))


def test_created_only_watermark_cursor_skips_no_settled_file() -> None:
    run_model(["created"], 200)


def test_snapshot_cursor_keeps_the_consumer_view_equal_to_the_directories() -> None:
    run_model("all", 200)
