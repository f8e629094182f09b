"""The parts of Triton's HTTP extensions that ``tritonclient.http`` calls, for the one model served.

Served:

* *model configuration*: ``GET /v2/models/{name}[/versions/1]/config``, the JSON form of the
  config.pbtxt ``zoo export --triton`` writes (``max_batch_size`` is the batcher's ``--max-batch``;
  larger requests are accepted and run in parts; the certificate as ``zoo.*`` parameters);
* *statistics*: ``GET /v2/models/stats`` and ``/v2/models/{name}[/versions/1]/stats``
  (``zoo.app.serve.statistics``);
* *model repository*, read-only: ``POST /v2/repository/index`` lists the model as READY;
  ``POST /v2/repository/models/{name}/load`` succeeds for the served model, which is loaded (a new
  configuration or file is refused); ``unload`` is refused: the server serves one model for its life.

Refused with a 400 naming the extension (``tritonclient`` raises it as an InferenceServerException):
trace, logging, system and CUDA shared memory. :data:`EXTENSIONS` lists, in the server
metadata, exactly the extensions served in full.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from zoo.app.serve.model import ServedModel
from zoo.app.serve.protocol import DATATYPE_NAMES, ProtocolError
from zoo.app.serve.statistics import InferenceStatistics

__all__ = ["EXTENSIONS", "model_config", "router"]

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
"""Triton's names of the protocol extensions served in full (the server metadata lists them)."""

REPOSITORY_BODY_BYTES = 65536
UNSUPPORTED = {  # route prefix of an extension this server does not implement -> its name
    "/v2/trace/setting": "trace",
    "/v2/models/{name}/trace/setting": "trace",
    "/v2/logging": "logging",
    "/v2/systemsharedmemory/status": "system shared memory",
    "/v2/systemsharedmemory/region/{region}/status": "system shared memory",
    "/v2/systemsharedmemory/region/{region}/register": "system shared memory",
    "/v2/systemsharedmemory/region/{region}/unregister": "system shared memory",
    "/v2/systemsharedmemory/unregister": "system shared memory",
    "/v2/cudasharedmemory/status": "CUDA shared memory",
    "/v2/cudasharedmemory/region/{region}/status": "CUDA shared memory",
    "/v2/cudasharedmemory/region/{region}/register": "CUDA shared memory",
    "/v2/cudasharedmemory/region/{region}/unregister": "CUDA shared memory",
    "/v2/cudasharedmemory/unregister": "CUDA shared memory",
}


def _tensor_config(name: str, datatype: str, dims: tuple[int, ...]) -> dict[str, Any]:
    """A tensor of a Triton model configuration: per-example ``dims``; a scalar per example is
    ``dims [1]`` reshaped to ``[]``, Triton's way to batch scalars."""
    config: dict[str, Any] = {"name": name, "data_type": f"TYPE_{datatype}", "dims": list(dims) or [1]}
    if not dims:
        config["reshape"] = {"shape": []}
    return config


def model_config(model: ServedModel, *, max_batch: int, max_delay_ms: float) -> dict[str, Any]:
    """The model configuration (``GET /v2/models/{name}/config``), as Triton answers it in JSON."""
    certificate = model.certificate
    outputs = [
        _tensor_config(name, DATATYPE_NAMES[dtype], shape)
        for name, (dtype, shape) in model.output_specs().items()
    ]
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch,
        "input": [_tensor_config(model.input_name, "FP32", model.input_shape)],
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_delay_ms * 1000)},
        "instance_group": [{"count": 1, "kind": "KIND_GPU" if "CUDA" in model.provider else "KIND_CPU"}],
        "parameters": {
            "zoo.lipschitz_bound": {"string_value": repr(certificate.lipschitz_bound)},
            "zoo.weights_sha256": {"string_value": certificate.weights_sha256},
            "zoo.preprocessing": {
                "string_value": json.dumps(dict(certificate.preprocessing), sort_keys=True)
            },
        },
    }


async def _small_json_body(request: Request) -> Any:
    """The JSON body of a repository request ({} when empty), of at most REPOSITORY_BODY_BYTES."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > REPOSITORY_BODY_BYTES:
            raise ProtocolError(f"a repository request body has at most {REPOSITORY_BODY_BYTES} bytes", 413)
    try:
        return json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ProtocolError(f"the request body is not valid JSON: {error}") from None


def router(
    model: ServedModel,
    check_model: Callable[[str, str | None], None],
    statistics: InferenceStatistics,
    *,
    max_batch: int,
    max_delay_ms: float,
) -> APIRouter:
    """The routes of this module; ``check_model`` raises the 404 for a name or version not served."""
    routes = APIRouter()

    @routes.get("/v2/models/stats")
    @routes.get("/v2/models/{name}/stats")
    @routes.get("/v2/models/{name}/versions/{version}/stats")
    async def stats(name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name is not None:
            check_model(name, version)
        return {"model_stats": [statistics.to_json(model.name, model.version)]}

    @routes.get("/v2/models/{name}/config")
    @routes.get("/v2/models/{name}/versions/{version}/config")
    async def config(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return model_config(model, max_batch=max_batch, max_delay_ms=max_delay_ms)

    @routes.post("/v2/repository/index")
    async def repository_index(request: Request) -> list[dict[str, str]]:
        options = await _small_json_body(request)
        if not isinstance(options, dict) or not set(options) <= {"ready"}:
            raise ProtocolError('the repository index takes an empty body or {"ready": true|false}')
        return [{"name": model.name, "version": model.version, "state": "READY"}]

    @routes.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request) -> dict[str, Any]:
        check_model(name, None)
        if await _small_json_body(request) not in ({}, {"parameters": {}}):
            raise ProtocolError(
                f"model {name!r} is loaded; this server cannot load a new configuration or file"
            )
        return {}

    @routes.post("/v2/repository/models/{name}/unload")
    async def unload(name: str) -> None:
        check_model(name, None)
        raise ProtocolError(
            f"this server serves {name!r} for its whole life and cannot unload it: stop the server"
        )

    def refuse(extension: str) -> Callable[[], Any]:
        async def refused() -> None:
            raise ProtocolError(
                f"zoo serve does not implement Triton's {extension} extension; it serves "
                f"{', '.join(EXTENSIONS)} and a read-only model repository"
            )

        return refused

    for path, extension in UNSUPPORTED.items():
        routes.add_api_route(path, refuse(extension), methods=["GET", "POST"])
    return routes
