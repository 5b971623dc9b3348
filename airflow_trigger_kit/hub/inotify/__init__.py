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
limits below could be handled per directory.

The parts, split along the ownership line below:

* :mod:`.filesystems` — which file system a directory is on (``/proc/self/mountinfo``), and which
  file systems send no events for changes made elsewhere (pure; tested on mountinfo texts).
* :mod:`.watches` — :func:`open_inotify` and :class:`DirectoryWatches`, the kernel watches by
  directory (the hub's worker thread only).
* :mod:`.listener` — :class:`DirectoryListener`, which turns events into settled hints, and
  :class:`DirectoryLiveness` (the event loop only).

Design and invariants (with :mod:`airflow_trigger_kit.hub.notifications`, whose rules hold here
unchanged):

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
  A platform without inotify raises
  :class:`~airflow_trigger_kit.hub.notifications.ListenerUnsupported` once: polling.
"""

from airflow_trigger_kit.hub.inotify.filesystems import (
    MOUNTINFO,
    MOUNTINFO_TTL_SECONDS,
    NO_EVENT_FS_TYPES,
    Mount,
    fs_type_of,
    parse_mountinfo,
    sends_no_events,
)
from airflow_trigger_kit.hub.inotify.listener import DirectoryHub, DirectoryListener, DirectoryLiveness
from airflow_trigger_kit.hub.inotify.watches import DirectoryWatches, open_inotify

__all__ = [
    "MOUNTINFO",
    "MOUNTINFO_TTL_SECONDS",
    "NO_EVENT_FS_TYPES",
    "DirectoryHub",
    "DirectoryListener",
    "DirectoryLiveness",
    "DirectoryWatches",
    "Mount",
    "fs_type_of",
    "open_inotify",
    "parse_mountinfo",
    "sends_no_events",
]
