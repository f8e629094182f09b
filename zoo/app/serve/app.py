"""The HTTP routes of ``zoo serve``: the KServe v2 / Open Inference Protocol for one model.

====  ==================================================  ==========================================
GET   /v2/health/live                                     ``{"live": true}``
GET   /v2/health/ready                                    ``{"ready": true}`` (400 while shutting down)
GET   /v2                                                 server metadata
GET   /v2/models/{name}[/versions/1]                      model metadata (tensors, certificate bound)
GET   /v2/models/{name}[/versions/1]/ready                ``{"name": ..., "ready": true}``
POST  /v2/models/{name}[/versions/1]/infer                inference (see ``zoo.app.serve.protocol``)
====  ==================================================  ==========================================

Every error, whatever raised it (a bad request, an unknown route, a failure of the model), is
answered as ``{"error": "what is wrong"}`` with a 4xx or 5xx status, as the protocol asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

import zoo
from zoo.app.serve.batcher import BatcherClosedError, DynamicBatcher
from zoo.app.serve.model import ServedModel
from zoo.app.serve.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)

__all__ = ["create_app"]

SERVER_NAME = "lipschitz-zoo"
# Triton's name for the extension of zoo.app.serve.protocol: raw tensor bytes after the JSON header.
EXTENSIONS = ["binary_tensor_data"]


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    if request.headers.get("content-encoding", "identity") != "identity":
        raise ProtocolError("compressed request bodies are not supported", 415)
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > limit:
        raise ProtocolError(f"the request body of {declared} bytes exceeds the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"the request body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model: ServedModel, *, max_batch: int, max_delay_ms: float, max_body_bytes: int) -> FastAPI:
    """The application serving ``model``.

    Args:
        model: the model to serve.
        max_batch: most examples run in one model call (1: no batching); see ``zoo.app.serve.batcher``.
        max_delay_ms: longest wait for a batch to fill after its first request arrived.
        max_body_bytes: larger request bodies are refused with 413, before they are read in full.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with DynamicBatcher(model.predict, max_batch, max_delay_ms / 1000) as batcher:
            app.state.batcher = batcher
            yield

    app = FastAPI(title=f"{SERVER_NAME}: {model.name}", version=zoo.__version__, lifespan=lifespan)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, error: ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)  # unknown route, wrong method
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = {"error": str(error.detail)}
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)  # answered, then logged with its traceback by uvicorn
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    def check_model(name: str, version: str | None) -> None:
        if name != model.name:
            raise ProtocolError(f"unknown model {name!r}; this server serves {model.name!r}", 404)
        if version not in (None, model.version):
            raise ProtocolError(f"model {name!r} has no version {version!r}; it has {model.version!r}", 404)

    def ready() -> bool:
        return app.state.batcher.is_open

    @app.get("/v2/health/live")
    async def server_live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def server_ready() -> JSONResponse:
        return JSONResponse({"ready": ready()}, status_code=200 if ready() else 400)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": zoo.__version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return model_metadata(model)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        check_model(name, version)
        return JSONResponse({"name": name, "ready": ready()}, status_code=200 if ready() else 400)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_model(name, version)
        body = await _read_body(request, max_body_bytes)
        # Parsing and encoding are linear in the body size: off the event loop, like the model call.
        parsed = await run_in_threadpool(parse_infer_request, body, request.headers.get(HEADER_LENGTH), model)
        try:
            outputs = await app.state.batcher.submit(parsed.inputs)
        except BatcherClosedError as error:
            raise ProtocolError(str(error), 503) from None
        content, headers = await run_in_threadpool(encode_infer_response, model, parsed, outputs)
        return Response(content, headers=headers)

    return app
