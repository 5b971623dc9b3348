"""Listing directories: one ``scandir`` + ``stat`` pass, and a cache that lets every watch share it.

Blocking code: call it from a worker thread, never from the event loop.

Design and invariants (the watch's exactness rests on them; read before changing):

* **Cheap name filtering first.** A :class:`FileFilter` compiles a watch's ``patterns`` and
  ``ignore_patterns`` into two regular expressions; a name is matched before its entry is
  ``stat``-ed, so a file no watch wants costs one regex match and no system call.
* **One listing per directory, shared.** :class:`DirectoryListings` keeps one :class:`Listing` per
  :class:`ListingKey` (the directory, ``recursive``, and for recursive listings the ignore patterns,
  which decide what is descended into). It covers the union of the filters of every watch
  subscribed to it; each watch sees its own :class:`DirectoryScan` (its filter applied), computed
  once per listing generation and shared by every watch with that filter.
* **A listing is reused while the directory provably did not change** (:meth:`DirectoryListings.refresh`).
  Adding, removing or renaming an entry moves the directory's mtime, so a listing stays valid
  while (a) the directory's mtime is what it was when listed, (b) that mtime is older than the
  listing by :data:`QUIET_MARGIN_NS` (filesystems with coarse clocks), (c) no file in it was *hot*
  when listed — changed within the largest ``settle_seconds`` of its subscribers, i.e. still
  waiting to settle: a file being written moves its own mtime, not its directory's — (d) it covers every
  subscribed filter, and (e) no subscriber needs fresh file stats: watches of ``modified`` or
  ``deleted`` (an in-place write moves no directory mtime) and recursive watches (a subdirectory's
  change does not move its parent's mtime) get a new listing on every refresh. A reused listing
  costs one ``stat`` of the directory.
* **Generations.** A listing's ``generation`` grows whenever its content changed, so a caller can
  tell "nothing new here" without comparing files.
* **Verification.** Files reported from a *reused* listing are ``stat``-ed again first
  (:meth:`DirectoryListings.verify`): a change since the listing (an in-place write to an old file)
  invalidates it, and the report waits for a fresh listing; a report never carries stale sizes.
* **Missing directories** list as ``exists=False``: waited for, nothing reported, nothing forgotten
  (an unmounted share must not look like "every file deleted"). A directory that cannot be read,
  or a path that is not a directory, is a :class:`PermanentSourceError`.
* **Bounded memory.** Listings nobody subscribes to are kept, so a re-created trigger finds its
  quiet directories still known, up to :data:`MAX_IDLE_LISTINGS` (least recently used go first).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat as stat_module
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.sources.directory.config import DirectoryWatchConfig

log = logging.getLogger(__name__)

QUIET_MARGIN_NS = 2_000_000_000
"""A directory whose mtime is at least this much older than its listing, and unchanged since, has
had no entry added, removed or renamed (margin for coarse filesystem clocks)."""
MAX_IDLE_LISTINGS = 4096
"""Listings kept without a subscriber (what a re-created trigger finds already known)."""


FileStat = tuple[int, int, int, int]
"""``(inode, size, mtime_ns, stamp)`` of one file; ``stamp`` is ``max(mtime_ns, ctime_ns)``, which moves
on every write, rename and copy, even with an old mtime.

