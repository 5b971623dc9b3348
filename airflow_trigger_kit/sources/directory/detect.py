"""Directory detection: new, changed and deleted files, from listings and a cursor (pure).

Design and invariants (the cursor is what makes the watch exact, so read this before changing it):

* **Change stamp.** A file's stamp is ``max(mtime_ns, ctime_ns)``. ``ctime`` cannot be set by
  users and moves on every write, rename and metadata change, so a file copied with its old mtime
  (``cp -p``, ``rsync -t``) or renamed into place still gets a fresh stamp.
* **Settling.** A file is reported only once its stamp is at least ``settle_seconds`` old: any
  write moves mtime (and so the stamp), so a file still being written is never reported. Writers
  that publish by rename are seen as complete at once (the rename itself is the last change).
* **Identity.** A file is identified by its path and inode. A different inode at a known path means
  a new file was published there (replace-by-rename): that is ``created``. The same inode with a
  new size or mtime is ``modified``. A known path that is gone is ``deleted``.
* **Two cursor layouts**, chosen by ``event_kinds``:

  - ``created`` only — *watermark*: per directory a high watermark ``hwm`` (the largest stamp
    reported), an ``edge`` of the files reported with a stamp in ``(hwm - lookback, hwm]``,
    ``{relative_path: [inode, stamp]}``, and a ``floor``. A file is new when its stamp is above
    ``max(hwm - lookback, floor)`` and the edge does not hold it. The edge makes files that share
    one stamp exact (many files per clock tick), and the lookback window tolerates files that
    become visible slightly late (network filesystems' attribute caches). The edge holds at most
    :data:`EDGE_LIMIT` files across all directories: under a burst, the oldest entries are dropped
    and ``floor`` rises to the newest dropped stamp (never to ``hwm``), i.e. the lookback shrinks
    for that burst. So the cursor stays bounded whatever the directory's size, age or write rate.
    Only files above the watermark are looked at (a bisection over the listing's sorted stamps),
    so comparing a quiet directory of any size with a cursor costs next to nothing.
  - ``modified`` or ``deleted`` requested — *snapshot*: per directory every tracked file,
    ``{relative_path: [inode, size, mtime_ns]}``. Telling that a file changed or vanished needs
    remembering it, so this cursor grows with the number of files present (not with history:
    deleted files leave it).

* **Missing directories** are waited for: nothing is reported and nothing is forgotten while a
  directory is absent. When it appears, its files are new.
* **Truncation.** Candidates from all directories are sorted by ``(stamp, directory, path)``; the
  first ``max_items`` are reported and the cursor moves only past them, so the rest come next.
* **Purity.** :func:`detect` never changes the cursor it is given: many watches can be compared
  against one shared listing, each with its own cursor.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_trigger_kit.sources.base import JSON, Batch, Item, PermanentSourceError, stable_id, take_in_order
from airflow_trigger_kit.sources.directory.config import DirectoryWatchConfig
from airflow_trigger_kit.sources.directory.listing import DirectoryScan

CURSOR_VERSION = 1
EDGE_LIMIT = 500
"""Most files remembered in the watermark edge, across all directories (about 50 bytes each)."""


@dataclass(frozen=True)
class _Candidate:
    directory: str
    rel: str
    kind: str
    inode: int
    size: int
    mtime_ns: int
    stamp: int

    def sort_key(self) -> tuple[int, int, str, str]:
        # Deletions carry no stamp of their own; they sort after every present file.
        return (1 if self.kind == "deleted" else 0, self.stamp, self.directory, self.rel)

    def item(self) -> Item:
        data: dict[str, JSON] = {
            "kind": self.kind,
            "directory": self.directory,
            "path": os.path.join(self.directory, self.rel),
            "relative_path": self.rel,
            "name": os.path.basename(self.rel),
            "size": self.size,
            "mtime": datetime.fromtimestamp(self.mtime_ns / 1e9, tz=timezone.utc).isoformat(),
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
        }
        return Item(
            stable_id("directory", self.directory, self.rel, self.kind, self.inode, self.size, self.mtime_ns),
            data,
        )


def empty_cursor(config: DirectoryWatchConfig) -> dict[str, JSON]:
    layout = "snapshot" if config.uses_snapshot else "watermark"
    return {"v": CURSOR_VERSION, "layout": layout, "dirs": {}}


def check_cursor(config: DirectoryWatchConfig, cursor: JSON) -> dict[str, JSON]:
    expected = "snapshot" if config.uses_snapshot else "watermark"
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION or "dirs" not in cursor:
        raise PermanentSourceError(
            f"the stored cursor is not a directory-watch cursor (version {CURSOR_VERSION}): {str(cursor)[:200]!r}; "
            "reset it with `trigger-kit state reset NAMESPACE NAME`"
        )
    if cursor.get("layout") != expected:
        raise PermanentSourceError(
            f"event_kinds changed: the stored cursor has the {cursor.get('layout')!r} layout but "
            f"event_kinds={list(config.event_kinds)} needs {expected!r}; reset the watch with "
            "`trigger-kit state reset NAMESPACE NAME` (choosing start_from) to switch"
        )
    return cursor


def detect(
    config: DirectoryWatchConfig,
    cursor: dict[str, JSON],
    scans: Iterable[DirectoryScan],
    max_items: int,
    now_ns: int,
) -> Batch:
    """Compare scans with the cursor; report at most ``max_items`` items and the covering cursor.

    The cursor given is never changed: the state of a directory is copied on its first change
    only, so comparing a cursor with listings that hold nothing new allocates next to nothing.
    """
    settle_ns = int(config.settle_seconds * 1e9)
    lookback_ns = int(config.lookback_seconds * 1e9)
    old_dirs: dict[str, Any] = cursor["dirs"]
    dirs: dict[str, Any] = dict(old_dirs)
    changed: set[str] = set()

    def writable(directory: str) -> dict[str, Any]:
        if directory not in changed:
            changed.add(directory)
            dirs[directory] = _copy_state(dirs[directory])
        state: dict[str, Any] = dirs[directory]
        return state

    reportable: list[_Candidate] = []
    silent: list[_Candidate] = []
    waiting: dict[str, int] = {}
    settles_at: list[int] = []
    for scan in scans:
        if not scan.exists:
            continue
        state = dirs.get(scan.directory)
        if state is None:
            state = dirs[scan.directory] = {"known": {}} if config.uses_snapshot else {"hwm": 0, "edge": {}}
            changed.add(scan.directory)
        if config.uses_snapshot:
            found, unsettled, oldest_hot = _snapshot_candidates(state, scan, now_ns, settle_ns)
        else:
            found, unsettled, oldest_hot = _watermark_candidates(state, scan, now_ns, settle_ns, lookback_ns)
        if unsettled:
            waiting[scan.directory] = unsettled
            settles_at.append(oldest_hot)
        for c in found:
            (reportable if c.kind in config.event_kinds else silent).append(c)
    # Apply changes in stamp order up to the max_items-th reportable one, so the cursor never moves
    # past a change that was left for the next batch (silent changes included).
    apply_one = _apply_snapshot if config.uses_snapshot else _apply_watermark
    taken, more = take_in_order(
        sorted([*reportable, *silent], key=_Candidate.sort_key),
        reported=lambda c: c.kind in config.event_kinds,
        apply=lambda c: apply_one(writable(c.directory), c),
        max_items=max_items,
    )
    if not config.uses_snapshot:
        # An unchanged state was pruned when it was made: prune only what changed.
        limit = max(20, EDGE_LIMIT // max(1, len(config.directories)))
        for directory in changed:
            _prune_edge(dirs[directory], lookback_ns, limit)
    new_cursor = {**cursor, "dirs": dirs} if changed else cursor
    return Batch(
        items=[c.item() for c in taken],
        cursor=new_cursor,
        more=more,
        stats={
            "unsettled": sum(waiting.values()),
            "unsettled_by_directory": waiting,
            # When the first still-settling file can be reported (wall clock, ns; 0: none settling), so
            # a poller can come back then instead of at its next regular poll.
            "settles_at_ns": min(settles_at) + settle_ns if settles_at else 0,
        },
    )


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def _watermark_candidates(
    state: dict[str, Any], scan: DirectoryScan, now_ns: int, settle_ns: int, lookback_ns: int
) -> tuple[list[_Candidate], int, int]:
    """New files above the watermark, how many are still settling, and the oldest stamp of those."""
    hwm: int = state["hwm"]
    edge: dict[str, list[int]] = state["edge"]
    seen_below = max(hwm - lookback_ns, state.get("floor", hwm - lookback_ns))
    found: list[_Candidate] = []
    unsettled = 0
    oldest_hot = 0
    stamps, rels = scan.by_stamp
    files = scan.files
    for rel in rels[bisect_right(stamps, seen_below) :]:  # only what is above the watermark
        st = files[rel]
        seen = edge.get(rel)
        inode, size, mtime_ns, stamp = st
        if seen is not None and seen[0] == inode and seen[1] == stamp:
            continue
        if now_ns - stamp < settle_ns:
            if not unsettled:
                oldest_hot = stamp  # rels are in stamp order: the first hot one is the oldest
            unsettled += 1
            continue
        kind = "modified" if seen is not None and seen[0] == inode else "created"
        found.append(_Candidate(scan.directory, rel, kind, inode, size, mtime_ns, stamp))
    return found, unsettled, oldest_hot


def _apply_watermark(state: dict[str, Any], c: _Candidate) -> None:
    state["hwm"] = max(state["hwm"], c.stamp)
    state["edge"][c.rel] = [c.inode, c.stamp]


def _prune_edge(state: dict[str, Any], lookback_ns: int, limit: int) -> None:
    """Keep the edge to the lookback window and to ``limit`` entries (raising ``floor`` if needed)."""
    window_floor = state["hwm"] - lookback_ns
    floor = max(window_floor, state.get("floor", window_floor))
    edge = {rel: v for rel, v in state["edge"].items() if v[1] > floor}
    if len(edge) > limit:
        newest_first = sorted(edge.items(), key=lambda kv: kv[1][1], reverse=True)
        cut_stamp = newest_first[limit][1][1]
        if cut_stamp >= state["hwm"]:
            # Never treat the hwm tick as seen: files sharing it may still be unreported.
            edge = {rel: v for rel, v in edge.items() if v[1] >= state["hwm"]}
        else:
            edge = {rel: v for rel, v in edge.items() if v[1] > cut_stamp}
            state["floor"] = max(state.get("floor", cut_stamp), cut_stamp)
    state["edge"] = edge


def _snapshot_candidates(
    state: dict[str, Any], scan: DirectoryScan, now_ns: int, settle_ns: int
) -> tuple[list[_Candidate], int, int]:
    """Changed, new and deleted files, how many are still settling, and the oldest stamp of those."""
    known: dict[str, list[int]] = state["known"]
    found: list[_Candidate] = []
    unsettled = 0
    oldest_hot = 0
    for rel, st in scan.files.items():
        prev = known.get(rel)
        inode, size, mtime_ns, stamp = st
        if prev is not None and prev[0] == inode and prev[1] == size and prev[2] == mtime_ns:
            continue
        if now_ns - stamp < settle_ns:
            oldest_hot = stamp if not unsettled else min(oldest_hot, stamp)
            unsettled += 1
            continue
        kind = "modified" if prev is not None and prev[0] == inode else "created"
        found.append(_Candidate(scan.directory, rel, kind, inode, size, mtime_ns, stamp))
    for rel, prev in known.items():
        if rel not in scan.files:
            found.append(_Candidate(scan.directory, rel, "deleted", prev[0], prev[1], prev[2], 0))
    return found, unsettled, oldest_hot


def _apply_snapshot(state: dict[str, Any], c: _Candidate) -> None:
    if c.kind == "deleted":
        state["known"].pop(c.rel, None)
    else:
        state["known"][c.rel] = [c.inode, c.size, c.mtime_ns]
