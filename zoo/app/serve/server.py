"""Run the app under uvicorn until SIGTERM or SIGINT, drain, exit 0.

On the first SIGTERM or SIGINT the server drains (``zoo.app.serve.drain``): readiness turns 503 at
once and new inference requests are answered 503, while every request already taken runs to its
answer. When the last one is answered, or after ``Limits.drain_seconds``, uvicorn shuts down: it
stops listening, closes the idle connections, and the app's lifespan stops the batcher. If the grace
period ends first, the batcher is closed: what it had queued still runs, and requests with parts
not yet queued are answered 503; a second signal ends the grace period at once. Every request taken
gets an answer; the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from zoo.app.serve.app import create_app
from zoo.app.serve.connection import connection_class
from zoo.app.serve.limits import Limits
from zoo.app.serve.model import ServedModel

__all__ = ["serve"]

LOG = logging.getLogger("uvicorn.error")
# After the drain, how long uvicorn waits for connections still open before it cancels their tasks.
SHUTDOWN_BACKSTOP_SECONDS = 5


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, draining the app on the first signal instead of shutting down at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, limits: Limits) -> None:
        super().__init__(config)
        self.app = app
        self.limits = limits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler (main thread, between two steps of the event loop)."""
        if self._loop is None:  # not serving yet: nothing to drain
            self.should_exit = True
        elif self._draining is None:
            self._loop.call_soon_threadsafe(self._begin_drain)
        else:
            LOG.info("second signal: ending the grace period now")
            self._loop.call_soon_threadsafe(self.app.state.batcher.close)

    def _begin_drain(self) -> None:
        self._draining = asyncio.create_task(self._drain(), name="drain")

    async def _drain(self) -> None:
        drain, loop = self.app.state.drain, asyncio.get_running_loop()
        began = loop.time()
        drain.begin()
        LOG.info(
            "draining: readiness is 503 and new requests are refused; %d request(s) in flight, "
            "answered within %g s (--drain-s)",
            drain.in_flight,
            self.limits.drain_seconds,
        )
        if not await drain.wait(self.limits.drain_seconds):
            LOG.warning(
                "grace period over with %d request(s) in flight: their queued parts run, the rest get 503",
                drain.in_flight,
            )
            self.app.state.batcher.close()
            # Now only bodies still being received (bounded by the request timeout) can hold us.
            await drain.wait(self.limits.request_timeout + SHUTDOWN_BACKSTOP_SECONDS)
        LOG.info("drained in %.2f s", loop.time() - began)
        self.should_exit = True


def serve(
    model: ServedModel,
    *,
    host: str,
    port: int,
    max_batch: int,
    max_delay_ms: float,
    limits: Limits | None = None,
    clamp_inputs: bool = False,
    log_level: str = "info",
) -> None:
    """Serve ``model`` over HTTP on ``host:port`` until SIGTERM or SIGINT (call from the main thread,
    as the last work of the process: the heap is left to the exit, not garbage-collected).

    The options are those of ``zoo serve`` (see :func:`zoo.app.serve.app.create_app`).
    """
    limits = limits or Limits()
    app = create_app(
        model, max_batch=max_batch, max_delay_ms=max_delay_ms, limits=limits, clamp_inputs=clamp_inputs
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=connection_class(limits.request_timeout),
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_BACKSTOP_SECONDS,
    )
    _DrainingServer(config, app, limits).run()
    # What follows is the exit of the process: Python's final garbage collection of a heap holding
    # torch and onnxruntime takes seconds (5 s measured) that an orchestrator counts against its grace
    # period. Frozen objects are left to the operating system.
    gc.freeze()