A plain tuple on purpose: the garbage collector untracks exact tuples of numbers, while instances of
a tuple subclass (a ``NamedTuple``) stay tracked forever. A hundred thousand of them would make
every full collection of the triggerer process slower, and trigger more of them."""
INODE, SIZE, MTIME, STAMP = 0, 1, 2, 3


def file_stat(inode: int, size: int, mtime_ns: int, stamp: int) -> FileStat:
    return (inode, size, mtime_ns, stamp)


@dataclass(frozen=True)
class FileFilter:
    """Which names a watch wants: ``patterns`` minus ``ignore_patterns`` (case-sensitive globs)."""

    patterns: tuple[str, ...]
    ignore_patterns: tuple[str, ...]

    @classmethod
    def of(cls, config: DirectoryWatchConfig) -> FileFilter:
        return cls(config.patterns, config.ignore_patterns)

    @cached_property
    def match(self) -> Callable[[str], object]:
        """``match(name)`` is truthy for a wanted name: one regular expression, no Python frame."""
        wanted = _alternatives(self.patterns)
        if not self.ignore_patterns:
            return re.compile(wanted).match
        # A name is wanted when no ignore pattern matches it whole, and a pattern does.
        return re.compile(f"(?!{_alternatives(self.ignore_patterns)}){wanted}").match

    @cached_property
    def _ignored(self) -> Callable[[str], object] | None:
        return re.compile(_alternatives(self.ignore_patterns)).match if self.ignore_patterns else None

    def ignores(self, name: str) -> bool:
        return self._ignored is not None and self._ignored(name) is not None

    def accepts(self, name: str) -> bool:
        return self.match(name) is not None


def _alternatives(globs: Iterable[str]) -> str:
    """One regular expression matching a whole name when any of ``globs`` does."""
    return "(?:" + "|".join(f"(?:{fnmatch.translate(g)})" for g in globs) + ")"


@dataclass(frozen=True)
class DirectoryScan:
    """What one watch sees of one directory: its matching regular files, by relative path."""

    directory: str
    exists: bool
    files: dict[str, FileStat]
    scanned_at_ns: int
    dir_mtime_ns: int = 0

    @cached_property
    def by_stamp(self) -> tuple[list[int], list[str]]:
        """Stamps in ascending order and the paths in the same order (for bisecting a watermark)."""
        pairs = sorted((st[STAMP], rel) for rel, st in self.files.items())
        return [s for s, _ in pairs], [r for _, r in pairs]


# --------------------------------------------------------------------------------------------------
# One pass over a directory
# --------------------------------------------------------------------------------------------------
def list_files(
    path: str,
    *,
    recursive: bool,
    accepts: Callable[[str], object],
    ignores_dir: Callable[[str], bool],
    subdirs: list[str] | None = None,
) -> dict[str, FileStat]:
    """Matching regular files under ``path`` (``FileNotFoundError`` when it is gone).

    ``accepts(name)`` is truthy for a wanted file name; it runs before any ``stat``. ``subdirs``, when
    given, receives the relative path of every subdirectory descended into (a recursive listing's
    change notifications watch them).
    """
    files: dict[str, FileStat] = {}
    _list_into(path, "", files, recursive, accepts, ignores_dir, top_level=True, subdirs=subdirs)
    return files


_S_IFMT = 0o170000
_S_IFREG = 0o100000


def _list_into(
    path: str,
    prefix: str,
    files: dict[str, FileStat],
    recursive: bool,
    accepts: Callable[[str], object],
    ignores_dir: Callable[[str], bool],
    *,
    top_level: bool,
    subdirs: list[str] | None = None,
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
    # The hot loop of every first poll: one regex call per name, one stat per wanted name, nothing else.
    with iterator:
        for entry in iterator:
            name = entry.name
            try:
                if recursive and entry.is_dir():
                    if not ignores_dir(name):
                        sub = f"{prefix}{name}/"
                        if subdirs is not None:
                            subdirs.append(prefix + name)
                        _list_into(
                            entry.path, sub, files, recursive, accepts, ignores_dir, top_level=False, subdirs=subdirs
                        )
                    continue
                if not accepts(name):
                    continue
                st = entry.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # vanished between listing and stat
            except PermissionError:
                log.warning("skipping %s: permission denied", entry.path)
                continue
            if st.st_mode & _S_IFMT == _S_IFREG:
                mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
                files[prefix + name if prefix else name] = (
                    st.st_ino,
                    st.st_size,
                    mtime,
                    ctime if ctime > mtime else mtime,
                )


def stat_directory(directory: str) -> os.stat_result | None:
    """The directory's own stat (``None``: it does not exist); permanent errors for the rest."""
    try:
        top = os.stat(directory)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise PermanentSourceError(f"directories: cannot access {directory!r}: permission denied") from exc
    except NotADirectoryError:
        return None  # a parent is a file: the directory cannot exist (yet)
    if not stat_module.S_ISDIR(top.st_mode):
        raise PermanentSourceError(f"directories: {directory!r} exists but is not a directory")
    return top


def scan_directory(config: DirectoryWatchConfig, directory: str) -> DirectoryScan:
    """One fresh listing of ``directory`` as ``config`` sees it (blocking: run it in a thread)."""
    now = time.time_ns()
    top = stat_directory(directory)
    if top is None:
        return DirectoryScan(directory, False, {}, now)
    filt = FileFilter.of(config)
    try:
        files = list_files(directory, recursive=config.recursive, accepts=filt.match, ignores_dir=filt.ignores)
    except FileNotFoundError:
        return DirectoryScan(directory, False, {}, now)
    return DirectoryScan(directory, True, files, now, top.st_mtime_ns)


