"""A differential fuzzer of the verifiers: random small graphs of the supported ops, with hostile
attributes (NaN, negative or huge parameters, repeated axes, constants shaped like the batch, shape
arithmetic, squares on their way out), as ONNX files and as TorchScript / .pt2 programs.

For each graph the verifier must either refuse it, or give a bound at least the steepest difference
quotient ``||f(x) - f(y)|| / ||x - y||`` that the runtime itself shows (onnxruntime, or the loaded
program), per example, at batch sizes 1, 2 and 5 (those the runtime accepts), on random pairs and
along the top singular direction of a finite-difference Jacobian, up to the runtime's rounding. A
few hundred graphs run in the fast tests, thousands in the slow ones; ``zoo verify`` is fed some of
them and must never print a traceback."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from export.onnx_graph import graph_bound
from export.torch_graph import exported_program_bound, torchscript_bound
from export.verify import VerificationError
from zoo.app.cli import app

SHAPE = (2, 3, 3)  # one example: (channels, height, width)
BATCHES = (1, 2, 5)
HOSTILE = (math.nan, -3.0, 0.0, 1e4)
ROUNDING = 1e-2
"""Slack for the runtime's float32 rounding, which the bound (of the function in real arithmetic)
does not cover: with a hostile CELU alpha of 1e4, exp(x / alpha) - 1 loses about 6e-4 to
cancellation, which pairs 0.1 apart see as 6e-3 of slope."""


class _Graph:
    """A graph under construction: its nodes, initializers and current tensor (name, shape)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.initializers = rng, [], {}
        self.current, self.shape, self.count = "x", SHAPE, 0

    def name(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def constant(self, value: np.ndarray) -> str:
        name = self.name()
        self.initializers[name] = np.asarray(value)
        return name

    def parameter(self, usual: float) -> float:
        """``usual`` most of the time, a hostile value sometimes."""
        return float(self.rng.choice(HOSTILE)) if self.rng.random() < 0.25 else usual

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...] | None = None, **attributes) -> None:
        output = self.name()
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        self.current, self.shape = output, self.shape if shape is None else shape


def _elementwise(g: _Graph) -> None:
    op = g.rng.choice(["Relu", "Tanh", "Sigmoid", "Abs", "LeakyRelu", "Celu", "Elu", "Softplus", "Atan"])
    attributes = {"alpha": g.parameter(0.5)} if op in ("LeakyRelu", "Celu", "Elu") else {}
    g.add(op, [g.current], **attributes)


def _scale(g: _Graph) -> None:
    factor = g.rng.standard_normal(g.shape[:1] + (1,) * (len(g.shape) - 1)) * 2
    if g.rng.random() < 0.2:
        factor.flat[0] = g.parameter(1.0)
    op = g.rng.choice(["Mul", "Div", "Add", "Sub"])
    g.add(op, [g.current, g.constant(factor.astype(np.float32))])


def _conv(g: _Graph) -> None:
    if len(g.shape) != 3:
        return _elementwise(g)
    channels = int(g.rng.integers(1, 4))
    weight = g.rng.standard_normal((channels, g.shape[0], 2, 2)).astype(np.float32)
    pad = int(g.rng.integers(0, 2))
    g.add(
        "Conv",
        [g.current, g.constant(weight)],
        (channels, g.shape[1] + 2 * pad - 1, g.shape[2] + 2 * pad - 1),
        pads=[pad] * 4,
    )


def _pool(g: _Graph) -> None:
    if len(g.shape) != 3 or min(g.shape[1:]) < 2:
        return _elementwise(g)
    op = g.rng.choice(["MaxPool", "AveragePool", "LpPool"])
    attributes = {"kernel_shape": [2, 2], "strides": [1, 1]}
    if op == "AveragePool":
        attributes |= {"pads": [1, 1, 0, 0], "count_include_pad": int(g.rng.integers(0, 2))}
    out = (
        (g.shape[0], g.shape[1], g.shape[2])
        if op == "AveragePool"
        else (g.shape[0], g.shape[1] - 1, g.shape[2] - 1)
    )
    g.add(op, [g.current], out, **attributes)


