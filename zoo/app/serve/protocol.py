"""The KServe v2 / Open Inference Protocol on the wire: request bodies in, response bodies out.

An inference request is a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``
where each input is ``{"name", "shape", "datatype", "data"}`` (``data`` flat or nested, row-major).
Triton's *binary tensor data* extension is supported both ways, because Triton's own clients use it
by default: the JSON header is followed by raw little-endian tensor bytes, its length is given in the
``Inference-Header-Content-Length`` HTTP header, and a tensor sent that way has
``"parameters": {"binary_data_size": n}`` instead of ``data``. Outputs are returned as binary when
the request asks for it (``"binary_data_output": true`` for all, or ``"binary_data": true`` per
output).

Triton's *classification* extension is supported for the logits (``"classification": k`` in an
output's parameters): the output is then a BYTES tensor of the top ``k`` classes of each example as
``"logit:class"`` strings.

Requests are read default-deny: every field and parameter must be one this module knows and of the
JSON type it expects; a parameter the server cannot honour (sequences, priorities, shared memory) is
refused by name rather than ignored. Inputs outside the certificate's recorded input range are
refused, unless the server clamps them (``zoo serve --clamp-inputs``); the answer then says how
many examples were clamped (``"parameters": {"clamped_examples": n}``).

Every problem with a request is a :class:`ProtocolError` carrying the HTTP status and a message
that says what is wrong; the app answers it as ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoo.app.serve.model import ServedModel
from zoo.prediction import InputRangeError, check_inputs

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

REQUEST_FIELDS = ("id", "parameters", "inputs", "outputs")
INPUT_FIELDS = ("name", "shape", "datatype", "parameters", "data")
OUTPUT_FIELDS = ("name", "parameters")
REQUEST_PARAMETERS = ("binary_data_output",)
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data", "classification")
UNSUPPORTED_PARAMETERS = {  # parameters of Triton's protocol this server does not implement -> why
    **dict.fromkeys(("sequence_id", "sequence_start", "sequence_end"), "the model is not a sequence model"),
    "priority": "requests are served in arrival order, there are no priority levels",
    "timeout": "requests are not timed out in the queue",
    **dict.fromkeys(
        ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"),
        "shared memory is not supported: send the tensor in the request body",
    ),
}


class ProtocolError(Exception):
    """A request answered with an error: ``status`` is the HTTP status, the message says why, and
    ``headers`` are added to the answer (``Retry-After``...)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class RequestedOutput:
    """An output to answer, as JSON ``data`` or (``binary``) as raw bytes after the JSON header;
    ``classes`` > 0 asks for the top ``classes`` classes instead (the classification extension)."""

    name: str
    binary: bool
    classes: int = 0


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: a finite float32 batch in the certificate's input range, the
    outputs to answer, and how many examples were clamped into the range."""

    id: str | None
    inputs: np.ndarray
    outputs: tuple[RequestedOutput, ...]
    clamped_examples: int = 0


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
    if not header_length.isdecimal() or int(header_length) > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length!r}: expected a byte count within the body's {len(body)}"
        )
    return body[: int(header_length)], body[int(header_length) :]


def _object(value: Any, what: str, fields: Collection[str]) -> dict[str, Any]:
    """``value`` checked to be a JSON object whose keys are among ``fields``."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {_json_type(value)}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ProtocolError(f"{what} has unknown field {unknown[0]!r}; its fields are {', '.join(fields)}")
    return value


def _parameters(container: dict[str, Any], what: str, known: Collection[str]) -> dict[str, Any]:
    """The ``parameters`` object of ``container`` ({} when absent); names it cannot honour are errors."""
    parameters = container.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(f"parameters of {what} must be a JSON object, not {_json_type(parameters)}")
    for name in parameters:
        if name not in known:
            reason = UNSUPPORTED_PARAMETERS.get(name, "unknown parameter")
            accepted = ", ".join(known) or "none"
            raise ProtocolError(f"parameter {name!r} of {what}: {reason} (accepted here: {accepted})")
    return parameters