# --------------------------------------------------------------------------------------------------
# The shared cache
# --------------------------------------------------------------------------------------------------
class ListingKey(NamedTuple):
    directory: str
    recursive: bool
    ignore_patterns: tuple[str, ...]
    """Only for recursive listings (they decide what is descended into); ``()`` otherwise."""

    @classmethod
    def of(cls, config: DirectoryWatchConfig, directory: str) -> ListingKey:
        return cls(directory, config.recursive, config.ignore_patterns if config.recursive else ())


@dataclass
class Listing:
    """The shared, current listing of one directory, and who depends on it."""

    key: ListingKey
    exists: bool = False
    files: dict[str, FileStat] = field(default_factory=dict)
    listed_at_ns: int = 0
    dir_mtime_ns: int = 0
    newest_stamp: int = 0
    generation: int = 0
    listings: int = 0
    """How many times this directory was listed (for tests and benchmarks: listings, not stats)."""
    stats: int = 0
    """How many times the directory itself was ``stat``-ed to decide whether to list it."""
    covered: frozenset[FileFilter] = frozenset()
    stale: bool = True
    filters: Counter[FileFilter] = field(default_factory=Counter)
    settle_ns: Counter[int] = field(default_factory=Counter)
    fresh_stats_users: int = 0
    views: dict[FileFilter, DirectoryScan] = field(default_factory=dict)
    subdirs: tuple[str, ...] = ()
    """Relative paths of the subdirectories a recursive listing descended into (its last listing)."""

    @property
    def subscribers(self) -> int:
        return sum(self.filters.values())

    def reusable(self, dir_mtime_ns: int) -> bool:
        if self.stale or not self.exists or self.fresh_stats_users or not self.covered.issuperset(self.filters):
            return False
        hot_ns = max(self.settle_ns, default=0)
        return (
            dir_mtime_ns == self.dir_mtime_ns
            and self.dir_mtime_ns < self.listed_at_ns - QUIET_MARGIN_NS
            and self.newest_stamp <= self.listed_at_ns - hot_ns
        )

    def view(self, filt: FileFilter) -> DirectoryScan:
        """This listing as a watch with ``filt`` sees it (shared by every watch with that filter)."""
        scan = self.views.get(filt)
        if scan is None:
            if len(self.covered) == 1 and filt in self.covered:
                files = self.files
            else:
                files = {rel: st for rel, st in self.files.items() if filt.accepts(os.path.basename(rel))}
            scan = DirectoryScan(self.key.directory, self.exists, files, self.listed_at_ns, self.dir_mtime_ns)
            self.views[filt] = scan
        return scan


