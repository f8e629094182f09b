"""Files made elsewhere that users will bring: each is bounded, its bound between a lower bound
measured on the runtime and an independent upper bound (the product of the exact norms of its layers,
or a cruder proof), in every format it comes in."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from export.onnx_graph import graph_bound
from export.torch_graph import exported_program_bound, torchscript_bound
from export.verify import UnsupportedOpError

pytestmark = pytest.mark.filterwarnings("ignore")

DYNAMIC = ({0: torch.export.Dim("batch", min=1)},)


def _dense_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """Exact operator norm of a linear (or affine) layer on inputs of ``shape``: its matrix from
    one-hot inputs, in float64."""
    layer = copy.deepcopy(layer).double().eval()
    size = math.prod(shape)
    with torch.no_grad():
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        columns = (layer(basis) - layer(torch.zeros(1, *shape, dtype=torch.float64))).reshape(size, -1)
    return float(torch.linalg.matrix_norm(columns, ord=2))


def _exact_product(net: nn.Sequential, shape: tuple[int, ...]) -> float:
    """Product of the exact norms of the linear layers of ``net`` (the other layers are 1-Lipschitz
    maps: activations, non-overlapping L2 pools, flatten)."""
    product, x = 1.0, torch.zeros(1, *shape)
    for layer in net:
        if isinstance(layer, nn.Linear | nn.modules.conv._ConvNd):
            product *= _dense_norm(layer, tuple(x.shape[1:]))
        with torch.no_grad():
            x = layer(x)
    return product


def _onnx(net: nn.Module, shape: tuple[int, ...], dynamo: bool = True, opset: int = 20) -> onnx.ModelProto:
    example = torch.randn(2, *shape)
    if dynamo:
        return torch.onnx.export(
            net, (example,), dynamo=True, dynamic_shapes=DYNAMIC, verbose=False
        ).model_proto
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (example,),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        dynamic_axes={"x": {0: "N"}},
    )
    return onnx.load_from_string(buffer.getvalue())


def _bounds_in_every_format(net: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """The bound of ``net`` from its legacy and dynamo ONNX exports, TorchScript trace and .pt2."""
    net = net.eval()
    example = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
    return {
        "onnx (torch.onnx, dynamo=False)": graph_bound(
            _onnx(net, shape, dynamo=False, opset=17)
        ).lipschitz_bound,
        "onnx (torch.onnx, dynamo=True)": graph_bound(_onnx(net, shape)).lipschitz_bound,
        "torchscript": torchscript_bound(traced, shape).lipschitz_bound,
        "pt2": exported_program_bound(
            torch.export.export(net, (example,), dynamic_shapes=DYNAMIC)
        ).lipschitz_bound,
    }


def _measured(net: nn.Module, shape: tuple[int, ...], points: int = 32) -> float:
    """A lower bound of the Lipschitz constant: the largest Jacobian norm at random points."""
    net = copy.deepcopy(net).double().eval()
    best = 0.0
    for seed in range(points):
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        jacobian = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x)
        best = max(best, float(torch.linalg.matrix_norm(jacobian.reshape(-1, x.numel()), ord=2)))
    return best


def _assert_tight(bounds: dict[str, float], lower: float, upper: float, looseness: float = 1 + 1e-5) -> None:
    for name, bound in bounds.items():
        assert lower * (1 - 1e-9) <= bound <= upper * looseness, name


# --- the peers' exports ------------------------------------------------------------------------------------


def test_a_deel_torchlip_vanilla_export_is_bounded_at_its_exact_product():
    """deel-torchlip's Fashion-MNIST example network (on 12x12 inputs): its L2-norm pools become
    LPPool2d (Sign / Abs / Relu / Pow in every export), its GroupSort2 ReduceMin + ReduceMax over a
    size-2 axis (bounded at 1, not sqrt(2)), and the legacy exporter spells x.view(x.size(0), -1) with
    Shape, Gather and Concat."""
    tl = pytest.importorskip("deel.torchlip")
    torch.manual_seed(0)
    model = tl.Sequential(
        tl.SpectralConv2d(1, 8, 3, padding=1),
        tl.GroupSort2(),
        tl.ScaledL2NormPool2d(kernel_size=2),
        tl.SpectralConv2d(8, 16, 3, padding=1),
        tl.GroupSort2(),
        tl.ScaledL2NormPool2d(kernel_size=2),
        nn.Flatten(),
        tl.SpectralLinear(16 * 3 * 3, 32),
        tl.GroupSort2(),
        tl.SpectralLinear(32, 10),
    ).eval()
    vanilla = model.vanilla_export().eval()
    shape = (1, 12, 12)
    product = _exact_product(vanilla, shape)
    _assert_tight(_bounds_in_every_format(vanilla, shape), _measured(vanilla, shape, points=8), product)


def test_an_orthogonium_export_is_bounded_at_its_exact_product():
    layers = pytest.importorskip("orthogonium.layers")
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    net = nn.Sequential(
        layers.AdaptiveOrthoConv2d(2, 8, 3, padding=1),
        layers.MaxMin(),
        layers.AdaptiveOrthoConv2d(8, 8, 2, stride=2, padding=0),
        layers.MaxMin(),
        nn.Flatten(),
        layers.OrthoLinear(8 * 4 * 4, 10),
    ).eval()
    for module in net.modules():  # export the weights, not their parametrization
        for name in list(getattr(module, "parametrizations", {})):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    shape = (2, 8, 8)
    bound = graph_bound(_onnx(net, shape)).lipschitz_bound
    _assert_tight({"onnx": bound}, _measured(net, shape, points=4), _exact_product(net, shape))


# --- ordinary graphs --------------------------------------------------------------------------------------


class _ViewNet(nn.Module):
    """A conv net that flattens with x.view(x.size(0), -1) (the legacy exporter's Shape / Gather)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.linear(x.view(x.size(0), -1))


def test_a_view_on_the_batch_size_is_bounded_in_every_format():
    torch.manual_seed(1)
    net = _ViewNet().eval()
    shape = (2, 5, 5)
    product = _dense_norm(net.conv, shape) * _dense_norm(net.linear, (100,))
    _assert_tight(_bounds_in_every_format(net, shape), _measured(net, shape, points=8), product)


@pytest.mark.parametrize(
    "upsample",
    [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Upsample(size=(5, 7), mode="nearest"),
    ],
    ids=["nearest x2", "bilinear x2", "bilinear x2 align corners", "nearest to a size"],
)
def test_resizes_are_bounded_at_their_exact_norm(upsample):
    shape = (2, 4, 3)
    exact = _dense_norm(upsample, shape)
    _assert_tight(_bounds_in_every_format(upsample, shape), exact, exact)


def test_a_resize_on_which_runtimes_disagree_is_bounded_for_both():
    """onnx.reference and onnxruntime compute different linear align-corners resizes at scale 1.5:
    the bound covers the exact norms of both."""
    upsample = nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True)
    shape = (2, 4, 3)
    model = _onnx(upsample, shape, dynamo=False, opset=17)
    basis = np.eye(24, dtype=np.float32).reshape(24, *shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    responses = [session.run(None, {"x": basis})[0], ReferenceEvaluator(model).run(None, {"x": basis})[0]]
    norms = [float(np.linalg.norm(r.reshape(24, -1).astype(np.float64), 2)) for r in responses]
    assert abs(norms[0] - norms[1]) > 0.01  # they do disagree
    assert max(norms) <= graph_bound(model).lipschitz_bound <= max(norms) * (1 + 1e-5)


def test_a_3d_convolution_is_bounded_at_its_exact_norm():
    torch.manual_seed(2)
    conv = nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 1))
    shape = (2, 4, 4, 3)
    exact = _dense_norm(conv, shape)
    _assert_tight(_bounds_in_every_format(conv, shape), exact, exact)


