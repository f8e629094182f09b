"""Draining: on shutdown, stop taking work, answer every request already taken, then let the server exit.

The server (``zoo.app.serve.server``) calls :meth:`Drain.begin` on SIGTERM or SIGINT. From then on
the readiness endpoints answer 503, so that a load balancer stops sending traffic, and new inference
requests are answered 503 at once, while the listening socket stays open (a client gets an answer, not
a refused connection). The inference requests taken before keep running; :meth:`Drain.wait` returns
when the last one is answered, or when the grace period is over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Drain"]


class Drain:
    """Counts the inference requests in flight and says whether the server is shutting down."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        """Stop taking inference requests (call in the event loop)."""
        self.draining = True

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one inference request as in flight for the duration of the block."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait(self, seconds: float) -> bool:
        """Wait until no inference request is in flight, at most ``seconds``; whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True
