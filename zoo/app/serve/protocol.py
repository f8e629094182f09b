"""The KServe v2 / Open Inference Protocol on the wire: request bodies in, response bodies out.

An inference request is a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``
where each input is ``{"name", "shape", "datatype", "data"}`` (``data`` flat or nested, row-major).
Triton's *binary tensor data* extension is supported both ways, because Triton's own clients use it
by default: the JSON header is followed by raw little-endian tensor bytes, its length is given in the
``Inference-Header-Content-Length`` HTTP header, and a tensor sent that way has
``"parameters": {"binary_data_size": n}`` instead of ``data``. Outputs are returned as binary when
the request asks for it (``"binary_data_output": true`` for all, or ``"binary_data": true`` per
output).

Every problem with a request is a :class:`ProtocolError` carrying the HTTP status and a message
that says what is wrong; the app answers it as ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.app.serve.model import ServedModel

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "ProtocolError",
    "RequestedOutput",
    "encode_infer_response",
    "model_metadata",
    "parse_infer_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
# Datatypes accepted for the input; both are cast to the FP32 the model runs on.
INPUT_DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
DATATYPE_NAMES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64"}


class ProtocolError(Exception):
    """A request answered with an error: ``status`` is the HTTP status, the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    """An output to answer, as JSON ``data`` or (``binary``) as raw bytes after the JSON header."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: a finite float32 batch and the outputs to answer."""

    id: str | None
    inputs: np.ndarray
    outputs: tuple[RequestedOutput, ...]