def _reduce(g: _Graph) -> None:
    if len(g.shape) < 2:
        return _elementwise(g)
    axes = [int(g.rng.integers(1, len(g.shape) + 1))]
    if g.rng.random() < 0.3:
        axes.append(axes[0] - len(g.shape) - 1)  # the same axis again, counted from the end
    op = g.rng.choice(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "ReduceLogSumExp"])
    keep = [d for i, d in enumerate(g.shape) if i + 1 != axes[0]]
    g.add(op, [g.current, g.constant(np.array(axes))], tuple(keep), keepdims=0)


def _square(g: _Graph) -> None:
    """Squares, then often an op outside the L2-pool rule (a leak)."""
    g.add("Mul", [g.current, g.current])
    if g.rng.random() < 0.5:
        g.add(g.rng.choice(["Relu", "Identity", "Neg"]), [g.current])
    else:
        g.add("Sqrt", [g.current])


def _residual(g: _Graph) -> None:
    """x +- B relu(A x) with B = -2 A^T (an SLL-like block, or its sign-flipped hostile variant)."""
    if len(g.shape) != 1:
        g.add("Flatten", [g.current], (math.prod(g.shape),))
    n = g.shape[0]
    a = g.rng.standard_normal((n + 1, n)).astype(np.float32)
    a /= np.linalg.norm(a, 2)
    x = g.current
    g.add("Gemm", [x, g.constant(a)], (n + 1,), transB=1)
    g.add("Relu", [g.current])
    g.add("Gemm", [g.current, g.constant(-2 * a.T)], (n,), transB=1)
    g.add(g.rng.choice(["Add", "Sub"]), [x, g.current])


def _shape_arithmetic(g: _Graph) -> None:
    """Reshape to (batch size read by Shape, -1), or a factor computed from the batch size."""
    shape = g.name()
    g.nodes.append(helper.make_node("Shape", [g.current], [shape]))
    batch = g.name()
    g.nodes.append(helper.make_node("Gather", [shape, g.constant(np.array([0]))], [batch], axis=0))
    if g.rng.random() < 0.5:
        target = g.name()
        g.nodes.append(helper.make_node("Concat", [batch, g.constant(np.array([-1]))], [target], axis=0))
        g.add("Reshape", [g.current, target], (math.prod(g.shape),))
    else:
        factor = g.name()
        g.nodes.append(helper.make_node("Cast", [batch], [factor], to=TensorProto.FLOAT))
        g.add("Mul", [g.current, factor])


def _batch_constant(g: _Graph) -> None:
    """A constant whose first axis lines up with the batch axis (2 rows)."""
    g.add("Add", [g.current, g.constant(np.ones((2, *g.shape), np.float32))])


