"""Default-deny: files written by hand to make the verifiers claim less than the truth are refused
(or bounded soundly), one test per class of attack, in every format where it can be spelled.

Each graph here computes a function whose Lipschitz constant is far above what a naive rule would
claim; a refusal names the op and the reason, and never comes as a crash."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import graph_model as _model
from onnx_graphs import graph_node as _node
from onnx_graphs import run_graph
from torch import nn

from export.onnx_graph import graph_bound
from export.torch_graph import exported_program_bound, program_bound, torchscript_bound
from export.verify import UnsupportedOpError, VerificationError, verify_onnx
from export.writers import write_onnx
from zoo.certify import certify
from zoo.models import build

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit.*deprecated:FutureWarning")


def _steepest_quotient(model: onnx.ModelProto, shape: tuple[int, ...], batch: int = 1) -> float:
    """The largest ||f(x) - f(y)|| / ||x - y|| onnxruntime shows on random nearby pairs, per example."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)) * 3
    best = 0.0
    for _ in range(64):
        y = x + 0.01 * rng.standard_normal(x.shape)
        moved = np.linalg.norm((run_graph(model, x) - run_graph(model, y)).reshape(batch, -1), axis=1)
        best = max(best, float(np.max(moved / np.linalg.norm((x - y).reshape(batch, -1), axis=1))))
    return best


# --- 1. squares that leave their rule ---------------------------------------------------------------

SQUARE = [_node("Pow", ["x", "two"], "s")]
SQUARE_LEAKS = {
    "identity": ([_node("Identity", ["s"])], {}),
    "flatten": ([_node("Flatten", ["s"])], {}),
    "reshape": ([_node("Reshape", ["s", "shape"])], {"shape": np.array([0, -1])}),
    "concat": ([_node("Concat", ["s", "x"], axis=1)], {}),
    "where": ([_node("Where", ["mask", "s", "x"])], {"mask": np.array([True, False, True])}),
    "reduce sum, then add": (
        [_node("ReduceSum", ["s", "axes"], "r"), _node("Add", ["r", "r"])],
        {"axes": np.array([2])},
    ),
    "add to x": ([_node("Add", ["s", "x"])], {}),
    "sub": ([_node("Sub", ["x", "s"])], {}),
    "x * x + 1 (a crash once)": ([_node("Add", ["s", "one"])], {"one": np.float32(1)}),
    "sqrt(max(x^2, x^2)) (a crash once)": ([_node("Max", ["s", "s"], "m"), _node("Sqrt", ["m"])], {}),
    "matmul(x^2, x) (a crash once)": ([_node("MatMul", ["s", "x"])], {}),
}
"""Graphs on (3, 3) examples that square x, then let the squares reach an op outside the L2-pool rule."""


@pytest.mark.parametrize("case", SQUARE_LEAKS)
def test_squares_that_leave_their_rule_are_refused(case):
    nodes, initializers = SQUARE_LEAKS[case]
    model = _model(SQUARE + nodes, {"two": np.float32(2), **initializers}, (3, 3))
    with pytest.raises(UnsupportedOpError, match="squares"):
        graph_bound(model)


def test_a_certified_export_with_squares_appended_is_refused(tmp_path):
    """logits + 1000 logits^2 appended to a certified export: the verifier must not pass it."""
    torch.manual_seed(0)
    options = {"input_shape": (1, 4, 4), "num_classes": 3, "widths": (4, 4), "dense": ()}
    model = build("lipconv", parametrized=False, **options).eval()
    path = write_onnx(model, certify(model, (1, 4, 4)), tmp_path / "model.onnx")
    proto = onnx.load(path)
    (output,) = proto.graph.output
    logits = output.name
    proto.graph.node.extend(
        [
            _node("Mul", [logits, logits], "squared"),
            _node("Mul", ["squared", "thousand"], "scaled"),
            _node("Add", [logits, "scaled"], "appended"),
        ]
    )
    proto.graph.initializer.append(numpy_helper.from_array(np.float32(1000), "thousand"))
    output.name = "appended"
    edited = tmp_path / "edited.onnx"
    edited.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsupportedOpError, match="squares of input-dependent values"):
        verify_onnx(edited)


@pytest.mark.parametrize(
    "program",
    [
        lambda x: (x * x).flatten(1),
        lambda x: torch.cat((x * x, x), dim=1),
        lambda x: x * x + x,
        lambda x: x - x.pow(2),
        lambda x: (x * x + 1).sqrt(),
        lambda x: torch.maximum(x * x, x * x).sqrt(),
        lambda x: (x * x) @ torch.ones(3, 3),
    ],
)
def test_squares_that_leave_their_rule_are_refused_in_programs(program):
    with pytest.raises(UnsupportedOpError, match="squares"):
        program_bound(program, (3,))


