"""onnxruntime sessions on an explicit device: cuda gives CUDA or a clear error, never a CPU run."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.runtime import onnx_session
from zoo.device import DeviceUnavailableError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors where there is no CUDA")


@pytest.fixture()
def relu_model(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), path)
    return path


def test_cpu_sessions_run_on_the_cpu_provider(relu_model):
    session = onnx_session(relu_model, "cpu")
    assert session.get_providers() == ["CPUExecutionProvider"]
    (out,) = session.run(None, {"input": [[-1.0, 0.0, 2.0]]})
    assert out.tolist() == [[0.0, 0.0, 2.0]]


def test_unknown_devices_and_cuda_without_a_device_are_refused(relu_model):
    with pytest.raises(DeviceUnavailableError, match="unknown device 'tpu'; use 'cpu' or 'cuda'"):
        onnx_session(relu_model, "tpu")
    with pytest.raises(DeviceUnavailableError, match="no CUDA device is available"):
        onnx_session(relu_model, "cuda")


def test_cuda_with_an_onnxruntime_without_the_cuda_provider_is_refused(relu_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError, match=r"no CUDAExecutionProvider .* install onnxruntime-gpu"):
        onnx_session(relu_model, "cuda")


def test_a_cuda_provider_that_cannot_start_is_refused_not_replaced_by_the_cpu(relu_model, monkeypatch):
    """onnxruntime-gpu lists CUDAExecutionProvider here, but with no GPU its session quietly runs
    on the CPU: that real fallback must be an error."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider to fail")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # get past the first check
    with pytest.raises(
        DeviceUnavailableError, match=r"could not start CUDAExecutionProvider .* silent fallback"
    ):
        onnx_session(relu_model, "cuda")
