"""Small ONNX graphs written with onnx.helper for the verifier's tests: one input ``x`` with a
dynamic batch axis, one output ``y``, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def graph_model(
    nodes, initializers, example_shape, batch: str | int = "N", opset: int = 20
) -> onnx.ModelProto:
    """A model of ``nodes`` reading ``x`` of shape (batch, *example_shape) and returning ``y``."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *example_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def graph_node(op: str, inputs: list[str], output: str = "y", **attributes) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attributes)


def run_graph(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``y`` for the batch ``x``, by onnxruntime (float32), as float64."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x.astype(np.float32)})[0].astype(np.float64)