def _sort_pairs(g: _Graph) -> None:
    """MaxMin of the two halves of the channels (or of a vector)."""
    if g.shape[0] % 2:
        return _elementwise(g)
    half = (g.shape[0] // 2, *g.shape[1:])
    low, high = g.name(), g.name()
    g.nodes.append(helper.make_node("Split", [g.current], [low, high], axis=1, num_outputs=2))
    top, bottom = g.name(), g.name()
    g.nodes.append(helper.make_node("Max", [low, high], [top]))
    g.nodes.append(helper.make_node("Min", [high, low], [bottom]))
    g.add("Concat", [top, bottom], (g.shape[0], *half[1:]), axis=1)


BUILDERS: list[Callable[[_Graph], None]] = [
    _elementwise,
    _scale,
    _conv,
    _pool,
    _reduce,
    _square,
    _residual,
    _shape_arithmetic,
    _batch_constant,
    _sort_pairs,
]


def random_graph(seed: int) -> onnx.ModelProto:
    """A random graph of 1 to 4 builders on inputs of SHAPE (dynamic batch), opset 18."""
    g = _Graph(np.random.default_rng(seed))
    for _ in range(int(g.rng.integers(1, 5))):
        BUILDERS[int(g.rng.integers(len(BUILDERS)))](g)
    graph = helper.make_graph(
        g.nodes,
        f"fuzz{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info(g.current, TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
            for k, v in g.initializers.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _steepest(
    function: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator, batches: tuple[int, ...] = BATCHES
) -> float:
    """The steepest per-example difference quotient ``function`` shows, at ``batches``:
    random pairs 0.1 and 1 apart, and pairs along the top singular vector of a finite-difference
    Jacobian (the direction a gradient search would find)."""
    size = math.prod(SHAPE)
    best = 0.0

    def quotient(x: np.ndarray, y: np.ndarray) -> float:
        moved = (function(x) - function(y)).reshape(len(x), -1)
        distance = np.linalg.norm((x - y).reshape(len(x), -1), axis=1)
        return float(np.max(np.linalg.norm(moved, axis=1) / distance))

    for batch in batches:
        x = rng.standard_normal((batch, *SHAPE)) * 2
        for scale in (0.1, 1.0):
            best = max(best, quotient(x, x + scale * rng.standard_normal(x.shape)))
        step = 1e-3
        columns = [
            (function(x + step * e) - function(x)).reshape(batch, -1) / step
            for e in np.eye(size).reshape(size, 1, *SHAPE)
        ]
        jacobian = np.stack(columns, axis=-1)[0]  # example 0
        direction = np.linalg.svd(jacobian)[2][0].reshape(SHAPE)
        best = max(best, quotient(x, x + 0.1 * direction[None]))
    return best


def _runs(model: onnx.ModelProto) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...]]:
    """The graph as onnxruntime runs it, and the batch sizes among BATCHES it runs at (none for a
    graph onnxruntime does not accept at all)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # a graph the runtime refuses is not a test of the verifier
        return (lambda x: x), ()
    runs = []
    for batch in BATCHES:
        try:
            session.run(None, {"x": np.zeros((batch, *SHAPE), np.float32)})
            runs.append(batch)
        except Exception:  # this batch size is not one the graph runs at
            pass
    return (lambda x: session.run(None, {"x": x.astype(np.float32)})[0].astype(np.float64)), tuple(runs)


def _check_onnx(seed: int) -> str:
    """'refused', 'bounded' or 'invalid' (onnxruntime does not run it); fails on an unsound bound."""
    model = random_graph(seed)
    function, batches = _runs(model)
    if not batches:
        return "invalid"
    try:
        bound = graph_bound(model).lipschitz_bound
    except VerificationError:
        return "refused"
    with np.errstate(all="ignore"):
        steepest = _steepest(function, np.random.default_rng(seed), batches)
    assert not math.isnan(steepest), f"graph {seed}: NaN outputs were bounded"
    assert steepest <= bound * (1 + 1e-3) + ROUNDING, f"graph {seed}: bound {bound} < quotient {steepest}"
    return "bounded"


def _onnx_counts(seeds: range) -> dict[str, int]:
    counts = {"bounded": 0, "refused": 0, "invalid": 0}
    for seed in seeds:
        counts[_check_onnx(seed)] += 1
    return counts


def test_random_onnx_graphs_are_refused_or_soundly_bounded():
    counts = _onnx_counts(range(150))
    assert counts["bounded"] >= 30 and counts["refused"] >= 30  # the fuzzer reaches both sides


@pytest.mark.slow
def test_thousands_of_random_onnx_graphs_are_refused_or_soundly_bounded():
    counts = _onnx_counts(range(1000, 3000))
    assert counts["bounded"] >= 400 and counts["refused"] >= 400


# --- programs -------------------------------------------------------------------------------------


def _program_pieces() -> list[Callable[[torch.Tensor, np.random.Generator], torch.Tensor]]:
    """Random program steps on (batch, 2, 3, 3) tensors, hostile ones included."""

    def conv(x, rng):
        weight = torch.from_numpy(rng.standard_normal((2, x.shape[1], 3, 3)).astype(np.float32))
        return torch.nn.functional.conv2d(x, weight, padding=1)

    def activation(x, rng):
        return [torch.relu, torch.tanh, torch.sigmoid, torch.abs, torch.atan, torch.nn.functional.softplus][
            int(rng.integers(6))
        ](x)

    def scale(x, rng):
        factor = float(rng.choice([2.0, -0.5, *HOSTILE]))
        return x * factor if rng.random() < 0.5 else x + factor

    def leaky(x, rng):
        return torch.nn.functional.leaky_relu(x, float(rng.choice([0.1, *HOSTILE])))

    def squares(x, rng):
        return (x * x).relu() if rng.random() < 0.5 else (x * x + 1e-6).sqrt()

    def residual(x, rng):
        return x - torch.tanh(x) if rng.random() < 0.5 else x + torch.relu(x)

    def pool(x, rng):
        return torch.nn.functional.avg_pool2d(x, 2, 1, padding=1, count_include_pad=bool(rng.random() < 0.5))

    def maxmin(x, rng):
        low, high = x.chunk(2, dim=1) if x.shape[1] % 2 == 0 else (x, x)
        return torch.cat((torch.maximum(low, high), torch.minimum(low, high)), dim=1)

    def batch_scaled(x, rng):
        return x * x.size(0)

    def batch_view(x, rng):
        return x.view(x.size(0), -1).view(x.shape)

    return [conv, activation, scale, leaky, squares, residual, pool, maxmin, batch_scaled, batch_view]


class _Program(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        pieces = _program_pieces()
        self.steps = [pieces[int(rng.integers(len(pieces)))] for _ in range(int(rng.integers(1, 4)))]
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng(self.seed + 10_000)  # the same constants at every call
        for step in self.steps:
            x = step(x, rng)
        return x


def _check_program(seed: int) -> str:
    module = _Program(seed).eval()
    example = torch.zeros(2, *SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(module, example)
            exported = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("b")},))
        except Exception:  # programs torch itself cannot capture are not tested
            return "invalid"
    results = []
    for name, bound_of, run in (
        ("torchscript", lambda: torchscript_bound(traced, SHAPE), traced),
        ("pt2", lambda: exported_program_bound(exported), exported.module()),
    ):
        try:
            bound = bound_of().lipschitz_bound
        except VerificationError:
            results.append("refused")
            continue

        def function(x: np.ndarray, run=run) -> np.ndarray:
            with torch.no_grad():
                return run(torch.from_numpy(x.astype(np.float32))).double().numpy()

        with np.errstate(all="ignore"):
            steepest = _steepest(function, np.random.default_rng(seed))
        assert not math.isnan(steepest), f"program {seed} ({name}): NaN outputs were bounded"
        assert steepest <= bound * (1 + 1e-3) + ROUNDING, f"program {seed} ({name}): {bound} < {steepest}"
        results.append("bounded")
    return "bounded" if "bounded" in results else "refused"


def test_random_programs_are_refused_or_soundly_bounded():
    counts = {"bounded": 0, "refused": 0, "invalid": 0}
    for seed in range(30):
        counts[_check_program(seed)] += 1
    assert counts["bounded"] >= 6 and counts["refused"] >= 6


@pytest.mark.slow
def test_hundreds_of_random_programs_are_refused_or_soundly_bounded():
    counts = {"bounded": 0, "refused": 0, "invalid": 0}
    for seed in range(1000, 1400):
        counts[_check_program(seed)] += 1
    assert counts["bounded"] >= 80 and counts["refused"] >= 80


def test_zoo_verify_never_prints_a_traceback_on_the_fuzzers_graphs(tmp_path):
    runner = CliRunner()
    for seed in range(20):
        path = tmp_path / f"graph{seed}.onnx"
        path.write_bytes(random_graph(seed).SerializeToString())
        result = runner.invoke(app, ["verify", str(path), "--no-progress"])
        assert result.exit_code in (0, 1), (seed, result.output)
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, (seed, result.stderr)
        if result.exit_code == 1:
            assert result.stderr.strip(), seed  # a refusal says why
