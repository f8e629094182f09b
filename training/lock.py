"""Exclusive use of a run directory: one ``zoo train`` at a time writes into an ``--out``.

The lock is an advisory ``flock`` on ``OUT/.zoo-train.lock``, which holds the holder's pid, host and
start time for the message a second run gets. The kernel releases a ``flock`` when its process ends,
however it ends, so the lock of a killed run is never stale: the next run takes it over (and says
so). A run that ends normally removes the file. Taking the lock is also the first write into the
directory, so an ``--out`` that cannot be written fails here, before any training.

``flock`` is reliable on local file systems; on network file systems it depends on the server.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from zoo.checkpoint import remove_orphan_temporaries
from zoo.locks import try_lock

__all__ = ["LOCK_FILE", "RunDirectoryError", "hold_run_directory"]

LOCK_FILE = ".zoo-train.lock"


class RunDirectoryError(RuntimeError):
    """The output directory cannot be used: another run holds it, or it cannot be written."""


def _describe(holder: bytes) -> str:
    """'pid P on host H, since T' from a lock file's contents, or why it cannot say."""
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on host {info['host']}, since {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: its lock file is being written"


def _acquire(out_dir: Path) -> tuple[int, bytes, bool]:
    """Lock ``out_dir`` (created if needed); returns the lock file's descriptor, what an earlier
    holder that did not release it (a killed run) had written there (b'' if none), and whether the
    directory was created."""
    path = out_dir / LOCK_FILE
    try:
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            if not try_lock(fd):
                holder = os.read(fd, 4096)
                os.close(fd)
                raise RunDirectoryError(
                    f"{out_dir} is in use by another zoo train ({_describe(holder)}): wait for it to end "
                    "or choose another --out"
                )
            # The previous holder may have removed the file between our open and our lock: then we
            # locked a file nobody else can see, and start again on the current one.
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = os.read(fd, 4096)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd, previous, created
    except OSError as error:  # read-only directory or file system, a file in the way, no space
        raise RunDirectoryError(f"cannot write to {out_dir}: {error.strerror or error}") from None


@contextmanager
def hold_run_directory(out_dir: Path, console: Console) -> Iterator[None]:
    """Hold ``out_dir`` for the duration of the block (creating it if needed, and removing it again
    if it was created here and is still empty at the end). Once it is held, the temporary files of
    writes that a killed run left unfinished are removed (no writer can be active then).

    Raises:
        RunDirectoryError: another process holds it (naming its pid and host), or it cannot be
            written (a read-only directory or file system).
    """
    fd, previous, created = _acquire(out_dir)
    if previous:
        console.print(f"{out_dir}: the run that held it ({_describe(previous)}) ended without releasing it")
    orphans = remove_orphan_temporaries(out_dir)
    if orphans:
        names = ", ".join(orphan.name for orphan in orphans)
        console.print(f"{out_dir}: removed the unfinished writes of a killed run: {names}")
    try:
        yield
    finally:
        (out_dir / LOCK_FILE).unlink(missing_ok=True)
        os.close(fd)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