def _typed(container: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``container[key]`` (None when absent), checked to be of JSON type ``kind``."""
    value = container.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        expected = {str: "a string", bool: "true or false", int: "an integer"}[kind]
        raise ProtocolError(f"{what} must be {expected}, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


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


def _binary_values(name: str, size: Any, dtype: np.dtype, binary: bytes) -> np.ndarray:
    if type(size) is not int or size != len(binary) or len(binary) % dtype.itemsize:
        raise ProtocolError(
            f"binary_data_size {size!r} of input {name!r} does not match the {len(binary)} "
            f"bytes of binary data in the body (a whole number of {dtype.itemsize}-byte values)"
        )
    return np.frombuffer(binary, dtype=dtype)


def _json_values(tensor: dict[str, Any], name: str, binary: bytes) -> np.ndarray:
    if binary:
        raise ProtocolError(f"{len(binary)} bytes of binary data in the body belong to no input")
    if "data" not in tensor:
        raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size")
    try:
        values = np.asarray(tensor["data"])
    except ValueError as error:  # ragged nested lists
        raise ProtocolError(f"data of input {name!r} is not a regular array: {error}") from None
    if values.dtype.kind not in "iuf":
        raise ProtocolError(f"data of input {name!r} must hold numbers only")
    return values


def _input_tensor(tensor: dict[str, Any], model: ServedModel, binary: bytes) -> np.ndarray:
    """The model's input as a float32 array of its declared shape."""
    name = model.input_name
    datatype = _typed(tensor, "datatype", str, f"the datatype of input {name!r}")
    if datatype not in INPUT_DATATYPES:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; the model takes FP32 (FP64 is cast)")
    shape = _shape(tensor, model)
    parameters = _parameters(tensor, f"input {name!r}", INPUT_PARAMETERS)
    if "binary_data_size" in parameters:
        if "data" in tensor:
            raise ProtocolError(f"input {name!r} has both 'data' and a binary_data_size")
        values = _binary_values(name, parameters["binary_data_size"], INPUT_DATATYPES[datatype], binary)
    else:
        values = _json_values(tensor, name, binary)
    if values.size != math.prod(shape):
        raise ProtocolError(
            f"input {name!r} has {values.size} values but its shape {list(shape)} needs {math.prod(shape)}"
        )
    with np.errstate(over="ignore"):  # FP64 values beyond the FP32 range become inf: refused later
        return values.reshape(shape).astype(np.float32)


def _the_input(inputs: Any, model: ServedModel) -> dict[str, Any]:
    """The one tensor of ``inputs`` that feeds the model; any other tensor is an error."""
    if not isinstance(inputs, list):
        raise ProtocolError(f"'inputs' must be a list of tensors, not {_json_type(inputs)}")
    tensors = [_object(tensor, "each of 'inputs'", INPUT_FIELDS) for tensor in inputs]
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


def _requested_outputs(
    requested: Any, default_binary: bool, model: ServedModel
) -> tuple[RequestedOutput, ...]:
    """The outputs to answer, in order, and how; all of them when none is named."""
    if requested is None:
        requested = [{"name": name} for name in model.output_specs()]
    if not isinstance(requested, list):
        raise ProtocolError(
            f"'outputs' must be a list of {{\"name\": ...}} objects, not {_json_type(requested)}"
        )
    outputs: dict[str, RequestedOutput] = {}
    for output in requested:
        output = _object(output, "each of 'outputs'", OUTPUT_FIELDS)
        name = _typed(output, "name", str, "the name of an output")
        if name not in model.output_specs():
            known = ", ".join(model.output_specs())
            raise ProtocolError(f"unknown output {name!r}; the outputs are {known}")
        if name in outputs:
            raise ProtocolError(f"output {name!r} is asked for twice")
        what = f"output {name!r}"
        parameters = _parameters(output, what, OUTPUT_PARAMETERS)
        binary = _typed(parameters, "binary_data", bool, f"binary_data of {what}")
        classes = _typed(parameters, "classification", int, f"classification of {what}")
        if classes is not None and (name != model.logits_name or not 1 <= classes <= model.num_classes):
            raise ProtocolError(
                f"classification {classes} of {what}: the classification extension takes the "
                f"{model.logits_name!r} output and 1 to {model.num_classes} classes"
            )
        outputs[name] = RequestedOutput(name, default_binary if binary is None else binary, classes or 0)
    return tuple(outputs.values())


def parse_infer_request(
    body: bytes, header_length: str | None, model: ServedModel, *, clamp: bool = False
) -> InferRequest:
    """Validate an inference request body for ``model``; raises :class:`ProtocolError` saying what is wrong.

    ``header_length`` is the request's ``Inference-Header-Content-Length`` header, if any. Inputs
    outside the certificate's input range are refused, or clamped into it when ``clamp``.
    """
    header, binary = _split_body(body, header_length)
    try:
        request = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("the request body nests JSON too deeply") from None
    request = _object(request, "the request", REQUEST_FIELDS)
    request_id = _typed(request, "id", str, "'id'")
    parameters = _parameters(request, "the request", REQUEST_PARAMETERS)
    default_binary = _typed(parameters, "binary_data_output", bool, "binary_data_output") or False
    inputs = _input_tensor(_the_input(request.get("inputs"), model), model, binary)
    try:
        inputs, clamped = check_inputs(torch.from_numpy(inputs), model.input_range, clamp=clamp)
    except InputRangeError as error:
        raise ProtocolError(f"input {model.input_name!r}: {error} (server option --clamp-inputs)") from None
    except ValueError:
        raise ProtocolError(
            f"input {model.input_name!r} contains NaN or infinite values (or values beyond the FP32 range)"
        ) from None
    outputs = _requested_outputs(request.get("outputs"), default_binary, model)
    return InferRequest(request_id, inputs.numpy(), outputs, int(clamped.sum()))


def _top_classes(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) ``"logit:class"`` strings of the k largest logits of each row, largest first, as Triton
    writes its classification output (the logit printed with six decimals)."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(logits, order, axis=1)
    return np.array(
        [
            [f"{v:f}:{i}" for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values, order, strict=True)
        ],
        dtype=object,
    )


def _bytes_tensor(strings: np.ndarray) -> bytes:
    """Triton's binary BYTES tensor: each element as its 4-byte little-endian length, then its bytes."""
    encoded = [text.encode() for text in strings.reshape(-1)]
    return b"".join(len(item).to_bytes(4, "little") + item for item in encoded)


def encode_infer_response(
    model: ServedModel, request: InferRequest, values: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers for the outputs ``request`` asked for, taken from ``values``."""
    tensors, blobs = [], []
    for output in request.outputs:
        array = values[output.name]
        if output.classes:
            array = _top_classes(array, output.classes)
        datatype = "BYTES" if output.classes else DATATYPE_NAMES[array.dtype]
        tensor: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        if output.binary:
            if output.classes:
                blob = _bytes_tensor(array)
            else:
                blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        response["id"] = request.id
    if request.clamped_examples:
        response["parameters"] = {"clamped_examples": request.clamped_examples}
    response["outputs"] = tensors
    header = json.dumps(response).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(blobs), headers
