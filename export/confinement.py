"""Confine the current process before it reads a file of unknown origin (Linux; standard library only).

What a TorchScript or .pt2 file holds is a *program*, and verifying the file runs it. Its aten
operators are torch's own kernels, but some reach outside the process: ``aten::from_file`` maps (and
creates) a file, ``aten::save`` writes one; a loop can run forever; a declared shape can ask for any
amount of memory. :func:`confine` makes the current process unable to do harm, for good (nothing can
lift it):

* Landlock (Linux >= 5.13, unprivileged): no write access anywhere in the file system (no file or
  directory created, written, truncated, renamed or removed) but in one private directory, the
  process's ``TMPDIR`` (libraries need a temporary directory; its owner removes it afterwards);
  reading stays allowed. Where the kernel
  has Landlock ABI >= 4, no TCP bind or connect; >= 6, no signal to a process outside the sandbox and
  no abstract unix socket.
* resource limits: the data segment (every heap and anonymous mapping) at ``max_memory`` bytes,
  so an allocation above it fails (MemoryError) instead of exhausting the machine; ``cpu_seconds`` of
  CPU time, after which the kernel kills the process; no file written beyond :data:`MAX_FILE_SIZE`
  bytes; no core dump.
* the process is killed when its parent dies (a verifier left behind stops).

Run as ``python -m export.confinement`` it is the child of :mod:`export.sandbox`: it reads its request
on stdin, confines itself, and only then imports torch and the verifier.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import resource
import signal
import sys

__all__ = ["MAX_FILE_SIZE", "confine", "landlock_abi"]

MAX_FILE_SIZE = 64 * 2**20
"""Largest file the confined process may write (in its private directory): 64 MiB."""

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same numbers on every Linux architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38

_WRITE_ACCESS_BY_ABI = {
    1: sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)),  # write, remove, make_*
    2: 1 << 13,  # refer (link or rename across directories)
    3: 1 << 14,  # truncate
    5: 1 << 15,  # ioctl on devices
}
_TCP_BIND_CONNECT = (1 << 0) | (1 << 1)  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET_AND_SIGNAL = (1 << 0) | (1 << 1)  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel, 0 when it has none (not Linux, too old, disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _forbid_writes(libc: ctypes.CDLL, abi: int, writable: str) -> None:
    """Forbid every write to the file system but beneath the directory ``writable``."""
    write_access = sum(bits for version, bits in _WRITE_ACCESS_BY_ABI.items() if abi >= version)
    attr = _RulesetAttr(
        handled_access_fs=write_access,
        handled_access_net=_TCP_BIND_CONNECT if abi >= 4 else 0,
        scoped=_SCOPE_ABSTRACT_UNIX_SOCKET_AND_SIGNAL if abi >= 6 else 0,
    )
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct grew with the ABI
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        directory = os.open(writable, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rule = _PathBeneathAttr(allowed_access=write_access, parent_fd=directory)
            if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(directory)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def _lower(limit: int, value: int, grace: int = 0) -> None:
    """Set the resource ``limit`` to ``value`` (hard limit ``value + grace``), never above the hard
    limit this process was given (which only root could raise)."""
    soft, hard = value, value + grace
    given = resource.getrlimit(limit)[1]
    if given != resource.RLIM_INFINITY:
        soft, hard = min(soft, given), min(hard, given)
    resource.setrlimit(limit, (soft, hard))


def confine(max_memory: int, cpu_seconds: int, writable: str) -> bool:
    """Confine this process for the rest of its life (see the module docstring): at most
    ``max_memory`` bytes of data, ``cpu_seconds`` of CPU time, no file written but beneath the
    directory ``writable``. Returns whether the file system could be closed to writes (False: this
    kernel has no Landlock; the other limits hold).

    Call it before any thread is started: Landlock applies to the calling thread and its future
    children only.
    """
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_FSIZE, MAX_FILE_SIZE)
    _lower(resource.RLIMIT_DATA, max_memory)
    _lower(resource.RLIMIT_CPU, cpu_seconds, grace=5)  # SIGXCPU at the limit, SIGKILL 5 s later
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    abi = landlock_abi()
    if abi < 1:
        return False
    _forbid_writes(libc, abi, writable)
    return True


def _main() -> None:
    """The sandbox's child: read the request, confine, then verify (imports happen only now)."""
    request = json.loads(sys.stdin.readline())
    try:
        confined = confine(request["max_memory"], request["cpu_seconds"], os.environ["TMPDIR"])
    except OSError as error:
        confined = False
        if error.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            raise
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not a kill
    from export.sandbox import serve_request

    serve_request(request, confined)


if __name__ == "__main__":
    _main()
