"""Run the app under uvicorn until SIGINT or SIGTERM, shut down gracefully, exit 0.

On SIGINT or SIGTERM uvicorn stops accepting connections, lets the requests in flight finish (at
most ``GRACEFUL_SHUTDOWN_SECONDS``), then leaves the app's lifespan, which drains and stops the
batcher. After that uvicorn raises the signal again for the handler that was installed before it;
:func:`_exit_cleanly_on_signal` makes that handler end the process with status 0, since the
shutdown it asked for is complete.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from zoo.app.serve.app import create_app
from zoo.app.serve.model import ServedModel

__all__ = ["GRACEFUL_SHUTDOWN_SECONDS", "serve"]

GRACEFUL_SHUTDOWN_SECONDS = 10
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@contextmanager
def _exit_cleanly_on_signal() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _exit) for sig in SHUTDOWN_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    model: ServedModel,
    *,
    host: str,
    port: int,
    max_batch: int,
    max_delay_ms: float,
    max_body_bytes: int,
    log_level: str = "info",
) -> None:
    """Serve ``model`` over HTTP on ``host:port`` until SIGINT or SIGTERM (call from the main thread).

    The options are those of ``zoo serve`` (see :func:`zoo.app.serve.app.create_app`).
    """
    app = create_app(model, max_batch=max_batch, max_delay_ms=max_delay_ms, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    with _exit_cleanly_on_signal():
        uvicorn.Server(config).run()
