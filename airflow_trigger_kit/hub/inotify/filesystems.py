"""Which file system a directory is on, and whether that file system sends inotify events at all.

inotify reports only the changes this kernel makes: a file written by another host on NFS, SMB/CIFS
or a FUSE mount, or by the container's host through virtiofs or 9p, raises no event here. Such
directories must keep polling every ``poll_interval``, so the watches ask this module before adding
a kernel watch. Pure (no system calls): it parses ``/proc/self/mountinfo`` texts, which the tests
feed it directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
