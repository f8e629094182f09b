"""Advisory locks on open files: the kernel releases one when its process ends, however it ends.

A lock held on a file says that a live process is using it; a file of a kind that is always locked
while in use, found unlocked, was left behind by a killed process (``zoo train``'s run directory,
the hub's partial downloads). ``flock`` on POSIX (reliable on local file systems; on network file
systems it depends on the server), ``msvcrt.locking`` of the first byte on Windows.
"""

from __future__ import annotations

import sys

__all__ = ["try_lock"]


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` without waiting; False if another holds it.
    Two descriptors opened separately conflict even in one process (the lock belongs to the open
    file, not to the process)."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
