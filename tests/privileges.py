"""Make a real permission check apply to root: drop root's file-permission bypass in one thread.

Tests run as root on CI machines, and root reads a ``chmod 000`` directory anyway: the kernel lets
a thread with ``CAP_DAC_OVERRIDE`` / ``CAP_DAC_READ_SEARCH`` in its *effective* capability set skip
the permission check. Linux keeps capabilities per thread, and the raw ``capset`` system call
changes only the calling thread, so dropping both from the effective set of the directory hub's
worker thread (the one thread that lists directories, see ``airflow_trigger_kit/hub/directories``)
makes the kernel refuse that thread exactly as it refuses a triggerer running as an ordinary user,
while the rest of the test process (its state store, its assertions, its clean-up) keeps root's
rights. The capabilities stay in the *permitted* set, so :func:`restore_file_permission_bypass`
can raise them again.

Not root: nothing to drop, a ``chmod 000`` directory is unreadable already.
"""

from __future__ import annotations

import ctypes
import os

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_BYPASS = (1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _set_bypass(enabled: bool) -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)  # pid 0: the calling thread
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed: cannot drop root's permission bypass for this test")
    if enabled:
        data[0].effective |= _BYPASS & data[0].permitted
    else:
        data[0].effective &= ~_BYPASS & 0xFFFFFFFF
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed: cannot drop root's permission bypass for this test")


def drop_file_permission_bypass() -> None:
    """In the calling thread: obey file permissions even as root."""
    _set_bypass(False)


def restore_file_permission_bypass() -> None:
    """In the calling thread: root's bypass back (after :func:`drop_file_permission_bypass`)."""
    _set_bypass(True)


def can_read(path: str) -> bool:
    """Whether the calling thread may list ``path``."""
    try:
        os.listdir(path)
    except PermissionError:
        return False
    return True
