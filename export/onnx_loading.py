"""Reading an ONNX file of unknown origin: what it declares is checked before anything is allocated.

An ONNX file is a protobuf message: parsing it runs no code, but what it declares can be absurd. A
1.5 KB file may declare a 1x1x100000x100000 input (74.5 GiB once a verifier or onnxruntime builds
it), a tensor of a billion elements with no data behind it, or an external data file anywhere on the
disk (``onnx.load`` would read it), or a ConstantOfShape node that evaluates to any size.
:func:`load_onnx` parses the bytes without external data, then refuses external references, stored
tensors that declare more elements than their bytes can hold (whatever their encoding, an element
takes at least half a byte of the file), graph inputs or outputs of one example above a limit
(:mod:`zoo.limits`), and, once the ONNX checker has passed, any tensor whose shape ONNX's shape
inference (with data propagation) fixes above that limit or above the largest stored tensor,
whichever is larger (a transposed weight is as large as the weight).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from export.propagation import VerificationError
from zoo.limits import DEFAULT_MAX_ELEMENTS, SizeLimitError, check_elements

__all__ = ["load_onnx"]

_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def load_onnx(path: str | os.PathLike, max_elements: int = DEFAULT_MAX_ELEMENTS) -> onnx.ModelProto:
    """The ONNX model at ``path``, once its declared sizes are shown to be sane (see the module
    docstring); one example of each graph input and output has at most ``max_elements`` elements.

    Raises:
        VerificationError: an unreadable, invalid or refused file, naming it and the reason.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, OSError, RuntimeError) as error:
        raise VerificationError(f"{path}: not a readable ONNX file ({error})") from error
    try:
        for where, tensor in _stored_tensors(model.graph, "graph"):
            _check_stored(tensor, where)
        for value in (*model.graph.input, *model.graph.output):
            _check_declared(value, max_elements)
    except (VerificationError, SizeLimitError) as error:
        raise VerificationError(f"{path}: refused: {error}") from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise VerificationError(f"{path}: not a valid ONNX file ({message})") from error
    try:
        _check_inferred(model, max_elements)
    except SizeLimitError as error:
        raise VerificationError(f"{path}: refused: {error}") from None
    return model


def _stored_tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor stored in ``graph`` and its subgraphs: initializers (dense and sparse) and node
    attributes, each with a description of where it is."""
    for tensor in graph.initializer:
        yield f"initializer {tensor.name!r}", tensor
    for sparse in graph.sparse_initializer:
        yield f"sparse initializer {sparse.values.name!r}", sparse.values
        yield f"sparse initializer {sparse.values.name!r} (indices)", sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            place = f"attribute {attribute.name!r} of {node.op_type} node {node.name!r} in {where}"
            tensors = [attribute.t, *attribute.tensors]
            for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
                tensors += [sparse.values, sparse.indices]
            for tensor in tensors:
                if tensor.ByteSize():
                    yield place, tensor
            for subgraph in (attribute.g, *attribute.graphs):
                yield from _stored_tensors(subgraph, f"a subgraph of {place}")


def _check_stored(tensor: onnx.TensorProto, where: str) -> None:
    """A tensor's data must be inside the file and hold as many elements as its dims declare."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise VerificationError(
            f"{where} refers to external data {location!r}: only self-contained files are read"
        )
    if any(d < 0 for d in tensor.dims):
        raise VerificationError(f"{where} has negative dims {list(tensor.dims)}")
    declared = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        stored = len(tensor.raw_data)
    else:
        stored = sum(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
    if declared > 2 * stored:
        raise VerificationError(
            f"{where} declares {declared:,} elements (dims {list(tensor.dims)}) and stores {stored:,} "
            "values: its data is not in the file"
        )


_SMALL_TENSOR_BYTES = 2**16
"""Stored tensors up to this size take part in shape inference with their values (shapes, axes);
larger ones (weights) with their shape alone, so that inference does not copy the weights."""


def _check_inferred(model: onnx.ModelProto, max_elements: int) -> None:
    """Every tensor whose shape inference fixes all dims (a symbolic batch counted as 1) within
    ``max_elements`` or the largest stored tensor, whichever is larger."""
    graph = model.graph
    small = [t for t in graph.initializer if t.ByteSize() <= _SMALL_TENSOR_BYTES]
    declared = {value.name for value in graph.input}
    large = [
        helper.make_tensor_value_info(t.name, t.data_type, t.dims)
        for t in graph.initializer
        if t.ByteSize() > _SMALL_TENSOR_BYTES and t.name not in declared
    ]
    light = helper.make_model(
        helper.make_graph(graph.node, graph.name, [*graph.input, *large], graph.output, small),
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
        functions=model.functions,
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
        raise VerificationError(f"shape inference failed ({' '.join(str(error).split())[:300]})") from None
    limit = max([max_elements, *(math.prod(t.dims) for t in graph.initializer)])
    for value in inferred.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") or d.HasField("dim_param") for d in dims):
            sizes = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
            check_elements(sizes, f"the tensor {value.name!r} (its shape inferred)", limit)


def _check_declared(value: onnx.ValueInfoProto, max_elements: int) -> None:
    """One example (the first axis, the batch, set aside) of a graph input or output."""
    dims = value.type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    if any(size < 0 for size in sizes):
        raise VerificationError(f"graph tensor {value.name!r} has negative dims {sizes}")
    check_elements(sizes[1:], f"one example of the graph tensor {value.name!r}", max_elements)
