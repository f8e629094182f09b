"""What one client may cost the server: body sizes, memory held by bodies, time to send, shutdown grace.

Each limit is an option of ``zoo serve`` with the default below (documented in the README):

* ``max_body_bytes`` (``--max-body-mb``, 64 MiB): a larger request body is refused with 413 as soon as
  its size is known, before it is read in full.
* ``max_pending_bytes`` (``--max-pending-mb``, 256 MiB): the request bodies held at once, being read,
  parsed or answered. A request that would exceed it is answered 503 with ``Retry-After``: the
  memory of the server stays bounded whatever the number of clients. At least ``max_body_bytes``.
* ``request_timeout`` (``--request-timeout-s``, 30 s): a client has that long to send a request's
  head (from the moment its connection opens, or its previous answer was sent), and that long again
  to send the body; then it gets 408 and its connection is closed, with one line in the log.
* ``drain_seconds`` (``--drain-s``, 20 s): on SIGTERM, how long the requests already taken may keep
  running; what is still queued after that is answered 503, and the process exits.

A request larger than the batcher's ``max_batch`` runs in parts of ``max_batch`` examples (see
``zoo.app.serve.batcher``), so the model's working memory does not grow with the request, and once
its answer is sent :func:`release_memory` hands the memory its parsing used back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

__all__ = ["Limits", "release_memory"]

MIB = 2**20


@dataclass(frozen=True)
class Limits:
    """The limits of one server; see the module docstring for what each bounds."""

    max_body_bytes: int = 64 * MIB
    max_pending_bytes: int = 256 * MIB
    request_timeout: float = 30.0
    drain_seconds: float = 20.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_pending_bytes < self.max_body_bytes:
            raise ValueError(
                f"need 1 <= max body ({self.max_body_bytes} bytes) <= max pending "
                f"({self.max_pending_bytes} bytes): one request of the largest size must fit"
            )
        if not self.request_timeout > 0 or self.drain_seconds < 0:
            raise ValueError(
                f"need request timeout > 0 and drain >= 0 seconds, got {self.request_timeout} "
                f"and {self.drain_seconds}"
            )


def _libc_malloc_trim() -> ctypes._CFuncPtr | None:
    """glibc's ``malloc_trim``, or None on a C library without it."""
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


_MALLOC_TRIM = _libc_malloc_trim()


def release_memory() -> None:
    """Give the free memory of the C heap back to the system (glibc; elsewhere, nothing to do).

    Parsing a large JSON body makes millions of small objects; once freed, glibc keeps most of their
    pages for reuse, and the process would stay hundreds of MiB above its level after one request.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