@pytest.mark.parametrize("last", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)], ids=["softmax", "log softmax"])
def test_a_softmax_as_last_op_is_bounded_between_a_measure_and_a_cruder_proof(last):
    """Independent upper bounds: ||diag(p) - p p^T|| <= ||diag(p)|| <= 1 for softmax, and
    ||I - 1 p^T|| <= 1 + ||1|| ||p|| <= 1 + sqrt(n) for log-softmax."""
    torch.manual_seed(3)
    linear = nn.Linear(4, 6)
    with torch.no_grad():
        linear.weight.mul_(20)  # large logits: one dominates, the log-softmax slope nears sqrt(n)
    net = nn.Sequential(linear, last).eval()
    norm = _dense_norm(linear, (4,))
    cruder = norm * (1.0 if isinstance(last, nn.Softmax) else 1 + math.sqrt(6))
    _assert_tight(_bounds_in_every_format(net, (4,)), _measured(net, (4,), points=64), cruder)


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    ).eval()


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_files_of_opsets_11_to_13_get_the_bound_of_opset_20(opset):
    net = _tiny_net()
    expected = graph_bound(_onnx(net, (2, 4, 4))).lipschitz_bound
    bound = graph_bound(_onnx(net, (2, 4, 4), dynamo=False, opset=opset)).lipschitz_bound
    assert bound == pytest.approx(expected, rel=1e-9)


