"""Multi-directory detection: new, changed and deleted files in many directories at once.

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
  - ``modified`` or ``deleted`` requested — *snapshot*: per directory every tracked file,
    ``{relative_path: [inode, size, mtime_ns]}``. Telling that a file changed or vanished needs
    remembering it, so this cursor grows with the number of files present (not with history:
    deleted files leave it).

* **Missing directories** are waited for: nothing is reported and nothing is forgotten while a
  directory is absent (an unmounted share must not look like "every file deleted"). When it
  appears, its files are new. An unreadable directory is a permanent error.
* **Truncation.** Candidates from all directories are sorted by ``(stamp, directory, path)``; the
  first ``max_items`` are reported and the cursor moves only past them, so the rest come next.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import stat as stat_module
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_trigger_kit.sources.base import (
    JSON,
    Batch,
    Item,
    PermanentSourceError,
    Source,
    stable_id,
    take_in_order,
)

log = logging.getLogger(__name__)

EVENT_KINDS = ("created", "modified", "deleted")
DEFAULT_IGNORE_PATTERNS = (".*", "*.tmp", "*.part", "~*")
CURSOR_VERSION = 1
EDGE_LIMIT = 500
"""Most files remembered in the watermark edge, across all directories (about 50 bytes each)."""
QUIET_MARGIN_NS = 2_000_000_000
"""A directory whose mtime is at least this much older than the last scan, and unchanged since,
has had no entry added, removed or renamed (margin for coarse filesystem clocks)."""


@dataclass(frozen=True)
class DirectoryWatchConfig:
    """Validated, normalized parameters of a multi-directory watch."""

    directories: tuple[str, ...]
    patterns: tuple[str, ...] = ("*",)
    recursive: bool = False
    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE_PATTERNS
    event_kinds: tuple[str, ...] = ("created",)
    settle_seconds: float = 5.0
    lookback_seconds: float = 60.0

    @classmethod
    def create(
        cls,
        *,
        directories: str | Sequence[str],
        patterns: str | Sequence[str] = ("*",),
        recursive: bool = False,
        ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
        event_kinds: str | Sequence[str] = ("created",),
        settle_seconds: float = 5.0,
        lookback_seconds: float = 60.0,
    ) -> DirectoryWatchConfig:
        dirs = _string_list("directories", directories)
        if not dirs:
            raise ValueError("directories must name at least one directory, got []")
        normalized: list[str] = []
        for d in dirs:
            if not os.path.isabs(d):
                raise ValueError(
                    f"directories must be absolute paths (the triggerer runs in another working directory), got {d!r}"
                )
            path = os.path.normpath(d)
            if path in normalized:
                raise ValueError(f"directories lists {d!r} twice")
            normalized.append(path)
        pats = _string_list("patterns", patterns)
        if not pats:
            raise ValueError("patterns must hold at least one glob pattern such as '*.csv', got []")
        for p in pats:
            if "/" in p or os.sep in p:
                raise ValueError(
                    f"patterns match file names, not paths (use recursive=True for subdirectories), got {p!r}"
                )
        ignores = _string_list("ignore_patterns", ignore_patterns or ())
        kinds = _event_kinds(event_kinds)
        if not isinstance(recursive, bool):
            raise ValueError(f"recursive must be True or False, got {recursive!r}")
        settle = _non_negative("settle_seconds", settle_seconds)
        lookback = _non_negative("lookback_seconds", lookback_seconds)
        return cls(
            directories=tuple(normalized),
            patterns=tuple(pats),
            recursive=recursive,
            ignore_patterns=tuple(ignores),
            event_kinds=kinds,
            settle_seconds=settle,
            lookback_seconds=lookback,
        )

    def to_kwargs(self) -> dict[str, JSON]:
        return {
            "directories": list(self.directories),
            "patterns": list(self.patterns),
            "recursive": self.recursive,
            "ignore_patterns": list(self.ignore_patterns),
            "event_kinds": list(self.event_kinds),
            "settle_seconds": self.settle_seconds,
            "lookback_seconds": self.lookback_seconds,
        }

    @property
    def uses_snapshot(self) -> bool:
        return self.event_kinds != ("created",)


def _string_list(param: str, value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{param} must be a string or a list of strings, got {value!r}")
    out = []
    for v in value:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{param} must hold non-empty strings, got {v!r} in {list(value)!r}")
        out.append(v)
    return out


def _event_kinds(value: str | Sequence[str]) -> tuple[str, ...]:
    kinds = _string_list("event_kinds", value)
    if kinds == ["all"]:
        return EVENT_KINDS
    bad = [k for k in kinds if k not in EVENT_KINDS]
    if bad or not kinds:
        raise ValueError(f"event_kinds must be 'all' or a list of {', '.join(EVENT_KINDS)}; got {value!r}")
    return tuple(k for k in EVENT_KINDS if k in kinds)


def _non_negative(param: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{param} must be a number >= 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Scanning (blocking; always called in a worker thread)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileStat:
    inode: int
    size: int
    mtime_ns: int
    stamp: int


@dataclass(frozen=True)
class DirectoryScan:
    directory: str
    exists: bool
    files: dict[str, FileStat]
    scanned_at_ns: int
    dir_mtime_ns: int = 0
    skipped: bool = False
    """True when the listing was skipped because the directory provably gained no entry."""


def scan_directory(config: DirectoryWatchConfig, directory: str) -> DirectoryScan:
    """List matching regular files under ``directory`` (blocking: run it in a thread)."""
    now = time.time_ns()
    files: dict[str, FileStat] = {}
    try:
        top = os.stat(directory)
    except FileNotFoundError:
        return DirectoryScan(directory, False, files, now)
    except PermissionError as exc:
        raise PermanentSourceError(f"directories: cannot access {directory!r}: permission denied") from exc
    if not stat_module.S_ISDIR(top.st_mode):
        raise PermanentSourceError(f"directories: {directory!r} exists but is not a directory")
    try:
        _scan_into(config, directory, "", files, top_level=True)
    except FileNotFoundError:
        return DirectoryScan(directory, False, {}, now)
    return DirectoryScan(directory, True, files, now, dir_mtime_ns=top.st_mtime_ns)


def _ignored(config: DirectoryWatchConfig, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in config.ignore_patterns)


def _scan_into(
    config: DirectoryWatchConfig, path: str, prefix: str, files: dict[str, FileStat], *, top_level: bool
) -> None:
    try:
        iterator = os.scandir(path)
    except PermissionError as exc:
        if top_level:
            raise PermanentSourceError(f"directories: cannot read {path!r}: permission denied") from exc
        log.warning("skipping unreadable subdirectory %s: permission denied", path)
        return
    except (FileNotFoundError, NotADirectoryError):
        if top_level:
            raise FileNotFoundError(path) from None
        return
    with iterator:
        for entry in iterator:
            name = entry.name
            if _ignored(config, name):
                continue
            rel = f"{prefix}{name}"
            try:
                if entry.is_dir():
                    if config.recursive:
                        _scan_into(config, entry.path, f"{rel}/", files, top_level=False)
                    continue
                if not any(fnmatch.fnmatchcase(name, p) for p in config.patterns):
                    continue
                st = entry.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # vanished between listing and stat
            except PermissionError:
                log.warning("skipping %s: permission denied", entry.path)
                continue
            if not stat_module.S_ISREG(st.st_mode):
                continue
            files[rel] = FileStat(
                inode=st.st_ino,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                stamp=max(st.st_mtime_ns, st.st_ctime_ns),
            )


# --------------------------------------------------------------------------------------------------
# Detection (pure: scans + cursor in, items + cursor out)
# --------------------------------------------------------------------------------------------------
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
    """Compare scans with the cursor; report at most ``max_items`` items and the covering cursor."""
    settle_ns = int(config.settle_seconds * 1e9)
    lookback_ns = int(config.lookback_seconds * 1e9)
    # Copy per directory once, then update in place: the caller's cursor must stay untouched.
    dirs: dict[str, Any] = {d: _copy_state(v) for d, v in cursor["dirs"].items()}
    reportable: list[_Candidate] = []
    silent: list[_Candidate] = []
    waiting: dict[str, int] = {}
    for scan in scans:
        if not scan.exists or scan.skipped:
            continue
        state = dirs.get(scan.directory)
        if config.uses_snapshot:
            found, unsettled = _snapshot_candidates(state or {"known": {}}, scan, now_ns, settle_ns)
        else:
            found, unsettled = _watermark_candidates(
                state or {"hwm": 0, "edge": {}}, scan, now_ns, settle_ns, lookback_ns
            )
        waiting[scan.directory] = unsettled
        for c in found:
            (reportable if c.kind in config.event_kinds else silent).append(c)
        if state is None:
            dirs[scan.directory] = {"known": {}} if config.uses_snapshot else {"hwm": 0, "edge": {}}
    # Apply changes in stamp order up to the max_items-th reportable one, so the cursor never moves
    # past a change that was left for the next batch (silent changes included).
    apply_one = _apply_snapshot if config.uses_snapshot else _apply_watermark
    taken, more = take_in_order(
        sorted([*reportable, *silent], key=_Candidate.sort_key),
        reported=lambda c: c.kind in config.event_kinds,
        apply=lambda c: apply_one(dirs[c.directory], c),
        max_items=max_items,
    )
    if not config.uses_snapshot:
        limit = max(20, EDGE_LIMIT // max(1, len(config.directories)))
        for state in dirs.values():
            _prune_edge(state, lookback_ns, limit)
    new_cursor = {**cursor, "dirs": dirs}
    return Batch(
        items=[c.item() for c in taken],
        cursor=new_cursor,
        more=more,
        stats={"unsettled": sum(waiting.values()), "unsettled_by_directory": waiting},
    )


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def _watermark_candidates(
    state: dict[str, Any], scan: DirectoryScan, now_ns: int, settle_ns: int, lookback_ns: int
) -> tuple[list[_Candidate], int]:
    hwm: int = state["hwm"]
    edge: dict[str, list[int]] = state["edge"]
    seen_below = max(hwm - lookback_ns, state.get("floor", hwm - lookback_ns))
    found: list[_Candidate] = []
    unsettled = 0
    for rel, st in scan.files.items():
        if st.stamp <= seen_below:
            continue
        seen = edge.get(rel)
        if seen is not None and seen[0] == st.inode and seen[1] == st.stamp:
            continue
        if now_ns - st.stamp < settle_ns:
            unsettled += 1
            continue
        kind = "modified" if seen is not None and seen[0] == st.inode else "created"
        found.append(_Candidate(scan.directory, rel, kind, st.inode, st.size, st.mtime_ns, st.stamp))
    return found, unsettled


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
) -> tuple[list[_Candidate], int]:
    known: dict[str, list[int]] = state["known"]
    found: list[_Candidate] = []
    unsettled = 0
    for rel, st in scan.files.items():
        prev = known.get(rel)
        if prev is not None and prev == [st.inode, st.size, st.mtime_ns]:
            continue
        if now_ns - st.stamp < settle_ns:
            unsettled += 1
            continue
        kind = "modified" if prev is not None and prev[0] == st.inode else "created"
        found.append(_Candidate(scan.directory, rel, kind, st.inode, st.size, st.mtime_ns, st.stamp))
    for rel, prev in known.items():
        if rel not in scan.files:
            found.append(_Candidate(scan.directory, rel, "deleted", prev[0], prev[1], prev[2], 0))
    return found, unsettled


def _apply_snapshot(state: dict[str, Any], c: _Candidate) -> None:
    if c.kind == "deleted":
        state["known"].pop(c.rel, None)
    else:
        state["known"][c.rel] = [c.inode, c.size, c.mtime_ns]


# --------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------
class DirectorySource(Source):
    """Watches ``config.directories``; scanning runs in a worker thread, never on the event loop."""

    kind = "directory"

    def __init__(self, config: DirectoryWatchConfig) -> None:
        self.config = config
        self._missing_logged: set[str] = set()
        # directory -> (its mtime, when it was listed) after a listing that left nothing pending
        self._quiet: dict[str, tuple[int, int]] = {}

    def describe(self) -> str:
        return f"directories {list(self.config.directories)} patterns {list(self.config.patterns)}"

    async def baseline(self) -> JSON:
        def compute() -> JSON:
            scans = [self._scan(d, allow_skip=False) for d in self.config.directories]
            # Everything settled now counts as seen; files still being written are reported later.
            return detect(self.config, empty_cursor(self.config), scans, 10**12, now_ns=time.time_ns()).cursor

        return await asyncio.to_thread(compute)

    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        current = empty_cursor(self.config) if cursor is None else check_cursor(self.config, cursor)
        # Listing, stat calls and the comparison all run in a worker thread: on a directory of
        # 50,000 files they take tens of milliseconds that the triggerer's event loop must not lose.
        return await asyncio.to_thread(self._poll_blocking, current, max_items)

    def _poll_blocking(self, cursor: dict[str, JSON], max_items: int) -> Batch:
        scans = [self._scan(d, allow_skip=True) for d in self.config.directories]
        batch = detect(self.config, cursor, scans, max_items, now_ns=time.time_ns())
        self._remember_quiet(scans, batch)
        return batch

    def _scan(self, directory: str, *, allow_skip: bool) -> DirectoryScan:
        """List one directory, or skip the listing when it provably gained no entry.

        Only for ``created``-only, non-recursive watches: adding, removing or renaming an entry
        moves the directory's mtime, and in-place changes are not reported in that mode. A
        subdirectory's changes do not move its parent's mtime, hence no skipping when recursive.
        """
        quiet = self._quiet.get(directory)
        if allow_skip and quiet is not None and not self.config.recursive and not self.config.uses_snapshot:
            try:
                st = os.stat(directory)
            except OSError:
                st = None
            if st is not None and st.st_mtime_ns == quiet[0] and quiet[0] < quiet[1] - QUIET_MARGIN_NS:
                return DirectoryScan(directory, True, {}, time.time_ns(), st.st_mtime_ns, skipped=True)
        scan = scan_directory(self.config, directory)
        if not scan.exists and directory not in self._missing_logged:
            self._missing_logged.add(directory)
            log.warning("directory %s does not exist yet; waiting for it to appear", directory)
        elif scan.exists and directory in self._missing_logged:
            self._missing_logged.discard(directory)
            log.info("directory %s appeared; watching it", directory)
        return scan

    def _remember_quiet(self, scans: list[DirectoryScan], batch: Batch) -> None:
        if batch.more:
            self._quiet.clear()  # something is still to report: list everything next time
            return
        pending: dict[str, int] = batch.stats.get("unsettled_by_directory", {})
        for scan in scans:
            if scan.skipped:
                continue
            if scan.exists and pending.get(scan.directory, 0) == 0:
                self._quiet[scan.directory] = (scan.dir_mtime_ns, scan.scanned_at_ns)
            else:
                self._quiet.pop(scan.directory, None)

    def describe_cursor(self, cursor: JSON | None) -> JSON:
        if cursor is None:
            return None
        summary: dict[str, JSON] = {}
        for directory, state in cursor.get("dirs", {}).items():
            if "hwm" in state:
                summary[directory] = {"hwm_ns": state["hwm"], "edge": len(state["edge"])}
            else:
                summary[directory] = {"tracked": len(state["known"])}
        return summary