def model_metadata(model: ServedModel) -> dict[str, Any]:
    """The model metadata object (``GET /v2/models/{name}``), variable batch size as -1.

    ``parameters`` (an addition to the protocol, ignored by clients that do not know it) gives the
    certificate's bound, the input space it holds in, and the hash of the weights it speaks for.
    """
    outputs = [
        {"name": name, "datatype": DATATYPE_NAMES[dtype], "shape": [-1, *shape]}
        for name, (dtype, shape) in model.output_specs().items()
    ]
    certificate = model.certificate
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_shape]}],
        "outputs": outputs,
        "parameters": {
            "lipschitz_bound": certificate.lipschitz_bound,
            "preprocessing": dict(certificate.preprocessing),
            "weights_sha256": certificate.weights_sha256,
        },
    }


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part of the body and the binary tensor data after it (empty without the extension)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length!r}: expected a byte count within the body's {len(body)}"
        )
    return body[:length], body[length:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _shape(tensor: dict[str, Any], model: ServedModel) -> tuple[int, ...]:
    shape = tensor.get("shape")
    expected = [-1, *model.input_shape]
    if (
        not isinstance(shape, list)
        or len(shape) != len(expected)
        or not all(type(d) is int for d in shape)
        or shape[0] < 1
        or tuple(shape[1:]) != model.input_shape
    ):
        raise ProtocolError(
            f"input {model.input_name!r} has shape {shape}; the model takes {expected} "
            "(any number of examples >= 1)"
        )
    return tuple(shape)


def _binary_values(tensor: dict[str, Any], dtype: np.dtype, binary: bytes) -> np.ndarray:
    size = tensor["parameters"]["binary_data_size"]
    if size != len(binary) or len(binary) % dtype.itemsize:
        raise ProtocolError(
            f"binary_data_size {size!r} of input {tensor['name']!r} does not match the {len(binary)} "
            f"bytes of binary data in the body (a whole number of {dtype.itemsize}-byte values)"
        )
    return np.frombuffer(binary, dtype=dtype)


def _json_values(tensor: dict[str, Any], binary: bytes) -> np.ndarray:
    if binary:
        raise ProtocolError(f"{len(binary)} bytes of binary data in the body belong to no input")
    if "data" not in tensor:
        raise ProtocolError(f"input {tensor['name']!r} has neither 'data' nor a binary_data_size")
    try:
        values = np.asarray(tensor["data"])
    except ValueError as error:  # ragged nested lists
        raise ProtocolError(f"data of input {tensor['name']!r} is not a regular array: {error}") from None
    if values.dtype.kind not in "iuf":
        raise ProtocolError(f"data of input {tensor['name']!r} must hold numbers only")
    return values


def _input_tensor(tensor: dict[str, Any], model: ServedModel, binary: bytes) -> np.ndarray:
    """The model's input as a finite float32 array of its declared shape."""
    datatype = tensor.get("datatype")
    if datatype not in INPUT_DATATYPES:
        raise ProtocolError(
            f"input {model.input_name!r} has datatype {datatype!r}; the model takes FP32 (FP64 is cast)"
        )
    shape = _shape(tensor, model)
    parameters = _object(tensor.get("parameters", {}), f"parameters of input {model.input_name!r}")
    if "binary_data_size" in parameters:
        values = _binary_values(tensor, INPUT_DATATYPES[datatype], binary)
    else:
        values = _json_values(tensor, binary)
    if values.size != math.prod(shape):
        raise ProtocolError(
            f"input {model.input_name!r} has {values.size} values but its shape {list(shape)} "
            f"needs {math.prod(shape)}"
        )
    with np.errstate(over="ignore"):  # FP64 values beyond the FP32 range become inf: refused below
        inputs = values.reshape(shape).astype(np.float32)
    if not np.isfinite(inputs).all():
        raise ProtocolError(
            f"input {model.input_name!r} contains NaN or infinite values (or values beyond the FP32 range)"
        )
    return inputs


def _the_input(inputs: Any, model: ServedModel) -> dict[str, Any]:
    """The one tensor of ``inputs`` that feeds the model; any other tensor is an error."""
    if not isinstance(inputs, list):
        raise ProtocolError("'inputs' must be a list of tensors")
    tensors = [_object(tensor, "each of 'inputs'") for tensor in inputs]
    for tensor in tensors:
        if tensor.get("name") != model.input_name:
            raise ProtocolError(
                f"unknown input {tensor.get('name')!r}: "
                f"model {model.name} has one input, {model.input_name!r}"
            )
    if not tensors:
        raise ProtocolError(f"missing input {model.input_name!r}")
    if len(tensors) > 1:
        raise ProtocolError(f"input {model.input_name!r} is given {len(tensors)} times")
    return tensors[0]


def _requested_outputs(request: dict[str, Any], model: ServedModel) -> tuple[RequestedOutput, ...]:
    """The outputs to answer, in order, and whether each goes as binary data; all when none is named."""
    parameters = _object(request.get("parameters", {}), "'parameters'")
    default_binary = parameters.get("binary_data_output") is True
    requested = request.get("outputs") or [{"name": name} for name in model.output_specs()]
    if not isinstance(requested, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...} objects")
    outputs = []
    for output in requested:
        name = _object(output, "each of 'outputs'").get("name")
        if name not in model.output_specs():
            known = ", ".join(model.output_specs())
            raise ProtocolError(f"unknown output {name!r}; the outputs are {known}")
        binary = _object(output.get("parameters", {}), f"parameters of output {name!r}").get("binary_data")
        outputs.append(RequestedOutput(name, default_binary if binary is None else binary is True))
    return tuple(outputs)


def parse_infer_request(body: bytes, header_length: str | None, model: ServedModel) -> InferRequest:
    """Validate an inference request body for ``model``; raises :class:`ProtocolError` saying what is wrong.

    ``header_length`` is the request's ``Inference-Header-Content-Length`` header, if any.
    """
    header, binary = _split_body(body, header_length)
    try:
        request = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("the request body nests JSON too deeply") from None
    request = _object(request, "the request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    inputs = _input_tensor(_the_input(request.get("inputs"), model), model, binary)
    return InferRequest(request_id, inputs, _requested_outputs(request, model))


def encode_infer_response(
    model: ServedModel, request: InferRequest, values: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers for the outputs ``request`` asked for, taken from ``values``."""
    tensors, blobs = [], []
    for output in request.outputs:
        array = values[output.name]
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": DATATYPE_NAMES[array.dtype],
            "shape": list(array.shape),
        }
        if output.binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = tensors
    header = json.dumps(response).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(blobs), headers