def test_nodes_that_reach_no_output_are_not_bounded():
    model = _onnx(_tiny_net(), (2, 4, 4))
    expected = graph_bound(model).lipschitz_bound
    first = model.graph.node[0].output[0]
    model.graph.node.extend([helper.make_node("Exp", [first], ["unused"])])  # no rule, and no use
    assert graph_bound(model).lipschitz_bound == expected


def _optimised(model: onnx.ModelProto, level: ort.GraphOptimizationLevel, path) -> onnx.ModelProto:
    """The graph onnxruntime runs after its optimisations at ``level``, as it saves it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(path)


def test_onnxruntime_optimised_files_are_bounded_or_refused_by_name(tmp_path):
    net = _tiny_net()
    model = _onnx(net, (2, 4, 4))
    expected = graph_bound(model).lipschitz_bound
    basic = _optimised(model, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, tmp_path / "basic.onnx")
    assert graph_bound(basic).lipschitz_bound == pytest.approx(expected, rel=1e-9)
    extended = _optimised(model, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, tmp_path / "extended.onnx")
    assert "FusedConv" in {node.op_type for node in extended.graph.node}
    assert graph_bound(extended).lipschitz_bound == pytest.approx(expected, rel=1e-9)
    (fused,) = [node for node in extended.graph.node if node.op_type == "FusedConv"]
    fused.op_type = "QuickGelu"  # another com.microsoft op: no rule
    with pytest.raises(UnsupportedOpError, match=r"unsupported op com\.microsoft::QuickGelu"):
        graph_bound(extended)


def test_an_average_pool_that_does_not_count_its_padding_is_bounded_at_its_exact_norm():
    """ONNX's default count_include_pad=0: border windows are divided by their real pixels."""
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 0], strides=[2, 1]
    )
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    basis = np.eye(20, dtype=np.float32).reshape(20, 1, 5, 4)
    exact = float(np.linalg.norm(session.run(None, {"x": basis})[0].reshape(20, -1).astype(np.float64), 2))
    assert exact * (1 - 1e-6) <= graph_bound(model).lipschitz_bound <= exact * (1 + 1e-5)


def test_a_fused_gemm_is_bounded_like_gemm_and_its_activation():
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "w")
    fused = helper.make_node(
        "FusedGemm",
        ["x", "w"],
        ["y"],
        domain="com.microsoft",
        transB=1,
        activation="LeakyRelu",
        activation_alpha=2.0,
    )
    graph = helper.make_graph(
        [fused],
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,
    )
    norm = float(np.linalg.norm(numpy_helper.to_array(weight).astype(np.float64), 2))
    assert graph_bound(model).lipschitz_bound == pytest.approx(2 * norm, rel=1e-5)
