"""The HTTP routes of ``zoo serve``: the KServe v2 / Open Inference Protocol for one model.

====  ==================================================  ==========================================
GET   /v2/health/live                                     ``{"live": true}``
GET   /v2/health/ready                                    ``{"ready": true}`` (503 while draining)
GET   /v2                                                 server metadata
GET   /v2/models/{name}[/versions/1]                      model metadata (tensors, certificate bound)
GET   /v2/models/{name}[/versions/1]/ready                ``{"name": ..., "ready": true}`` (503 ...)
POST  /v2/models/{name}[/versions/1]/infer                inference (see ``zoo.app.serve.protocol``)
====  ==================================================  ==========================================

and the parts of Triton's extensions that its clients call (``zoo.app.serve.triton``).

Every error, whatever raised it (a bad request, an unknown route, a failure of the model), is
answered as ``{"error": "what is wrong"}`` with a 4xx or 5xx status, as the protocol asks. A client
that goes away before its request is complete costs one line in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import zoo
from zoo.app.serve import triton
from zoo.app.serve.batcher import BatcherClosedError, DynamicBatcher
from zoo.app.serve.drain import Drain
from zoo.app.serve.limits import Limits, release_memory
from zoo.app.serve.model import ServedModel
from zoo.app.serve.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from zoo.app.serve.statistics import InferenceStatistics

__all__ = ["SERVER_NAME", "create_app"]

SERVER_NAME = "lipschitz-zoo"
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log, so that the lines share its format
# Bodies up to this size are parsed on the event loop: a hop to a worker thread would cost more.
INLINE_PARSE_BYTES = 16 * 1024
# Bodies above this size are parsed one at a time: parsing JSON takes about 9 times the body in
# memory (measured: a 34.6 MB body, +306 MiB at the peak), and parsing in parallel gains no time
# (json holds the GIL). With it, the memory of parsing is that of one large body at a time.
LARGE_BODY_BYTES = 2**20
# A body not received in time: the connection is closed with the answer. After other errors uvicorn
# reads and drops the rest of the body (closing at once would reset the connection before the client
# reads the answer); the connection's head timeout bounds how long that may take.
CLOSING_STATUSES = {408}


class _PendingBytes:
    """The bytes of request bodies held at once, against ``Limits.max_pending_bytes``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self) -> Iterator[Callable[[int], None]]:
        """A function taking bytes for one request, all given back when the block exits."""
        taken = 0

        def take(size: int) -> None:
            nonlocal taken
            if self.held + size > self.limit:
                raise ProtocolError(
                    f"the server is busy: {self.held} bytes of request bodies are being processed, "
                    f"{self.limit} at most (--max-pending-mb); retry",
                    503,
                    {"Retry-After": "1"},
                )
            self.held += size
            taken += size

        try:
            yield take
        finally:
            self.held -= taken


