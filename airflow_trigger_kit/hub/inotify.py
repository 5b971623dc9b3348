"""Kernel file notifications (inotify) wake the directory watches early; the hub's polls stay the truth.

**Library: asyncinotify** (Linux; a dependency with a ``sys_platform == 'linux'`` marker). It is a
small, maintained, typed ctypes binding of the inotify system calls, which is exactly what the hub
needs: it hands out watch descriptors (so the hub owns exactly one kernel watch per directory and
can count, move and drop them), reports ``inotify_add_watch`` errors as ``OSError`` with their
``errno`` (``ENOSPC`` when ``fs.inotify.max_user_watches`` is exhausted), exposes ``IN_IGNORED``,
``IN_Q_OVERFLOW`` and ``IN_ISDIR``, and reads the inotify file descriptor without a thread (the
event loop's reader calls us when it is readable). ``watchfiles`` was not chosen: it runs its own
thread with its own debouncing, watches trees recursively by itself (no control over the number of
kernel watches, no per-directory ``ENOSPC``), and reports changes as paths only, so none of the
limits below could be handled per directory. (asyncinotify 4.4's ``InitFlags.NONBLOCK`` is
``O_CLOEXEC`` by mistake, so :func:`open_inotify` makes the descriptor non-blocking itself: the
loop's reader reads it until ``EAGAIN`` and must never block.)

Design and invariants (with :mod:`.notifications`, whose rules hold here unchanged):

* **A notification is only a hint.** An event wakes the waiters of the watched directory it
  concerns; what they report is what the poll from their own cursor finds. A lost, duplicated or
  reordered event delays a detection to the next regular poll at worst.
* **One inotify instance per hub, one kernel watch per directory** whatever the number of waits on
  it (recursive watches add one per subdirectory their listing descended into). Watches exist
  while a subscription with ``notify=True`` needs the directory and are removed with the last one.
* **Ownership.** Watch bookkeeping (:class:`DirectoryWatches`: ``inotify_add_watch`` /
  ``inotify_rm_watch`` and reading ``/proc/self/mountinfo``) runs on the hub's single worker
  thread, inside ticks or as queued changes applied before the next job; the event loop only reads
  the inotify descriptor (a non-blocking ``read`` from the loop's reader callback) and looks up two
  maps the worker publishes by single dict assignments (which watch belongs to which directories;
  which listing keys are fully watched).
* **Watch before listing.** A directory's watch is added before it is listed, so a file created
  after the listing has its event. A watch that could only be added after a listing (a
  subdirectory that listing found, a directory that just appeared) asks for one more poll right
  away, so nothing created in between waits for the reconcile poll.
* **Live per watch.** A waiter polls every ``reconcile_interval`` only while the listener is live
  *and* every directory of its watch has its kernel watches. A directory on a file system that
  sends no events for remote changes (NFS, SMB/CIFS, FUSE, 9p, virtiofs, ... read from
  ``/proc/self/mountinfo``), a missing directory, or one whose watch the kernel refused (``ENOSPC``:
  warned once) keeps its watches polling every ``poll_interval``; the watch is retried on each poll.
* **Hints wait for settling.** Nothing written now can be reported before ``settle_seconds`` have
  passed, so an event for a directory arms a timer that fires once the directory has been quiet
  for the smallest ``settle_seconds`` of its watches (at most twice that after the first event of
  a burst): a burst of 10,000 events is one poll, and a file closed at *t* is polled for at about
  *t* + ``settle_seconds``. Structural events (a subdirectory created or removed, the directory
  itself deleted or moved, the kernel queue overflowing) hint at once. A hint also marks the
  directory's listing stale: an in-place write moves no directory mtime.
* **Failure.** A broken descriptor makes :meth:`DirectoryListener.listen` raise; the base class
  logs once, falls back to polling and reconnects with backoff. The watches die with their inotify
  instance: the next polls add them to the new one (the base class hints everyone on reconnect).
  A platform without inotify raises :class:`~.notifications.ListenerUnsupported` once: polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from airflow_trigger_kit.hub.notifications import Listener, ListenerUnsupported
from airflow_trigger_kit.hub.scheduling import Ticker, Waiter
from airflow_trigger_kit.sources.directory import DirectoryListings, DirectoryWatchConfig, Listing, ListingKey

if TYPE_CHECKING:
    from asyncinotify import Inotify, Mask, Watch

log = logging.getLogger(__name__)

NO_EVENT_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "virtiofs",
        "fuse",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "ncpfs",
        "coda",
        "vboxsf",
        "davfs",
        "gfs2",
        "ocfs2",
        "beegfs",
    }
)
"""File systems whose changes made elsewhere (another host, the container's host) raise no inotify
event here; ``fuse.*`` subtypes (sshfs, s3fs, gcsfuse, ...) count as ``fuse``."""
MOUNTINFO = "/proc/self/mountinfo"
MOUNTINFO_TTL_SECONDS = 5.0
"""How long a read of the mount table is reused when adding watches."""
SETTLE_MARGIN_SECONDS = 0.005
"""Added to a settle timer, so the poll it causes finds the file settled (clocks differ slightly)."""
MAX_DEFER_FACTOR = 2.0
"""A busy directory is hinted at most this many ``settle_seconds`` after the first event of a burst."""
EVENTS_PER_CALLBACK = 2048
"""Events handled per reader callback before yielding to the rest of the event loop."""
INOTIFY_CACHE_EVENTS = 64


# --------------------------------------------------------------------------------------------------
# Which file system a directory is on (pure: tested on mountinfo texts)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order (later lines are mounted on top).

    A line: ``id parent major:minor root mount_point options [optional fields...] - fstype source
    super_options``; malformed lines are skipped.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < 7 or sep + 1 >= len(fields):
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1]))
    return mounts


def fs_type_of(path: str, mounts: Iterable[Mount]) -> str | None:
    """The type of the file system ``path`` (absolute, symlinks resolved) is on: its longest mount."""
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mount_point
        inside = path == mp or path.startswith(mp if mp.endswith("/") else mp + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = mount
    return best.fs_type if best is not None else None


def sends_no_events(fs_type: str | None, no_event_types: frozenset[str] = NO_EVENT_FS_TYPES) -> bool:
    """Whether inotify misses changes made elsewhere on this file system type (poll it instead)."""
    if fs_type is None:
        return False
    base = fs_type.split(".", 1)[0]  # fuse.sshfs -> fuse
    return fs_type in no_event_types or base in no_event_types


# --------------------------------------------------------------------------------------------------
# The kernel watches (the hub's worker thread only)
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# The listener (the event loop)
# --------------------------------------------------------------------------------------------------
def _matches(waiter: Waiter, keys: set[Hashable | None]) -> bool:
    config: DirectoryWatchConfig = waiter.owner.config
    return config.notify and (None in keys or any(d in keys for d in config.directories))


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


class DirectoryLiveness:
    """What a directory waiter knows of notifications: live while every directory of it is watched."""

    __slots__ = ("keys", "listener", "watches")

    def __init__(self, listener: DirectoryListener, watches: DirectoryWatches, keys: list[ListingKey]) -> None:
        self.listener = listener
        self.watches = watches
        self.keys = keys

    @property
    def live(self) -> bool:
        return self.listener.live and self.watches.covers(self.keys)


class DirectoryHub(Protocol):
    """What the listener uses of :class:`~airflow_trigger_kit.hub.directories.DirectoryHub`."""

    ticker: Ticker
    listings: DirectoryListings
    watches: DirectoryWatches

    def apply_soon(self, change: Callable[[], object]) -> None: ...

    def queue_change(self, change: Callable[[], object]) -> None: ...

    def settle_seconds_of(self, directory: str) -> float: ...


class DirectoryListener(Listener):
    """The hub's inotify instance: events become hints for the watched directories they concern."""

    source_kind = "directory"

    def __init__(self, hub: DirectoryHub) -> None:
        super().__init__("directories (inotify)", hub.ticker, _matches)
        self.directory_hub = hub
        self.watches = hub.watches
        self.events = 0
        """Kernel events read (tests read it)."""
        self.deaf = False
        """While ``True``, events are read and discarded: a seam for drills and tests of lost events."""
        self._inotify: Inotify | None = None
        self._closed: asyncio.Future[None] | None = None
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._stale_queued: set[str] = set()

    @property
    def fd(self) -> int | None:
        """The inotify file descriptor while connected (tests count its watches in ``/proc``)."""
        return self._inotify.fd if self._inotify is not None else None

    # -- the channel ---------------------------------------------------------------------------------
    async def listen(self) -> None:
        inotify = open_inotify()
        loop = asyncio.get_running_loop()
        self._inotify = inotify
        self._closed = closed = loop.create_future()
        self.directory_hub.apply_soon(lambda: self.watches.attach(inotify))
        loop.add_reader(inotify.fd, self._drain)
        self.connected()
        await closed

    async def disconnect(self) -> None:
        inotify, self._inotify = self._inotify, None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._first.clear()
        self._last.clear()
        if inotify is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(inotify.fd)
            # Closed on the worker thread, after its watches are forgotten there (never under an add).
            self.directory_hub.apply_soon(lambda: self.watches.detach(inotify))

    def fail(self, exc: BaseException) -> None:
        """Make the channel fail now with ``exc``, as a broken descriptor would (drills and tests)."""
        if self._closed is not None and not self._closed.done():
            self._closed.set_exception(exc)

    # -- events --------------------------------------------------------------------------------------
    def _drain(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        from asyncinotify import Mask

        handled = 0
        while handled < EVENTS_PER_CALLBACK:
            try:
                event = inotify.sync_get()
            except BlockingIOError:
                return
            except Exception as exc:  # a broken descriptor (EBADF, ...): fall back to polling, reconnect
                self.fail(exc)
                return
            if event is None:
                return
            handled += 1
            self.events += 1
            if self.deaf:
                continue
            self._event(event, Mask)
        asyncio.get_running_loop().call_soon(self._drain)  # more may be buffered: after the others

    def _event(self, event: Any, mask_type: Any) -> None:
        mask = event.mask
        if mask & mask_type.Q_OVERFLOW:
            self._wake(None)  # events were lost: everyone polls
            return
        watch = event.watch
        if watch is None:
            return  # a watch forgotten meanwhile (or being added: that poll follows anyway)
        wd = watch.wd
        roots = self.watches.roots_by_wd.get(wd, frozenset())
        if mask & (mask_type.IGNORED | mask_type.DELETE_SELF | mask_type.MOVE_SELF | mask_type.UNMOUNT):
            # The directory went away (or moved: its watch would follow it elsewhere). Forget the watch;
            # the poll finds the directory missing and watches it again once it reappears.
            if mask & mask_type.MOVE_SELF:
                self.directory_hub.apply_soon(lambda: self.watches.drop(wd))
            elif mask & mask_type.IGNORED:
                self.directory_hub.apply_soon(lambda: self.watches.forget(wd))
            for root in roots:
                self._wake(root)
            return
        if mask & mask_type.ISDIR:
            for root in roots:  # a subdirectory came or went: a recursive watch adds or drops its watch
                self._wake(root)
            return
        for root in roots:
            self._changed(root)

    def _changed(self, directory: str) -> None:
        """A file changed in ``directory``: hint once it has been quiet for its settle time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last[directory] = now
        if directory in self._timers:
            return
        settle = self.directory_hub.settle_seconds_of(directory)
        if settle <= 0:
            self._wake(directory)
            return
        self._first[directory] = now
        self._timers[directory] = loop.call_at(now + settle + SETTLE_MARGIN_SECONDS, self._settled, directory)

    def _settled(self, directory: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        settle = self.directory_hub.settle_seconds_of(directory)
        due = (
            min(self._last.get(directory, now) + settle, self._first.get(directory, now) + MAX_DEFER_FACTOR * settle)
            + SETTLE_MARGIN_SECONDS
        )
        if due > now + 0.001:
            self._timers[directory] = loop.call_at(due, self._settled, directory)
            return
        self._timers.pop(directory, None)
        self._first.pop(directory, None)
        self._last.pop(directory, None)
        self._wake(directory)

    def rewatched(self, directory: str) -> None:
        """A watch was added after a listing of ``directory``: poll it once more (see the docstring)."""
        self._wake(directory)

    def _wake(self, directory: str | None) -> None:
        if directory is not None and directory not in self._stale_queued:
            self._stale_queued.add(directory)
            listings = self.directory_hub.listings

            def stale() -> None:
                self._stale_queued.discard(directory)
                listings.invalidate_directory(directory)

            self.directory_hub.queue_change(stale)
        self.hint(directory)