class DirectoryListings:
    """Every directory listing of a process (or of one standalone source), shared by its watches."""

    def __init__(self, max_idle: int = MAX_IDLE_LISTINGS) -> None:
        self._listings: OrderedDict[ListingKey, Listing] = OrderedDict()
        self._max_idle = max_idle
        self._missing_logged: set[str] = set()

    def __len__(self) -> int:
        return len(self._listings)

    def get(self, key: ListingKey) -> Listing | None:
        return self._listings.get(key)

    # -- who depends on what -------------------------------------------------------------------------
    def subscribe(self, config: DirectoryWatchConfig) -> list[ListingKey]:
        """Register a watch's needs on each of its directories; returns their listing keys."""
        filt = FileFilter.of(config)
        settle_ns = int(config.settle_seconds * 1e9)
        keys = []
        for directory in config.directories:
            key = ListingKey.of(config, directory)
            listing = self._listings.get(key)
            if listing is None:
                listing = self._listings[key] = Listing(key)
            self._listings.move_to_end(key)
            listing.filters[filt] += 1
            listing.settle_ns[settle_ns] += 1
            listing.fresh_stats_users += int(config.uses_snapshot or config.recursive)
            keys.append(key)
        return keys

    def unsubscribe(self, config: DirectoryWatchConfig) -> None:
        filt = FileFilter.of(config)
        settle_ns = int(config.settle_seconds * 1e9)
        for directory in config.directories:
            listing = self._listings.get(ListingKey.of(config, directory))
            if listing is None:
                continue
            listing.filters[filt] -= 1
            if listing.filters[filt] <= 0:
                del listing.filters[filt]
            listing.settle_ns[settle_ns] -= 1
            if listing.settle_ns[settle_ns] <= 0:
                del listing.settle_ns[settle_ns]
            listing.fresh_stats_users -= int(config.uses_snapshot or config.recursive)
        self._evict_idle()

    def _evict_idle(self) -> None:
        idle = [k for k, v in self._listings.items() if not v.filters]
        for key in idle[: max(0, len(idle) - self._max_idle)]:
            del self._listings[key]

    # -- refreshing ------------------------------------------------------------------------------------
    def refresh(self, key: ListingKey, now_ns: int | None = None) -> tuple[Listing, bool]:
        """Bring one listing up to date: ``(listing, listed)`` where ``listed`` says it was listed now.

        Reuses the listing when the directory provably did not change (see the module docstring);
        raises :class:`PermanentSourceError` for an unreadable directory or a path that is no
        directory. Each call that does not reuse lists the directory once.
        """
        listing = self._listings.get(key)
        if listing is None:
            listing = self._listings[key] = Listing(key)
        now = time.time_ns() if now_ns is None else now_ns
        directory = key.directory
        listing.stats += 1
        top = stat_directory(directory)
        if top is not None and listing.reusable(top.st_mtime_ns):
            return listing, False
        files: dict[str, FileStat] = {}
        exists = top is not None
        listing.subdirs = ()
        if exists:
            accepts, ignores_dir = self._union(listing)
            subdirs: list[str] | None = [] if key.recursive else None
            try:
                files = list_files(
                    directory, recursive=key.recursive, accepts=accepts, ignores_dir=ignores_dir, subdirs=subdirs
                )
                listing.listings += 1
                listing.subdirs = tuple(subdirs or ())
            except FileNotFoundError:
                exists = False
        self._log_presence(directory, exists)
        if exists != listing.exists or files != listing.files:
            listing.generation += 1
            listing.views = {}
        elif listing.covered != frozenset(listing.filters):
            listing.views = {}
        listing.exists = exists
        listing.files = files
        listing.listed_at_ns = now
        listing.dir_mtime_ns = top.st_mtime_ns if top is not None and exists else 0
        listing.newest_stamp = max((st[STAMP] for st in files.values()), default=0)
        listing.covered = frozenset(listing.filters)
        listing.stale = False
        return listing, True

    def invalidate(self, key: ListingKey) -> None:
        listing = self._listings.get(key)
        if listing is not None:
            listing.stale = True

    def invalidate_directory(self, directory: str) -> None:
        """Mark every listing of ``directory`` stale (a change notification for it arrived).

        An in-place write moves no directory mtime, so only this makes the next refresh list it.
        """
        plain = self._listings.get(ListingKey(directory, False, ()))
        if plain is not None:
            plain.stale = True
        for key, listing in self._listings.items():
            if key.recursive and key.directory == directory:
                listing.stale = True

    @staticmethod
    def _union(listing: Listing) -> tuple[Callable[[str], object], Callable[[str], bool]]:
        filters = list(listing.filters)
        if len(filters) == 1:
            only = filters[0]
            return only.match, only.ignores
        ignore = FileFilter((), listing.key.ignore_patterns).ignores
        return (lambda name: any(f.match(name) for f in filters)), ignore

    def _log_presence(self, directory: str, exists: bool) -> None:
        if not exists and directory not in self._missing_logged:
            self._missing_logged.add(directory)
            log.warning("directory %s does not exist yet; waiting for it to appear", directory)
        elif exists and directory in self._missing_logged:
            self._missing_logged.discard(directory)
            log.info("directory %s appeared; watching it", directory)

    # -- verification ----------------------------------------------------------------------------------
    def verify(self, key: ListingKey, reported: Iterable[tuple[str, str, FileStat | None]]) -> bool:
        """Whether files reported from a reused listing are still as listed: ``(kind, rel, stat)``.

        ``stat`` is ``None`` for a deletion (the file must still be absent). On any difference the
        listing is invalidated (the next refresh lists it) and ``False`` is returned.
        """
        directory = key.directory
        for kind, rel, expected in reported:
            path = os.path.join(directory, rel)
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                if kind == "deleted":
                    continue
                self.invalidate(key)
                return False
            except OSError:
                self.invalidate(key)
                return False
            current = (st.st_ino, st.st_size, st.st_mtime_ns, max(st.st_mtime_ns, st.st_ctime_ns))
            if kind == "deleted" or current != expected:
                self.invalidate(key)
                return False
        return True