async def _read_body(request: Request, limits: Limits, take: Callable[[int], None]) -> bytes:
    """The request body, each chunk counted with ``take`` (see :meth:`_PendingBytes.hold`).

    Refused with 413 as soon as it is known to exceed the size limit, 408 when it is not complete
    within the request timeout, 503 when it would exceed the pending-bytes budget.
    """
    if request.headers.get("content-encoding", "identity") != "identity":
        raise ProtocolError("compressed request bodies are not supported", 415)
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > limit:
        raise ProtocolError(
            f"the request body of {declared} bytes exceeds the limit of {limit} bytes (--max-body-mb)", 413
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.request_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(
                        f"the request body exceeds the limit of {limit} bytes (--max-body-mb)", 413
                    )
                take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise ProtocolError(
            f"the request body was not received within {limits.request_timeout:g} s (--request-timeout-s)",
            408,
        ) from None
    return b"".join(chunks)


def create_app(
    model: ServedModel,
    *,
    max_batch: int,
    max_delay_ms: float,
    limits: Limits | None = None,
    clamp_inputs: bool = False,
) -> FastAPI:
    """The application serving ``model``.

    Args:
        model: the model to serve.
        max_batch: most examples run in one model call (1: no batching); see ``zoo.app.serve.batcher``.
        max_delay_ms: longest wait for a batch to fill after its first request arrived.
        limits: the body, memory and time limits (``zoo.app.serve.limits``; defaults when None).
        clamp_inputs: clamp inputs outside the certificate's input range into it (and say so in the
            answer) instead of refusing them.

    ``app.state.drain`` is the :class:`~zoo.app.serve.drain.Drain` the server begins on SIGTERM.
    """
    limits = limits or Limits()
    drain = Drain()
    pending = _PendingBytes(limits.max_pending_bytes)
    statistics = InferenceStatistics()
    large_bodies = asyncio.Semaphore(1)  # see LARGE_BODY_BYTES

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = DynamicBatcher(model.predict, max_batch, max_delay_ms / 1000, statistics.record_batch)
        async with batcher:
            app.state.batcher = batcher
            yield

    app = FastAPI(title=f"{SERVER_NAME}: {model.name}", version=zoo.__version__, lifespan=lifespan)
    app.state.drain = drain

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, error: ProtocolError) -> JSONResponse:
        headers = dict(error.headers)
        if error.status in CLOSING_STATUSES:
            headers["Connection"] = "close"
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)  # unknown route, wrong method
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = {"error": str(error.detail)}
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(ClientDisconnect)  # nobody to answer: one line in the log
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        LOG.info(
            "%s went away before sending its whole request (%s %s)", client, request.method, request.url.path
        )
        return Response(status_code=400)

    @app.exception_handler(Exception)  # answered, then logged with its traceback by uvicorn
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    def check_model(name: str, version: str | None) -> None:
        if name != model.name:
            raise ProtocolError(f"unknown model {name!r}; this server serves {model.name!r}", 404)
        if version not in (None, model.version):
            raise ProtocolError(f"model {name!r} has no version {version!r}; it has {model.version!r}", 404)

    # First: its /v2/models/stats must not be taken for the metadata of a model named "stats".
    app.include_router(
        triton.router(model, check_model, statistics, max_batch=max_batch, max_delay_ms=max_delay_ms)
    )

    def ready() -> bool:
        return app.state.batcher.is_open and not drain.draining

    @app.get("/v2/health/live")
    async def server_live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def server_ready() -> JSONResponse:
        return JSONResponse({"ready": ready()}, status_code=200 if ready() else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": zoo.__version__, "extensions": triton.EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return model_metadata(model)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        check_model(name, version)
        return JSONResponse({"name": name, "ready": ready()}, status_code=200 if ready() else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_model(name, version)
        if drain.draining:
            raise ProtocolError("the server is shutting down", 503)
        began = time.perf_counter()
        try:
            with drain.track(), pending.hold() as take:
                return await _answer(request, await _read_body(request, limits, take), began)
        except BaseException:
            statistics.record_failure(time.perf_counter() - began)
            raise

    async def _answer(request: Request, body: bytes, began: float) -> Response:
        header_length = request.headers.get(HEADER_LENGTH)
        # Parsing and encoding are linear in the body size: off the event loop, unless it is small.
        if len(body) <= INLINE_PARSE_BYTES:
            parsing = time.perf_counter()
            parsed = parse_infer_request(body, header_length, model, clamp=clamp_inputs)
        else:
            async with large_bodies if len(body) > LARGE_BODY_BYTES else contextlib.nullcontext():
                parsing = time.perf_counter()
                parsed = await run_in_threadpool(
                    parse_infer_request, body, header_length, model, clamp=clamp_inputs
                )
        parsed_for = time.perf_counter() - parsing
        try:
            answer = await app.state.batcher.submit(parsed.inputs)
        except BatcherClosedError as error:
            raise ProtocolError(str(error), 503) from None
        large = len(parsed.inputs) > max_batch
        if large:
            async with large_bodies:  # an answer takes about as much memory to encode as a body to parse
                encoding = time.perf_counter()
                content, headers = await run_in_threadpool(
                    encode_infer_response, model, parsed, answer.outputs
                )
        else:
            encoding = time.perf_counter()
            content, headers = encode_infer_response(model, parsed, answer.outputs)
        done = time.perf_counter()
        statistics.record_success(
            len(parsed.inputs), done - began, answer.queued, parsed_for, answer.computed, done - encoding
        )
        if large:  # once the answer is sent, the memory its parsing used goes back to the system
            return Response(
                content, headers=headers, background=BackgroundTask(run_in_threadpool, release_memory)
            )
        return Response(content, headers=headers)

    return app