# --- 2. the residual rule and the sign of its branch ------------------------------------------------


def _adjoint_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dense layer A and B = 2 A^T scaled to norm 1: x + B relu(A x) is an SLL-like block."""
    a = np.random.default_rng(seed).standard_normal((6, 4)).astype(np.float32)
    a /= np.linalg.norm(a, 2)
    return a, -2 * a.T


@pytest.mark.parametrize("spelling", ["Sub", "Add of a negated branch", "Add"])
def test_the_residual_rule_reads_the_sign_of_its_branch(spelling):
    a, b = _adjoint_pair()
    nodes = [
        _node("Gemm", ["x", "a"], "h", transB=1),
        _node("Relu", ["h"], "r"),
        _node("Gemm", ["r", "b"], "branch", transB=1),
    ]
    if spelling == "Sub":  # x - B relu(A x): not the 1-Lipschitz block
        nodes.append(_node("Sub", ["x", "branch"]))
    elif spelling == "Add of a negated branch":
        negated = _node("Gemm", ["r", "b"], "branch", transB=1, alpha=-1.0)
        nodes = [*nodes[:2], negated, _node("Add", ["x", "branch"])]
    else:
        nodes.append(_node("Add", ["x", "branch"]))
    model = _model(nodes, {"a": a, "b": b}, (4,))
    bound = graph_bound(model).lipschitz_bound
    truth = _steepest_quotient(model, (4,))
    assert truth <= bound * (1 + 1e-6)
    if spelling == "Add":
        assert bound <= 1 + 1e-4  # the block rule still fires where it is sound
    else:
        assert truth > 1.3  # where the sign-blind rule claimed 1


@pytest.mark.parametrize("spelling", ["sub", "rsub", "add alpha -1"])
def test_the_residual_rule_reads_the_sign_of_its_branch_in_programs(spelling):
    a, b = (torch.from_numpy(m) for m in _adjoint_pair())

    def program(x):
        branch = torch.relu(x @ a.T) @ b.T
        if spelling == "sub":
            return x - branch
        if spelling == "rsub":
            return torch.rsub(branch, x)  # x - branch
        return torch.add(x, branch, alpha=-1)

    bound = program_bound(program, (4,)).lipschitz_bound
    x = torch.randn(256, 4, dtype=torch.float64) * 3
    jacobians = torch.vmap(torch.func.jacrev(lambda v: program(v[None].float()).double()[0]))(x)
    assert float(torch.linalg.matrix_norm(jacobians, 2).max()) <= bound * (1 + 1e-6)
    assert bound > 1.3


# --- 3. parameters outside the domain of a rule -------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "initializers", "message"),
    [
        (
            [_node("PRelu", ["x", "slope"])],
            {"slope": np.float32([1.0, np.nan, 0.5])},
            "PReLU slope holds NaN",
        ),
        ([_node("Celu", ["x"], alpha=-0.5)], {}, "CELU is Lipschitz only for alpha > 0"),
        ([_node("LeakyRelu", ["x"], alpha=float("nan"))], {}, "negative slope is nan"),
        ([_node("Mul", ["x", "c"])], {"c": np.float32([1.0, np.inf, 1.0])}, "scaling factor holds NaN"),
        (
            [_node("Add", ["x", "c"])],
            {"c": np.float32([0.0, np.nan, 0.0])},
            "adds a NaN or infinite constant",
        ),
        (
            [_node("Where", ["mask", "x", "c"])],
            {"mask": np.array([True, False, True]), "c": np.float32([0.0, np.nan, 0.0])},
            "NaN or infinite",
        ),
        ([_node("Clip", ["x", "lo"])], {"lo": np.float32(np.nan)}, "lower bound of a clamp is NaN"),
    ],
)
def test_parameters_outside_a_rules_domain_are_refused(nodes, initializers, message):
    with pytest.raises(UnsupportedOpError, match=message):
        graph_bound(_model(nodes, initializers, (3,)))


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (lambda x: torch.ops.aten.elu(x, 1.0, 1.0, -2.0), "slope exp"),
        (lambda x: torch.celu(x, -0.5), "CELU is Lipschitz only for alpha > 0"),
        (lambda x: torch.prelu(x, torch.tensor([math.nan])), "PReLU slope holds NaN"),
        (lambda x: torch.nn.functional.softplus(x, 1.0, 2.0), "softplus jumps"),
        (lambda x: x + torch.tensor([0.0, math.nan, 0.0]), "adds a NaN or infinite constant"),
    ],
)
def test_parameters_outside_a_rules_domain_are_refused_in_programs(program, message):
    with pytest.raises(UnsupportedOpError, match=message):
        program_bound(program, (3,))


# --- 4. attributes taken at face value ------------------------------------------------------------------


def test_duplicate_axes_are_refused():
    model = _model([_node("ReduceMean", ["x", "axes"])], {"axes": np.array([1, -2])}, (3, 4))
    with pytest.raises(UnsupportedOpError, match=r"axes \[1, -2\] name one axis twice"):
        graph_bound(model)
    with pytest.raises(UnsupportedOpError, match="name one axis twice"):
        program_bound(lambda x: torch.ops.aten.mean.dim(x, [1, -2]), (3, 4))


# --- 5. constants that the runtime computes otherwise ----------------------------------------------------


def test_a_random_constant_is_not_folded():
    """RandomUniform with a seed: onnxruntime's generator is not numpy's."""
    nodes = [
        helper.make_node("RandomUniform", [], ["r"], shape=[3], seed=1.0, low=0.0, high=10.0),
        _node("Mul", ["x", "r"]),
    ]
    with pytest.raises(UnsupportedOpError, match="RandomUniform, whose result the verifier cannot prove"):
        graph_bound(_model(nodes, {}, (3,)))
    with pytest.raises(UnsupportedOpError, match="it is random"):
        program_bound(lambda x: x * torch.rand(3), (3,))


def test_control_flow_is_refused():
    """An If whose branches capture the outer scope's names: folding it alone would rename them."""
    branch = helper.make_graph(
        [_node("Identity", ["big"], "out")],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("If", ["condition"], ["factor"], then_branch=branch, else_branch=branch),
        _node("Mul", ["x", "factor"]),
    ]
    model = _model(nodes, {"condition": np.array(True), "big": np.float32(1000)}, (3,))
    with pytest.raises(UnsupportedOpError, match="control flow"):
        graph_bound(model)


