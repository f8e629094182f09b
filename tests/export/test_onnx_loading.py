"""What an ONNX file declares is checked before anything is allocated for it: input sizes against a
limit, stored tensors against the bytes the file holds, no external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_files import HUGE_CONSTANT_OPS, onnx_computing_a_huge_constant
from onnx import TensorProto, helper, numpy_helper

from export.onnx_loading import load_onnx
from export.propagation import VerificationError


def _model(input_dims: list, initializer: TensorProto | None = None) -> onnx.ModelProto:
    """``logits = Relu(input)`` (plus ``+ w`` with an ``initializer`` w)."""
    nodes = [helper.make_node("Relu", ["input"], ["relu"])]
    if initializer is None:
        nodes.append(helper.make_node("Identity", ["relu"], ["logits"]))
    else:
        nodes.append(helper.make_node("Add", ["relu", initializer.name], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, input_dims)],
        [initializer] if initializer is not None else [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_a_sane_file_loads(tmp_path):
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    model = load_onnx(_save(_model(["batch", 4], weight), tmp_path / "ok.onnx"))
    assert [i.name for i in model.graph.initializer] == ["w"]


def test_a_tiny_file_declaring_a_huge_input_is_refused(tmp_path):
    path = _save(_model(["batch", 1, 100_000, 100_000]), tmp_path / "huge.onnx")
    assert path.stat().st_size < 1500
    with pytest.raises(
        VerificationError,
        match=r"huge\.onnx: refused: one example of the graph tensor 'input' has shape "
        r"\(1, 100000, 100000\): 10,000,000,000 elements, above the limit of 67,108,864 "
        r"\(raise it with --max-elements",
    ):
        load_onnx(path)
    load_onnx(_save(_model(["batch", 1, 1000, 1000]), tmp_path / "fits.onnx"), max_elements=10**6)
    with pytest.raises(VerificationError, match="above the limit of 999,999"):
        load_onnx(tmp_path / "fits.onnx", max_elements=10**6 - 1)


@pytest.mark.parametrize("field", ["raw_data", "float_data", None])
def test_a_stored_tensor_declaring_more_than_it_holds_is_refused(tmp_path, field):
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100_000, 100_000])
    if field == "raw_data":
        weight.raw_data = np.ones(4, np.float32).tobytes()
    elif field == "float_data":
        weight.float_data.extend([1.0] * 4)
    path = _save(_model(["batch", 4], weight), tmp_path / "inflated.onnx")
    stored = {"raw_data": 16, "float_data": 4, None: 0}[field]
    with pytest.raises(
        VerificationError,
        match=rf"refused: initializer 'w' declares 10,000,000,000 elements \(dims \[100000, 100000\]\) "
        rf"and stores {stored} values",
    ):
        load_onnx(path)


def test_a_tensor_in_a_constant_node_of_a_subgraph_is_checked_too(tmp_path):
    empty = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[10**9])
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=empty)],
        "then",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [10**9])],
    )
    model = _model(["batch", 4])
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["c"], then_branch=then_branch, else_branch=then_branch)
    )
    with pytest.raises(
        VerificationError, match=r"attribute 'value' of Constant node .* in a subgraph of .*If"
    ):
        load_onnx(_save(model, tmp_path / "sub.onnx"))


def test_external_data_is_refused_and_never_read(tmp_path):
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="/dev/zero")
    path = _save(_model(["batch", 4], weight), tmp_path / "external.onnx")
    with pytest.raises(VerificationError, match=r"initializer 'w' refers to external data '/dev/zero'"):
        load_onnx(path)


def test_garbage_and_invalid_graphs_are_refused(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(VerificationError, match=r"garbage\.onnx: not a readable ONNX file"):
        load_onnx(garbage)
    invalid = _model(["batch", 4])
    invalid.graph.node[0].input[0] = "nowhere"
    with pytest.raises(VerificationError, match=r"not a valid ONNX file"):
        load_onnx(_save(invalid, tmp_path / "invalid.onnx"))


@pytest.mark.parametrize("op", HUGE_CONSTANT_OPS)
def test_a_constant_computed_to_a_huge_size_is_refused(tmp_path, op):
    """No declared shape is large, but shape inference fixes the size of what ``op`` computes."""
    path = _save(onnx_computing_a_huge_constant(op), tmp_path / "c.onnx")
    with pytest.raises(
        VerificationError, match=r"refused: the tensor 'big' \(its shape inferred\) has shape"
    ):
        load_onnx(path)
