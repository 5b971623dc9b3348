"""The hub's inotify instance and its kernel watches: one per directory, counted, moved and dropped.

Kept apart from the listener because it runs on the other side of the hub's ownership line: all of
it (``inotify_add_watch`` / ``inotify_rm_watch``, reading ``/proc/self/mountinfo``) runs on the
hub's single worker thread, and the event loop only reads the two maps it publishes by single dict
assignments (``roots_by_wd``, ``covered``). :func:`open_inotify` makes the descriptor non-blocking
itself, because asyncinotify 4.4's ``InitFlags.NONBLOCK`` is ``O_CLOEXEC`` by mistake and the
loop's reader reads it until ``EAGAIN``: it must never block.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from airflow_trigger_kit.hub.inotify.filesystems import (
    MOUNTINFO,
    MOUNTINFO_TTL_SECONDS,
    NO_EVENT_FS_TYPES,
    Mount,
    fs_type_of,
    parse_mountinfo,
    sends_no_events,
)
from airflow_trigger_kit.hub.notifications import ListenerUnsupported
from airflow_trigger_kit.sources.directory import DirectoryWatchConfig, Listing, ListingKey

if TYPE_CHECKING:
    from asyncinotify import Inotify, Mask, Watch

# The package's logger, as before the split: operators' log configuration keeps applying unchanged.
log = logging.getLogger("airflow_trigger_kit.hub.inotify")

INOTIFY_CACHE_EVENTS = 64


def open_inotify() -> Inotify:
    """A new non-blocking inotify instance, or :class:`ListenerUnsupported` where there is none."""
    if not sys.platform.startswith("linux"):
        raise ListenerUnsupported(f"inotify exists on Linux only (this is {sys.platform})")
    try:
        from asyncinotify import Inotify
    except (ImportError, RuntimeError) as exc:
        raise ListenerUnsupported(f"asyncinotify is not usable ({exc}); install it: pip install asyncinotify") from exc
    try:
        inotify = Inotify(cache_size=INOTIFY_CACHE_EVENTS)
        # The loop's reader reads it until EAGAIN: it must never block (whatever the library's flags did).
        os.set_blocking(inotify.fd, False)
        return inotify
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            raise ListenerUnsupported(f"the kernel has no inotify: {exc}") from exc
        raise  # EMFILE (fs.inotify.max_user_instances) and the like: a failure, retried with backoff


def _watch_mask() -> Mask:
    from asyncinotify import Mask

    # No IN_MODIFY: every write() would be an event; the close, or the settle re-poll, covers a write.
    return (
        Mask.CREATE
        | Mask.CLOSE_WRITE
        | Mask.ATTRIB
        | Mask.MOVED_FROM
        | Mask.MOVED_TO
        | Mask.DELETE
        | Mask.DELETE_SELF
        | Mask.MOVE_SELF
        | Mask.ONLYDIR
        | Mask.EXCL_UNLINK
    )


class DirectoryWatches:
    """The kernel watches of the hub's inotify instance, by directory (worker thread only).

    ``roots_by_wd`` (which watched directories an event on a watch descriptor concerns) and
    ``covered`` (listing keys whose directories are all watched) are read by the event loop.
    """

    def __init__(self) -> None:
        self.inotify: Inotify | None = None
        self.wanted: Counter[ListingKey] = Counter()
        self.roots_by_wd: dict[int, frozenset[str]] = {}
        self.covered: dict[ListingKey, bool] = {}
        self.no_event_fs_types: frozenset[str] = NO_EVENT_FS_TYPES
        """File-system types polled instead of watched (an operator or a test may extend it)."""
        self.max_watches: int | None = None
        """Refuse more watches than this as the kernel does past ``max_user_watches`` (``ENOSPC``):
        a configuration-free seam for failure drills and tests; ``None`` leaves it to the kernel."""
        self.added = 0
        """Kernel watches added since the process started (tests read it)."""
        self.refusals = 0
        """``inotify_add_watch`` calls refused with ``ENOSPC``."""
        self._watch_by_path: dict[str, Watch] = {}
        self._paths_by_wd: dict[int, set[str]] = {}
        self._keys_by_path: dict[str, set[ListingKey]] = {}
        self._paths_by_key: dict[ListingKey, set[str]] = {}
        self._mounts: list[Mount] = []
        self._mounts_read = -MOUNTINFO_TTL_SECONDS
        self._warned_full = False
        self._full = False
        self._remote_logged: set[str] = set()
        self._mask: Mask | None = None

    def __len__(self) -> int:
        """Kernel watches held now."""
        return len(self._paths_by_wd)

    # -- the inotify instance ------------------------------------------------------------------------
    def attach(self, inotify: Inotify) -> None:
        self._reset()
        self.inotify = inotify
        self._mask = _watch_mask()

    def detach(self, inotify: Inotify) -> None:
        """Forget ``inotify``'s watches (they die with it) and close it, unless a newer one is attached."""
        if self.inotify is inotify:
            self._reset()
            self.inotify = None
        inotify.close()

    def _reset(self) -> None:
        self._watch_by_path = {}
        self._paths_by_wd = {}
        self._keys_by_path = {}
        self._paths_by_key = {}
        self.roots_by_wd = {}
        self.covered = {}

    # -- who wants watches ---------------------------------------------------------------------------
    def subscribe(self, config: DirectoryWatchConfig, keys: list[ListingKey]) -> None:
        if config.notify:
            for key in keys:
                self.wanted[key] += 1

    def unsubscribe(self, config: DirectoryWatchConfig, keys: list[ListingKey]) -> None:
        if not config.notify:
            return
        for key in keys:
            self.wanted[key] -= 1
            if self.wanted[key] <= 0:
                del self.wanted[key]
                self.release(key)

    def wants(self, key: ListingKey) -> bool:
        return self.inotify is not None and key in self.wanted

    def covers(self, keys: Iterable[ListingKey]) -> bool:
        """Whether every directory of these listing keys is watched now (read by the event loop)."""
        covered = self.covered
        return all(covered.get(key, False) for key in keys)

    # -- around a listing (called by the hub's tick) ---------------------------------------------------
    def before_listing(self, key: ListingKey) -> None:
        """Watch the directory itself before it is listed (a file created after the listing has its event)."""
        self._watch(key, key.directory)

    def after_listing(self, key: ListingKey, listing: Listing) -> bool:
        """Match the watches to the listing; ``True`` when one was added after it (poll once more)."""
        paths = {key.directory}
        if key.recursive and listing.exists:
            paths.update(os.path.join(key.directory, sub) for sub in listing.subdirs)
        added = False
        for path in sorted(paths):
            added = self._watch(key, path) or added
        for path in self._paths_by_key.get(key, set()) - paths:
            self._unwatch(key, path)
        held = self._paths_by_key.get(key, set())
        self.covered[key] = listing.exists and paths <= held
        return added

    def release(self, key: ListingKey) -> None:
        for path in list(self._paths_by_key.pop(key, ())):
            self._unwatch(key, path)
        self.covered.pop(key, None)

    def forget(self, wd: int) -> None:
        """The kernel dropped this watch (``IN_IGNORED``: its directory was deleted or unmounted)."""
        for path in self._paths_by_wd.pop(wd, set()):
            self._watch_by_path.pop(path, None)
            for key in self._keys_by_path.pop(path, set()):
                self._paths_by_key.get(key, set()).discard(path)
                self.covered[key] = False
        self.roots_by_wd.pop(wd, None)

    def drop(self, wd: int) -> None:
        """Remove a watch whose directory moved away (the watch would follow it), then forget it."""
        paths = self._paths_by_wd.get(wd)
        if paths and self.inotify is not None:
            watch = self._watch_by_path.get(next(iter(paths)))
            if watch is not None:
                self._rm(watch)
        self.forget(wd)

    # -- the system calls ----------------------------------------------------------------------------
    def _watch(self, key: ListingKey, path: str) -> bool:
        """Make sure ``path``'s kernel watch exists and serves ``key``; ``True`` when newly serving it."""
        inotify, mask = self.inotify, self._mask
        if inotify is None or mask is None:
            return False
        keys = self._keys_by_path.get(path)
        if keys is not None:
            if key in keys:
                return False
            keys.add(key)
            self._paths_by_key.setdefault(key, set()).add(path)
            self._publish(self._watch_by_path[path].wd)
            return True
        fs_type = self._fs_type(path)
        if sends_no_events(fs_type, self.no_event_fs_types):
            if path not in self._remote_logged:
                self._remote_logged.add(path)
                log.warning(
                    "trigger-kit directories: %s is on a %s file system, which sends no change notifications "
                    "for changes made elsewhere; polling it every poll_interval",
                    path,
                    fs_type,
                )
            return False
        try:
            if self.max_watches is not None and len(self._paths_by_wd) >= self.max_watches:
                refused: int | None = errno.ENOSPC  # as the kernel answers past max_user_watches
            else:
                watch = inotify.add_watch(path, mask)
                refused = None
        except OSError as exc:
            refused = exc.errno or -1
            if refused not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ENOSPC):
                log.debug("trigger-kit directories: cannot watch %s: %s", path, exc)
        if refused is not None:
            if refused == errno.ENOSPC:
                self.refusals += 1
                self._full = True
                if not self._warned_full:
                    self._warned_full = True
                    log.warning(
                        "trigger-kit directories: the kernel refused an inotify watch for %s (ENOSPC: "
                        "fs.inotify.max_user_watches is exhausted); polling such directories every "
                        "poll_interval and retrying on each poll. Raise the limit with "
                        "`sysctl fs.inotify.max_user_watches=524288`",
                        path,
                    )
            return False
        if self._full:
            self._full = False
            log.info("trigger-kit directories: inotify watches are accepted again (from %s on)", path)
        self.added += 1
        wd = watch.wd
        self._watch_by_path[path] = watch
        self._paths_by_wd.setdefault(wd, set()).add(path)
        self._keys_by_path[path] = {key}
        self._paths_by_key.setdefault(key, set()).add(path)
        self._publish(wd)
        return True

    def _unwatch(self, key: ListingKey, path: str) -> None:
        self._paths_by_key.get(key, set()).discard(path)
        keys = self._keys_by_path.get(path)
        if keys is None:
            return
        keys.discard(key)
        watch = self._watch_by_path[path]
        if keys:
            self._publish(watch.wd)
            return
        del self._keys_by_path[path]
        del self._watch_by_path[path]
        paths = self._paths_by_wd.get(watch.wd, set())
        paths.discard(path)
        if not paths:
            self._paths_by_wd.pop(watch.wd, None)
            self.roots_by_wd.pop(watch.wd, None)
            self._rm(watch)
        else:
            self._publish(watch.wd)

    def _rm(self, watch: Watch) -> None:
        if self.inotify is not None:
            with contextlib.suppress(OSError):  # already gone with its directory
                self.inotify.rm_watch(watch)

    def _publish(self, wd: int) -> None:
        roots = {k.directory for p in self._paths_by_wd.get(wd, ()) for k in self._keys_by_path.get(p, ())}
        self.roots_by_wd[wd] = frozenset(roots)  # one assignment: the event loop reads it

    def _fs_type(self, path: str) -> str | None:
        now = time.monotonic()
        if now - self._mounts_read > MOUNTINFO_TTL_SECONDS:
            self._mounts_read = now
            try:
                with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
                    self._mounts = parse_mountinfo(f.read())
            except OSError:
                self._mounts = []
        return fs_type_of(os.path.realpath(path), self._mounts)