# --- 6. batch-size dependence ---------------------------------------------------------------------------


def test_values_computed_from_the_batch_size_are_refused():
    """table[batch size] is 1 at batch 2 and 3, 100 at batch 1."""
    nodes = [
        _node("Shape", ["x"], "shape"),
        _node("Gather", ["shape", "zero"], "batch"),
        _node("Gather", ["table", "batch"], "factor"),
        _node("Mul", ["x", "factor"]),
    ]
    model = _model(nodes, {"zero": np.array(0), "table": np.float32([0, 100, 1, 1, 1, 1])}, (3,))
    with pytest.raises(UnsupportedOpError, match="computes with the batch size"):
        graph_bound(model)


def test_a_constant_with_the_batch_size_is_refused():
    """A (2, 3) constant broadcasts one example into two rows at batch 1 (the bound doubles)."""
    model = _model([_node("Add", ["x", "c"])], {"c": np.zeros((2, 3), np.float32)}, (3,))
    with pytest.raises(VerificationError, match=r"at batch size [15]"):
        graph_bound(model)


class _ScaledByBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.size(0)


class _BranchOnBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) == 3:
            return 100 * x
        return x


def test_programs_that_read_the_batch_size_are_refused():
    example = torch.zeros(2, 3)
    for module in (_ScaledByBatch(), _BranchOnBatch()):
        with pytest.raises(UnsupportedOpError, match="may be the batch size"):
            torchscript_bound(torch.jit.script(module), (3,))
    exported = torch.export.export(_ScaledByBatch(), (example,), dynamic_shapes=({0: torch.export.Dim("b")},))
    with pytest.raises(UnsupportedOpError, match="computes with the size of axis 0"):
        exported_program_bound(exported)


# --- 7. TorchScript and .pt2 semantics --------------------------------------------------------------------


class _OutArgument(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.zeros_like(x)
        torch.mul(x, 100.0, out=y)
        return y


class _GradModeBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return 100 * x
        return x


class _TrainingBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return 100 * x
        return x


class _Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1.0)
        return x * self.calls


def test_out_arguments_are_refused():
    with pytest.raises(UnsupportedOpError, match=r"writes into its arguments \['out'\]"):
        torchscript_bound(torch.jit.script(_OutArgument()), (3,))


@pytest.mark.parametrize("module", [_GradModeBranch(), _TrainingBranch().eval()])
def test_programs_reading_a_global_mode_are_bounded_in_every_mode(module):
    """Saved in eval mode and verified without gradients, they would claim 1; a runtime that calls
    them with gradients enabled, or in training mode, multiplies by 100."""
    assert torchscript_bound(torch.jit.script(module), (3,)).lipschitz_bound == pytest.approx(100.0)


def test_programs_that_mutate_their_state_are_refused():
    with pytest.raises(UnsupportedOpError, match="a parameter, a buffer or a constant"):
        torchscript_bound(torch.jit.script(_Counter()), (3,))
    exported = torch.export.export(
        _Counter(), (torch.zeros(2, 3),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    with pytest.raises(UnsupportedOpError, match="writes into 'b_calls'"):
        exported_program_bound(exported)
