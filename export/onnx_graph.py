"""Sound Lipschitz bound of an ONNX graph, from the graph and its initializers alone.

:func:`graph_bound` drops the nodes no output depends on, spells onnxruntime's fused ops out, fixes
the input shape (a dynamic batch axis is walked at 2, 5 and 1 examples: see there), infers every
tensor's shape with ``onnx.shape_inference``, then walks the nodes in their (topological) order. It
keeps, for every tensor, its value when it is a constant and its :class:`~export.propagation.Signal`
when it depends on the input (see :mod:`export.propagation` for that bookkeeping and why its bounds
are sound):

* a node of constants is evaluated with ``onnx.reference`` when its op is :data:`FOLDABLE`
  (constant folding), and refused otherwise;
* a Shape node gives the example dimensions as constants and the batch size as a marked value
  (:class:`BatchSized`) that may only be moved, and only kept as the batch entry of a target shape;
* an op of :data:`REINDEXING` only moves values: it is evaluated on the index arrays themselves;
* any other op needs a rule in :data:`RULES`, whose docstring's first line says why it is sound;
  an op without one is an :class:`UnsupportedOpError` naming it, never skipped.

Assumptions: the graph has one input-dependent input (initializers are constants, also when listed
as graph inputs), its first axis is the batch axis and its other dimensions are fixed (a bound
depends on the input size); the default-domain opset is >= 11. Not supported, among others: control
flow (If, Loop), random ops, using the batch size as a value, products and quotients of two
input-dependent tensors (not globally Lipschitz), normalisations other than inference-mode
BatchNormalization, ConvTranspose with auto_pad or output_shape.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from export.propagation import (
    GainCache,
    GraphBound,
    Progress,
    Signal,
    SignOfSquares,
    Squares,
    Tracker,
    UnsupportedOpError,
    VerificationError,
)
from zoo.bounds import LinearMap, conv_bound, conv_transpose_bound, kronecker_norm_bound, matrix_norm_bound
from zoo.bounds import elementwise as slopes
from zoo.bounds.elementwise import OutOfDomainError
from zoo.bounds.pooling import (
    Windows,
    average_pool_gain,
    log_softmax_gain,
    lp_pool_gain,
    max_pool_gain,
    reduction_gain,
    softmax_gain,
    window_spread,
)
from zoo.certificate import LayerBound

__all__ = ["MIN_OPSET", "REINDEXING", "RULES", "SCALAR_MAPS", "GraphBound", "graph_bound"]

MIN_OPSET = 11
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class NotLipschitz:
    """An input-dependent output with no Lipschitz bound (e.g. the indices of a TopK): using it is an
    error, and so is returning it."""

    what: str


@dataclass(frozen=True, eq=False)
class BatchSized:
    """An integer tensor read from a Shape node whose entries ``marks`` are the batch size itself:
    ``values`` holds them at the analysed batch size, the other entries are example dimensions
    (constants: the input size is fixed).

    Only ops that move entries may read it (:data:`SHAPE_MOVES`, evaluated on the values and on the
    positions of the marks alike), so a result without marks is a constant whatever the batch size;
    one with marks may only become the leading entry of a Reshape's target shape, where it keeps
    the batch axis (how torch spells ``x.view(x.size(0), -1)``). Computing with the batch size is
    refused: the graph would be another function at another batch size."""

    values: np.ndarray
    marks: np.ndarray
    what = "a value computed from the batch size read by a Shape node"


@dataclass(frozen=True)
class Comparison:
    """The output of ``Greater(s, t)`` for an input-dependent ``s`` and a constant number ``t``: not
    Lipschitz, and read only by the Where rule, which recognises torch's softplus in it."""

    signal: Signal
    threshold: float
    what = "a comparison of input-dependent values"


Value = np.ndarray | Signal | Squares | SignOfSquares | NotLipschitz | BatchSized | Comparison | None

REINDEXING = frozenset(
    {
        "Concat",
        "DepthToSpace",
        "Expand",
        "Flatten",
        "Gather",
        "GatherND",
        "Identity",
        "Pad",
        "Reshape",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
        "Where",
    }
)
"""Ops whose every output value is a copy of an input value or a constant (1-Lipschitz, except for
the copies, which the signal's bound counts). All but Reshape may move the batch axis (see
:class:`~export.propagation.Signal`); every other op must find it first."""


@dataclass
class _Walk:
    """State of one walk: the graph, the inferred shapes, the tracker, and the node being walked
    with its input values."""

    model: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]
    tracker: Tracker
    dtype: np.dtype
    node: onnx.NodeProto | None = None
    inputs: list[Value] | None = None

    @property
    def opset(self) -> int:
        """The graph's default-domain opset."""
        return next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``: inferred for the whole graph, or else (a shape that depends
        on values shape inference does not follow, such as a Reshape's target built from a Shape
        node) by evaluating the current node on zeros of its inputs' shapes."""
        if name not in self.shapes:
            self.shapes.update(self._evaluated_shapes())
        if name not in self.shapes:
            raise VerificationError(f"the shape of tensor {name!r} could not be inferred")
        return self.shapes[name]

    def _evaluated_shapes(self) -> dict[str, tuple[int, ...]]:
        feeds = []
        for value in self.inputs:
            if isinstance(value, Signal | Squares):
                feeds.append(np.zeros(value.shape, self.dtype))
            elif isinstance(value, BatchSized):
                feeds.append(value.values)
            elif value is None or isinstance(value, np.ndarray):
                feeds.append(value)
            else:
                return {}
        outputs = self.evaluate(self.node, feeds)
        return {name: output.shape for name, output in zip(self.node.output, outputs, strict=False) if name}

    def evaluate(
        self, node: onnx.NodeProto, feeds: list[np.ndarray | None], runtime: bool = False
    ) -> list[np.ndarray]:
        """Run ``node`` alone on ``feeds`` (None for an absent input) with ``onnx.reference``, the
        specification's own implementation, or with onnxruntime's CPU kernels when ``runtime``."""
        names = [f"x{i}" if feed is not None else "" for i, feed in enumerate(feeds)]
        single = helper.make_node(
            node.op_type, names, [f"y{i}" for i in range(len(node.output))], domain=node.domain
        )
        single.attribute.extend(node.attribute)
        inputs = [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(feed.dtype), None)
            for name, feed in zip(names, feeds, strict=True)
            if name
        ]
        outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in single.output]
        graph = helper.make_graph([single], "node", inputs, outputs)
        model = helper.make_model(
            graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version
        )
        given = {name: feed for name, feed in zip(names, feeds, strict=True) if name}
        try:
            if runtime:
                session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                results = session.run(None, given)
            else:
                results = ReferenceEvaluator(model).run(None, given)
        except Exception as error:  # the reference implementation raises many kinds
            where = "onnxruntime" if runtime else "onnx.reference"
            raise VerificationError(f"cannot evaluate it with {where}: {error}") from error
        return [np.asarray(result) for result in results]


Rule = Callable[[_Walk, onnx.NodeProto, list[Value]], list[Value]]


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _constant(inputs: list[Value], position: int, what: str) -> np.ndarray | None:
    """Input ``position`` (None when absent), which must be a constant of the graph."""
    value = inputs[position] if position < len(inputs) else None
    if value is not None and not isinstance(value, np.ndarray):
        raise UnsupportedOpError(f"its {what} (input {position}) depends on the graph input")
    return value


def _data(inputs: list[Value], position: int = 0, squares: bool = False) -> Signal | Squares:
    """The input-dependent input ``position`` (a Signal, or Squares for the ops that accept them)."""
    value = inputs[position]
    if isinstance(value, Squares) and not squares:
        raise UnsupportedOpError(
            "it reads squares of input-dependent values: only their pooled square root is bounded"
        )
    if not isinstance(value, Signal | Squares):
        raise UnsupportedOpError(f"only input {position} may depend on the graph input")
    return value


def _floor(inputs: list[Value], squares: Squares, position: int) -> list[Value]:
    """A max of squares with the constant input ``position`` (>= 0): a floor (Squares.floored)."""
    floor = _constant(inputs, position, "floor of squares")
    if floor is None or not np.all(floor >= 0):
        raise UnsupportedOpError("only a floor >= 0 of squares is supported (before their square root)")
    return [squares.with_floor()]


def _axis(axis: int, rank: int) -> int:
    """A non-negative axis, never the batch axis."""
    axis = axis % rank
    if axis == 0:
        raise UnsupportedOpError("it operates along the batch axis")
    return axis


# --- ops that only move values ---------------------------------------------------------------


def _finite_constant(inputs: list[Value], position: int, what: str) -> np.ndarray:
    """A constant input that reaches the output with input-dependent values: NaN or infinite
    entries would make the outputs' differences NaN, which no bound covers."""
    value = _constant(inputs, position, what)
    if value is None:
        raise UnsupportedOpError(f"its {what} (input {position}) is missing")
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        raise UnsupportedOpError(f"its {what} (input {position}) holds NaN or infinite values")
    return value


def _reindex(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Moves values only: evaluated on the index arrays, so exact, copies included. A Reshape may
    take its batch entry from a Shape node (BatchSized), which keeps the batch axis."""
    data_positions = {"Concat": range(len(inputs)), "Where": (1, 2)}.get(node.op_type, (0,))
    reshape = node.op_type == "Reshape"
    feeds, batch_target = [], None
    for position, value in enumerate(inputs):
        if position in data_positions and isinstance(value, Signal):
            feeds.append(value.index)
        elif position in data_positions:
            feeds.append(np.full(_finite_constant(inputs, position, "data").shape, -1, np.int64))
        elif reshape and position == 1 and isinstance(value, BatchSized):
            feeds.append(value.values)
            batch_target = value
        else:
            feeds.append(_constant(inputs, position, "shape, index or condition argument"))
    moved = [value for value in inputs if isinstance(value, Signal)]
    if reshape and any(signal.batch_axis != 0 for signal in moved):
        raise UnsupportedOpError("it reshapes a tensor whose batch axis is not first")
    if batch_target is not None:
        marks = batch_target.marks.ravel()
        if not marks[0] or marks[1:].any():
            raise UnsupportedOpError(
                "its target shape holds the batch size elsewhere than in its first entry"
            )
    elif reshape and walk.tracker.batch > 1:
        first = int(feeds[1][0])
        if not (first == -1 or (first == 0 and not _attributes(node).get("allowzero", 0))):
            raise UnsupportedOpError(f"it reshapes to a fixed batch size ({first})")
    if node.op_type == "Pad":
        if len(inputs) > 2 and inputs[2] is not None:
            _finite_constant(inputs, 2, "padding value")
        if not math.isfinite(_attributes(node).get("value", 0.0)):
            raise UnsupportedOpError("its padding value is NaN or infinite")
        feeds = [*feeds[:2], np.array(-1, np.int64), *feeds[3:]]  # constant entries are marked -1
    return [
        walk.tracker.reindexed(index, moved, batch_moves=not reshape) for index in walk.evaluate(node, feeds)
    ]


def _shape(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Shape reads no value: the example dimensions are constants (the input size is fixed), the
    batch size is marked (BatchSized)."""
    x, attributes = inputs[0], _attributes(node)
    if not isinstance(x, Signal):
        raise UnsupportedOpError("it reads the shape of squares of input-dependent values")
    axes = list(range(x.index.ndim))[attributes.get("start", 0) : attributes.get("end")]
    dims = np.array([x.shape[axis] for axis in axes], dtype=np.int64)
    marks = np.array([axis == x.batch_axis for axis in axes], dtype=bool)
    return [BatchSized(dims, marks) if marks.any() else dims]


SHAPE_MOVES = {
    "Concat": "all",
    "Gather": (0,),
    "Identity": (0,),
    "Slice": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Reshape": (0,),
    "Cast": (0,),
}
"""Ops that may read a BatchSized value, and the inputs where they may (the others must be
constants): they only move entries (Cast: between integer types)."""

_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def _batch_sized(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """An op of :data:`SHAPE_MOVES` on BatchSized values: evaluated on the values, and on the positions
    of their entries (-1 for constants) to carry the marks; the batch size in any other input, or
    in any other op, is refused."""
    data = SHAPE_MOVES.get(node.op_type)
    positions = range(len(inputs)) if data == "all" else (data or ())
    if data is None or any(isinstance(v, BatchSized) and i not in positions for i, v in enumerate(inputs)):
        raise UnsupportedOpError("it computes with the batch size read by a Shape node")
    if node.op_type == "Cast" and _attributes(node).get("to") not in _INTEGER_TYPES:
        raise UnsupportedOpError("it casts the batch size read by a Shape node to a non-integer type")
    values = [
        v.values if isinstance(v, BatchSized) else _constant(inputs, i, "argument")
        for i, v in enumerate(inputs)
    ]
    positions_fed, marks, offset = [], [], 0
    for i, value in enumerate(inputs):
        if isinstance(value, BatchSized):
            positions_fed.append(np.arange(offset, offset + value.values.size).reshape(value.values.shape))
            marks.append(value.marks.ravel())
            offset += value.values.size
        elif i in positions and value is not None:
            positions_fed.append(np.full(value.shape, -1, np.int64))
        else:
            positions_fed.append(value)
    cast = node.op_type == "Cast"  # moves nothing
    moved_positions = [positions_fed[0]] if cast else walk.evaluate(node, positions_fed)
    marked = np.concatenate(marks)
    results = []
    for result, moved in zip(walk.evaluate(node, values), moved_positions, strict=True):
        out_marks = np.zeros(moved.shape, dtype=bool)
        out_marks[moved >= 0] = marked[moved[moved >= 0]]
        results.append(BatchSized(result, out_marks) if out_marks.any() else result)
    return results


def _where(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Where with a constant condition moves values (_reindex); with ``Greater(b x, t)`` choosing
    between ``x`` and ``softplus(b x) / b`` it is torch's softplus (Tracker.thresholded_softplus).
    Any other input-dependent choice can jump, which no Lipschitz bound allows."""
    condition, above, below = inputs
    if isinstance(condition, np.ndarray):
        return _reindex(walk, node, inputs)
    _require_batch_first(inputs, "it reads")
    if isinstance(condition, Comparison) and isinstance(above, Signal) and isinstance(below, Signal):
        softplus = walk.tracker.thresholded_softplus(condition.signal, condition.threshold, above, below)
        if softplus is not None:
            return [softplus]
    raise UnsupportedOpError("its choice depends on the graph input (only torch's softplus is recognised)")


def _sign(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Sign jumps at 0: it is read only of squares, and only to multiply those squares (SignOfSquares)."""
    x = _data(inputs, squares=True)
    if isinstance(x, Signal):
        raise UnsupportedOpError("Sign of an input-dependent tensor is not continuous")
    return [SignOfSquares(x)]


def _compare(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """A comparison of an input-dependent tensor is not Lipschitz: only Where may read ``Greater(s,
    t)`` for one constant number ``t`` (see _where)."""
    s, t = inputs
    if node.op_type == "Greater" and isinstance(s, Signal) and isinstance(t, np.ndarray) and t.size == 1:
        return [Comparison(s, float(t.astype(np.float64).ravel()[0]))]
    return [
        NotLipschitz(
            f"the output of {node.op_type} node {node.name!r}, a comparison of input-dependent values"
        )
    ]


# --- elementwise ops ----------------------------------------------------------------------------


def _fixed(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda attributes: slopes.FIXED_SLOPES[name]


SCALAR_MAPS: dict[str, Callable[[dict[str, Any]], float]] = {
    "Relu": _fixed("relu"),
    "Abs": _fixed("abs"),
    "Neg": _fixed("neg"),
    "Tanh": _fixed("tanh"),
    "Atan": _fixed("atan"),
    "Sin": _fixed("sin"),
    "Cos": _fixed("cos"),
    "Sigmoid": _fixed("sigmoid"),
    "HardSwish": _fixed("hardswish"),
    "Gelu": _fixed("gelu"),  # both approximations
    "Mish": _fixed("mish"),
    "Erf": _fixed("erf"),
    "Clip": lambda attributes: 1.0,  # its bounds are inputs: checked by _elementwise (slopes.clamp)
    "Softsign": lambda attributes: slopes.softsign(),
    "Softplus": lambda attributes: slopes.softplus(),
    "LeakyRelu": lambda attributes: slopes.leaky_relu(attributes.get("alpha", 0.01)),
    "Celu": lambda attributes: slopes.celu(attributes.get("alpha", 1.0)),
    "Elu": lambda attributes: slopes.elu(attributes.get("alpha", 1.0)),
    # ONNX's default SELU constants are the float32 roundings of torch's
    "Selu": lambda attributes: slopes.elu(
        attributes.get("alpha", float(np.float32(slopes.SELU_ALPHA))),
        scale=attributes.get("gamma", float(np.float32(slopes.SELU_SCALE))),
    ),
    "HardSigmoid": lambda attributes: slopes.hard_sigmoid(
        attributes.get("alpha", 0.2), attributes.get("beta", 0.5)
    ),
}
"""Scalar maps: op type -> its Lipschitz constant (:mod:`zoo.bounds.elementwise`) from the node's
attributes."""


_RECORDED_MAPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Abs": "abs", "Softplus": "softplus"}
"""Scalar maps that composite rules look for (Tracker.mapped)."""


def _elementwise(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Each output value is a scalar function of one input value, whose Lipschitz constant
    SCALAR_MAPS gives (zoo.bounds.elementwise)."""
    x = _data(inputs, squares=node.op_type in ("Clip", "Abs", "Relu"))
    if isinstance(x, Squares) and node.op_type != "Clip":
        return [x]  # squares are >= 0: Abs and Relu leave them as they are
    if isinstance(x, Squares):
        if _constant(inputs, 2, "bound") is not None:
            raise UnsupportedOpError("only a floor (no ceiling) of squares is supported")
        return _floor(inputs, x, 1)
    if node.op_type in _RECORDED_MAPS:
        factor = SCALAR_MAPS[node.op_type](_attributes(node))
        return [walk.tracker.mapped(x, _RECORDED_MAPS[node.op_type], factor)]
    bounds = [_constant(inputs, position, "bound") for position in range(1, len(inputs))]
    if node.op_type == "Clip":
        slopes.clamp(*bounds, *[None] * (2 - len(bounds)))
    alike = all(bound is None or bound.size == 1 for bound in bounds)
    return [walk.tracker.elementwise(x, SCALAR_MAPS[node.op_type](_attributes(node)), alike)]


def _power(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Pow by 2 makes squares (Squares); Sqrt, or Pow by 0.5, of squares pooled by nonnegative
    weights is bounded by their spread (Tracker.root). Other powers are not globally Lipschitz."""
    x = _data(inputs, squares=True)
    exponent = 0.5 if node.op_type == "Sqrt" else _constant(inputs, 1, "exponent")
    if isinstance(x, Signal) and np.size(exponent) == 1 and float(exponent) == 2:
        return [walk.tracker.squares(x)]
    if isinstance(x, Squares) and np.size(exponent) == 1 and float(exponent) == 0.5:
        return [walk.tracker.root(x)]
    raise UnsupportedOpError(
        "only the square of an input-dependent tensor, and the square root of its pooled squares, are bounded"
    )


def _prelu(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """PRelu: each output value is x or a x for its constant slope a, max(1, max |a|)-Lipschitz."""
    x, slope = _data(inputs), _constant(inputs, 1, "slope")
    return [walk.tracker.elementwise(x, slopes.prelu(slope), alike=slope.size == 1)]


def _batch_normalization(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Inference-mode BatchNormalization is y = x * scale / sqrt(var + eps) + shift per channel: an
    elementwise map with Lipschitz constant max |scale / sqrt(var + eps)|."""
    attributes = _attributes(node)
    if attributes.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise UnsupportedOpError("only inference mode (training_mode=0, one output) is supported")
    scale, _, _, variance = (_constant(inputs, i, "statistics") for i in range(1, 5))
    factor = slopes.batch_norm(scale, variance, attributes.get("epsilon", 1e-5))
    return [walk.tracker.elementwise(_data(inputs), factor, alike=False)]


def _sum(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Add / Sub / Sum: adding or subtracting a constant is 1-Lipschitz; input-dependent terms are
    bounded by the triangle inequality or Cauchy-Schwarz (Tracker.summed); x - mean(x) is a
    projection (Tracker.centered)."""
    shape = walk.shape(node.output[0])
    if node.op_type == "Sub" and all(isinstance(value, Signal) for value in inputs):
        centered = walk.tracker.centered(*inputs, shape)
        if centered is not None:
            return [centered]
    signs = [1.0, -1.0] if node.op_type == "Sub" else [1.0] * len(inputs)
    terms = [
        (walk.tracker.broadcast(v, shape), sign)
        for v, sign in zip(inputs, signs, strict=True)
        if isinstance(v, Signal)
    ]
    if len(terms) > 1:
        return [walk.tracker.summed(*zip(*terms, strict=True))]
    ((term, sign),) = terms
    constants = [
        sign * v.astype(np.float64)
        for v, sign in zip(inputs, signs, strict=True)
        if isinstance(v, np.ndarray)
    ]
    return [walk.tracker.shifted(term, sum(constants), negated=sign < 0)]


def _product(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Mul / Div by a constant c: value k is multiplied by c_k, so the map is max |c|-Lipschitz
    (exact for a scalar c); x * Sigmoid(x) is SiLU (Tracker.product), x / (c + |x|) softsign
    (Tracker.quotient); any other product of two input-dependent tensors is not globally Lipschitz."""
    a, b = inputs
    if node.op_type == "Mul" and isinstance(a, Signal) and a is b:
        return [walk.tracker.squares(a)]
    for sign, other in ((a, b), (b, a)):
        if isinstance(sign, SignOfSquares):
            if node.op_type == "Mul" and other is sign.squares:
                return [other]  # sign(v) * v = v for squares v >= 0
            raise UnsupportedOpError("it uses the sign of squares other than to multiply those squares")
    if isinstance(a, Squares) or isinstance(b, Squares):
        return _scaled_squares(walk, node, inputs)
    if isinstance(a, Signal) and isinstance(b, Signal):
        known = walk.tracker.product(a, b) if node.op_type == "Mul" else walk.tracker.quotient(a, b)
        if known is None:
            raise UnsupportedOpError(
                f"a {'product' if node.op_type == 'Mul' else 'quotient'} of two input-dependent tensors "
                "is not globally Lipschitz"
            )
        return [known]
    if node.op_type == "Div" and isinstance(b, Signal):
        raise UnsupportedOpError("a division by an input-dependent tensor is not Lipschitz")
    data, constant = (a, b) if isinstance(a, Signal) else (b, a)
    factors = constant.astype(np.float64)
    if node.op_type == "Div":
        if np.any(factors == 0):
            raise UnsupportedOpError("it divides by zero")
        factors = 1.0 / factors
    shape = walk.shape(node.output[0])
    return [walk.tracker.scaled(walk.tracker.broadcast(data, shape), factors, shape)]


def _scaled_squares(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Squares times (or divided by) constants c >= 0: a nonnegative map with column sums max c."""
    position = 0 if isinstance(inputs[0], Squares) else 1
    if node.op_type == "Div" and position == 1:
        raise UnsupportedOpError("a division by squares of input-dependent values is not Lipschitz")
    factors = _constant(inputs, 1 - position, "factor").astype(np.float64)
    if not np.all(factors > 0 if node.op_type == "Div" else factors >= 0):
        raise UnsupportedOpError("squares may only be scaled by constants >= 0")
    spread = float(np.max(1 / factors if node.op_type == "Div" else factors, initial=0.0))
    return [inputs[position].combined(spread, walk.shape(node.output[0]))]


def _extremum(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Max / Min of m input-dependent operands is the top / bottom rank of each sorted group of m
    values (Tracker.sorted_group: a sort is 1-Lipschitz); a constant operand only clamps (1-Lipschitz)."""
    squares = [i for i, value in enumerate(inputs) if isinstance(value, Squares)]
    if squares and node.op_type == "Max" and len(inputs) == 2:
        return _floor(inputs, inputs[squares[0]], 1 - squares[0])
    if squares:
        raise UnsupportedOpError("only a Max of squares with a constant floor is supported")
    shape = walk.shape(node.output[0])
    operands = [walk.tracker.broadcast(value, shape) for value in inputs if isinstance(value, Signal)]
    if len(operands) == 1:
        scalar = all(value.size == 1 for value in inputs if isinstance(value, np.ndarray))
        return [walk.tracker.elementwise(operands[0], 1.0, alike=scalar)]
    ranks = walk.tracker.sorted_group(operands)
    return [ranks[-1] if node.op_type == "Max" else ranks[0]]


def _top_k(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """TopK values are the k largest (or smallest) values of each line, sorted: a sort is 1-Lipschitz
    and so is keeping some of its values. The indices are not a Lipschitz function of the input."""
    x, k = _data(inputs), _constant(inputs, 1, "k")
    axis = _axis(_attributes(node).get("axis", -1), x.index.ndim)
    shape = list(x.shape)
    shape[axis] = int(np.asarray(k).reshape(-1)[0])  # k may be computed in the graph: not inferred
    values = walk.tracker.transformed(x, 1.0, shape)
    return [values, NotLipschitz(f"the indices output of TopK node {node.name!r}")]


# --- linear ops -----------------------------------------------------------------------------------


def _pads(attributes: dict[str, Any], spatial: tuple[int, ...], kernel: list[int]) -> list[tuple[int, int]]:
    """(begin, end) zero padding per spatial axis of a Conv / pooling node, auto_pad resolved."""
    rank = len(spatial)
    strides = attributes.get("strides", [1] * rank)
    dilations = attributes.get("dilations", [1] * rank)
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = attributes.get("pads", [0] * 2 * rank)
        return list(zip(pads[:rank], pads[rank:], strict=True))
    if auto_pad == "VALID":
        return [(0, 0)] * rank
    amounts = []
    for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
        small, large = total // 2, total - total // 2
        amounts.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
    return amounts


def _zero_padded(
    spatial: tuple[int, ...], pads: list[tuple[int, int]]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input_size, padding) to give conv_bound: torch pads symmetrically; asymmetric zero padding
    is an isometric embedding into the padded size, so the unpadded convolution on that size bounds it."""
    if all(begin == end for begin, end in pads):
        return spatial, tuple(begin for begin, _ in pads)
    return tuple(n + begin + end for n, (begin, end) in zip(spatial, pads, strict=True)), (0,) * len(pads)


def _spatial(x: Signal) -> tuple[int, ...]:
    spatial = x.shape[2:]
    if len(spatial) not in (1, 2, 3):
        raise UnsupportedOpError(f"{len(spatial)} spatial dimensions (the bound engine handles 1 to 3)")
    return spatial


def _conv(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Conv is linear with operator norm at most conv_bound (bias excluded); when its input is a
    padding of another tensor (a Pad node, or Slice + Concat), both are bounded as one convolution
    with that padding mode (Tracker.padding_of), since a reflect or wrap pad alone copies pixels."""
    x, weight = _data(inputs), _constant(inputs, 1, "weight")
    _constant(inputs, 2, "bias")
    attributes = _attributes(node)
    spatial = _spatial(x)
    kernel = list(weight.shape[2:])
    pads = _pads(attributes, spatial, kernel)
    padded = None if any(begin or end for begin, end in pads) else walk.tracker.padding_of(x, kernel)
    if padded is None:
        source, mode = x, "zeros"
        input_size, padding = _zero_padded(spatial, pads)
    else:
        source, padding, mode = padded
        input_size = source.shape[2:]
    stride = tuple(attributes.get("strides", [1] * len(spatial)))
    dilation = tuple(attributes.get("dilations", [1] * len(spatial)))
    groups = attributes.get("group", 1)
    weight = torch.tensor(weight)
    gain = walk.tracker.gain(
        conv_bound,
        weight,
        input_size=input_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
    )
    plain = source is x and input_size == spatial  # zero padding, in the Conv itself and symmetric
    layer = LinearMap(weight, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return [walk.tracker.linear(source, gain, walk.shape(node.output[0]), layer if plain else None)]


def _conv_transpose(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """ConvTranspose is the adjoint of a convolution on its output size (conv_transpose_bound, bias
    excluded). Asymmetric pads crop the output of the unpadded transposed convolution, and
    cropping does not increase a norm, so that one is bounded then."""
    x, weight = _data(inputs), torch.tensor(_constant(inputs, 1, "weight"))
    _constant(inputs, 2, "bias")
    attributes = _attributes(node)
    if attributes.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in attributes:
        raise UnsupportedOpError("auto_pad and output_shape are not supported: export with explicit pads")
    spatial = _spatial(x)
    rank = len(spatial)
    pads = _pads(attributes, spatial, list(weight.shape[2:]))
    symmetric = all(begin == end for begin, end in pads)
    layer = LinearMap(
        weight,
        transposed=True,
        stride=tuple(attributes.get("strides", [1] * rank)),
        padding=tuple(begin for begin, _ in pads) if symmetric else (0,) * rank,
        dilation=tuple(attributes.get("dilations", [1] * rank)),
        output_padding=tuple(attributes.get("output_padding", [0] * rank)) if symmetric else (0,) * rank,
        groups=attributes.get("group", 1),
    )
    gain = walk.tracker.gain(
        conv_transpose_bound,
        weight,
        input_size=spatial,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        output_padding=layer.output_padding,
        groups=layer.groups,
    )
    return [walk.tracker.linear(x, gain, walk.shape(node.output[0]), layer if symmetric else None)]


def _matrix_gain(walk: _Walk, matrix: np.ndarray) -> float:
    """matrix_norm_bound of a (out, in) matrix, the orientation of torch's Linear weight."""
    return walk.tracker.gain(matrix_norm_bound, torch.tensor(matrix))


def _gemm(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Gemm with the data as A (one row per example) and constant B, C: x -> alpha x op(B) + beta C
    has norm |alpha| ||B||."""
    x, weight = _data(inputs), _constant(inputs, 1, "weight")
    _constant(inputs, 2, "bias")
    attributes = _attributes(node)
    if attributes.get("transA", 0):
        raise UnsupportedOpError("transA=1 would contract the batch axis")
    matrix = attributes.get("alpha", 1.0) * (weight if attributes.get("transB", 0) else weight.T)
    layer = LinearMap(torch.tensor(matrix))
    return [walk.tracker.linear(x, _matrix_gain(walk, matrix), walk.shape(node.output[0]), layer)]


def _matmul(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """MatMul with one constant 1-D or 2-D operand W: x @ W maps every row of x, W @ x every column,
    by the same matrix, so the norm is ||W||."""
    a, b = inputs
    if isinstance(a, Signal) == isinstance(b, Signal):
        raise UnsupportedOpError("exactly one operand must be a constant (x @ y is not Lipschitz)")
    weight = b if isinstance(a, Signal) else a
    if weight.ndim > 2:
        raise UnsupportedOpError("a batched constant operand is not supported")
    if isinstance(a, Signal):
        x, matrix = a, (weight[:, None] if weight.ndim == 1 else weight).T
    else:
        x, matrix = b, (weight[None, :] if weight.ndim == 1 else weight)
        if x.index.ndim < 3:
            raise UnsupportedOpError("W @ x on a 2-D x would contract the batch axis")
    rows = isinstance(a, Signal) and weight.ndim == 2 and x.index.ndim == 2  # x @ W, one row per example
    layer = LinearMap(torch.tensor(matrix)) if rows else None
    return [walk.tracker.linear(x, _matrix_gain(walk, matrix), walk.shape(node.output[0]), layer)]


def _windows(
    attributes: dict[str, Any], spatial: tuple[int, ...], out_size: tuple[int, ...]
) -> tuple[Windows, list[tuple[int, int]]]:
    """The windows of a pooling node, and (begin, end) pads per spatial axis."""
    kernel = attributes["kernel_shape"]
    strides = attributes.get("strides", [1] * len(spatial))
    dilations = attributes.get("dilations", [1] * len(spatial))
    pads = _pads(attributes, spatial, kernel)
    return Windows(spatial, out_size, kernel, strides, dilations, [begin for begin, _ in pads]), pads


def _average_pool(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """AveragePool is linear: average_pool_gain (a depthwise convolution with the constant kernel 1 /
    prod(kernel) when the padding counts, else the Kronecker product of per-axis averaging matrices);
    of squares, a nonnegative map with column sums window_spread."""
    x, attributes = _data(inputs, squares=True), _attributes(node)
    out_shape = walk.shape(node.output[0])
    windows, pads = _windows(attributes, _spatial(x), out_shape[2:])
    include_pad = bool(attributes.get("count_include_pad", 0))
    floor_size = tuple(
        (n + b + e - (k - 1) * d - 1) // s + 1
        for (n, _, k, s, d, _), (b, e) in zip(windows.axes(), pads, strict=True)
    )
    if out_shape[2:] != floor_size:
        raise UnsupportedOpError("ceil_mode=1 adds partial windows")
    if isinstance(x, Squares):
        return [x.combined(window_spread(windows, include_pad), out_shape)]
    if include_pad and any(begin != end for begin, end in pads):
        # asymmetric zero padding: the pool of the padded input, with no padding of its own
        size, _ = _zero_padded(windows.size, pads)
        windows = dataclasses.replace(windows, size=size, pad=(0,) * len(size))
    gain = walk.tracker.gain(average_pool_gain, windows, include_pad)
    return [walk.tracker.transformed(x, gain, out_shape)]


def _window_pool(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """MaxPool / LpPool: max_pool_gain / lp_pool_gain (each output moves by at most the norm of its
    window's change). MaxPool's indices are not Lipschitz."""
    x, attributes = _data(inputs), _attributes(node)
    out_shape = walk.shape(node.output[0])
    windows, _ = _windows(attributes, x.shape[2:], out_shape[2:])
    if node.op_type == "LpPool":
        gain = lp_pool_gain(attributes.get("p", 2), windows)
    else:
        gain = max_pool_gain(windows)
    outputs: list[Value] = [walk.tracker.transformed(x, gain, out_shape)]
    if len(node.output) > 1:
        outputs.append(NotLipschitz(f"the indices output of MaxPool node {node.name!r}"))
    return outputs


_GROUP_RANKS = {"ReduceMax": -1, "GlobalMaxPool": -1, "ReduceMin": 0}
"""Reductions that keep one rank of each sorted group (Tracker.group_rank)."""

_GROUP_GAINS: dict[str, Callable[[int, dict[str, Any]], float]] = {
    "ReduceLogSumExp": lambda n, attributes: reduction_gain("logsumexp", n),
    "ReduceL2": lambda n, attributes: reduction_gain("norm", n, 2),
    "ReduceL1": lambda n, attributes: reduction_gain("norm", n, 1),
    "GlobalLpPool": lambda n, attributes: reduction_gain("norm", n, attributes.get("p", 2)),
}
"""Reductions of each group of ``n`` values to one: (n, attributes) -> reduction_gain."""


_SQUARES_SPREADS: dict[str, Callable[[int], float]] = {
    "ReduceMean": lambda n: 1 / n,
    "GlobalAveragePool": lambda n: 1 / n,
    "ReduceSum": lambda n: 1.0,
}


def _reduce(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Reductions over axes (never the batch axis) combine disjoint groups of n values: sums and
    means are bounded by Tracker.reduced (copies included), the others by reduction_gain
    (``_GROUP_GAINS``); a sum / mean of squares is a nonnegative map with column sums 1 / (1 / n)."""
    x, attributes = _data(inputs, squares=node.op_type in _SQUARES_SPREADS), _attributes(node)
    rank = len(x.shape)
    if node.op_type.startswith("Global"):
        axes = list(range(2, rank))
    else:
        given = _constant(inputs, 1, "axes") if len(inputs) > 1 else None
        axes = list(given) if given is not None else attributes.get("axes", [])
        if not axes and attributes.get("noop_with_empty_axes", 0):
            return [x]
        axes = [_axis(int(a), rank) for a in axes] if axes else list(range(rank))
    if 0 in axes:
        raise UnsupportedOpError("it reduces over the batch axis")
    count = math.prod(x.shape[a] for a in axes)
    if isinstance(x, Squares):
        return [x.combined(_SQUARES_SPREADS[node.op_type](count), walk.shape(node.output[0]))]
    shape = walk.shape(node.output[0])
    if node.op_type in _GROUP_RANKS:
        return [walk.tracker.group_rank(x, axes, shape, _GROUP_RANKS[node.op_type])]
    if node.op_type in _GROUP_GAINS:
        return [walk.tracker.transformed(x, _GROUP_GAINS[node.op_type](count, attributes), shape)]
    return [walk.tracker.reduced(x, axes, shape, mean=node.op_type != "ReduceSum")]


def _softmax(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Softmax / LogSoftmax of each group along ``axis`` (from opset 13), or along all the axes from
    ``axis`` on (before, as a 2-D input): softmax_gain / log_softmax_gain of the group size."""
    x, attributes = _data(inputs), _attributes(node)
    rank = len(x.shape)
    if walk.opset >= 13:
        axes = [_axis(attributes.get("axis", -1), rank)]
    else:
        axes = list(range(_axis(attributes.get("axis", 1), rank), rank))
    count = math.prod(x.shape[a] for a in axes)
    gain = softmax_gain() if node.op_type == "Softmax" else log_softmax_gain(count)
    return [walk.tracker.transformed(x, gain, x.shape)]


def _resize(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Resize (nearest, linear, cubic) interpolates along each spatial axis alone: on each channel
    it is the Kronecker product of one matrix per axis, whose norm is the product of theirs
    (kronecker_norm_bound). Each matrix is the node's own response to one-hot inputs along its axis,
    evaluated with the node's attributes by onnx.reference and by onnxruntime (the larger bound)."""
    x, attributes = _data(inputs), _attributes(node)
    if attributes.get("coordinate_transformation_mode") == "tf_crop_and_resize" or "axes" in attributes:
        raise UnsupportedOpError("tf_crop_and_resize and the axes attribute are not supported")
    if attributes.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError("only keep_aspect_ratio_policy='stretch' is supported")
    roi, scales, sizes = (_constant(inputs, i, what) for i, what in ((1, "roi"), (2, "scales"), (3, "sizes")))
    out_shape = walk.shape(node.output[0])
    if scales is not None and scales.size:
        resized = [axis for axis, scale in enumerate(scales) if scale != 1]
    else:
        resized = [axis for axis, (n, size) in enumerate(zip(x.shape, sizes, strict=True)) if n != size]
    if any(axis < 2 for axis in resized):
        raise UnsupportedOpError("it resizes the batch or the channel axis")
    empty = np.array([], np.float32)
    factors: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for axis in range(2, len(x.shape)):
        n = x.shape[axis]
        basis = np.eye(n, dtype=np.float32).reshape(
            n, *[n if a == axis else 1 for a in range(1, len(x.shape))]
        )
        # the basis along this axis only: scale 1 (size 1) on the others, which is the identity
        feeds: list[np.ndarray | None] = [basis, empty if roi is None else roi]
        if scales is not None and scales.size:
            feeds.append(np.array([scales[a] if a == axis else 1.0 for a in range(len(x.shape))], np.float32))
        else:
            sizes_along = [n if a == 0 else (out_shape[a] if a == axis else 1) for a in range(len(x.shape))]
            feeds += [empty if walk.opset < 13 else None, np.array(sizes_along, np.int64)]
        for runtime in factors:
            (response,) = walk.evaluate(node, feeds, runtime=runtime)
            if response.shape[axis] != out_shape[axis]:
                raise UnsupportedOpError(f"its response along axis {axis} does not have the output's size")
            factors[runtime].append(response.reshape(n, -1).T)
    # onnx.reference and onnxruntime disagree on some resizes (align_corners with a fractional
    # scale): the larger norm bounds both
    gain = max(walk.tracker.gain(kronecker_norm_bound, responses) for responses in factors.values())
    return [walk.tracker.transformed(x, gain, out_shape)]


def _dropout(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Dropout in inference mode (no training_mode input, or a constant false one) is the identity;
    in training mode it is random."""
    training = _constant(inputs, 2, "training_mode")
    if training is not None and bool(np.asarray(training)):
        raise UnsupportedOpError("training-mode dropout is random")
    return [_data(inputs), NotLipschitz(f"the mask output of Dropout node {node.name!r}")]


SQUARES_OPS = frozenset(
    {"AveragePool", "ReduceSum", "ReduceMean", "GlobalAveragePool", "Mul", "Div", "Clip", "Max"}
    | {"Pow", "Sqrt", "Abs", "Relu", "Sign"}
)
"""Ops whose rules accept squares (Squares): pooling and scaling them, a floor, their root, and the
identities of nonnegative values (Abs, Relu, sign(v) * v)."""

RULES: dict[str, Rule] = {
    **dict.fromkeys(REINDEXING, _reindex),
    **dict.fromkeys(SCALAR_MAPS, _elementwise),
    "BatchNormalization": _batch_normalization,
    "PRelu": _prelu,
    **dict.fromkeys(("Add", "Sub", "Sum"), _sum),
    **dict.fromkeys(("Mul", "Div"), _product),
    **dict.fromkeys(("Max", "Min"), _extremum),
    "TopK": _top_k,
    "Where": _where,
    "Sign": _sign,
    **dict.fromkeys(("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"), _compare),
    "Shape": _shape,
    **dict.fromkeys(("Pow", "Sqrt"), _power),
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "AveragePool": _average_pool,
    **dict.fromkeys(("MaxPool", "LpPool"), _window_pool),
    **dict.fromkeys((*_SQUARES_SPREADS, *_GROUP_GAINS, *_GROUP_RANKS), _reduce),
    **dict.fromkeys(("Softmax", "LogSoftmax"), _softmax),
    "Resize": _resize,
    "Dropout": _dropout,
    "Size": lambda walk, node, inputs: [
        NotLipschitz("the number of entries, which grows with the batch size")
    ],
}
"""ONNX op type (default domain) -> rule computing the values of the node's outputs."""


# --- the walk -----------------------------------------------------------------------------------


FOLDABLE = frozenset(
    {"Identity", "Constant", "ConstantOfShape", "Shape", "Size", "Reshape", "Flatten", "Squeeze"}
    | {"Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND"}
    | {"Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "Range", "Cast", "CastLike", "Where"}
    | {"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal", "Min", "Max", "Clip", "Relu"}
    | {"Floor", "Ceil", "Round", "Sign", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"}
    | {"Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin"}
)
"""Ops whose nodes of constants are evaluated (with ``onnx.reference``) into constants: they move
values, compare them, or compute correctly rounded IEEE arithmetic, so every conforming runtime gets
the same bits. Float ops whose rounding is the runtime's own (Exp, Pow, MatMul, sums...) are folded
on integer inputs only (:data:`FOLDABLE_ON_INTEGERS`); random ops and control flow never."""

FOLDABLE_ON_INTEGERS = frozenset({"Pow", "Mod", "ReduceSum", "ReduceProd", "CumSum", "MatMul"})


def _fold(walk: _Walk, node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> list[Value]:
    """The outputs of a node of constants (:data:`FOLDABLE`), or a refusal: a value the verifier
    cannot prove to be what every runtime computes is not a constant it may use."""
    default_domain = node.domain in ("", "ai.onnx")
    integers = all(value is None or value.dtype.kind in "biu" for value in inputs)
    if not default_domain or not (
        node.op_type in FOLDABLE or (node.op_type in FOLDABLE_ON_INTEGERS and integers)
    ):
        domain = "" if default_domain else f"{node.domain}::"
        raise UnsupportedOpError(
            f"its constant inputs would be computed by {domain}{node.op_type}, whose result the verifier "
            "cannot prove to be the runtime's (random, control flow, or float rounding that runtimes "
            "choose): fold the constants before exporting"
        )
    return walk.evaluate(node, inputs)


def _live_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes an output of the graph depends on, in their order: the others compute nothing the
    graph returns (a runtime may skip them), so they are not bounded."""
    needed = {output.name for output in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(filter(None, node.input))
    return live[::-1]


_FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
"""onnxruntime's fused ops (domain com.microsoft) -> the op they apply before their activation."""


def _unfused(node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """An onnxruntime FusedConv / FusedGemm node as the standard nodes it computes: ``activation(Conv(X,
    W, B))`` (or Gemm), with the activation's parameters from ``activation_params`` (FusedConv) or
    ``activation_alpha`` / ``activation_beta`` (FusedGemm); constants it needs as initializers."""
    attributes = _attributes(node)
    if len([i for i in node.input if i]) > 3:
        raise UnsupportedOpError(f"{node.op_type} node {node.name!r}: a fused sum input (Z) is not supported")
    params = list(attributes.get("activation_params", []))
    params = params or [attributes[k] for k in ("activation_alpha", "activation_beta") if k in attributes]
    linear_attributes = [a for a in node.attribute if not a.name.startswith("activation")]
    activation = attributes.get("activation")
    hidden = f"{node.output[0]}__before_{activation or 'identity'}"
    linear = helper.make_node(
        _FUSED[node.op_type], node.input, [hidden] if activation else node.output, name=node.name
    )
    linear.attribute.extend(linear_attributes)
    if activation is None:
        return [linear], []
    names = {"Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta")}
    if activation == "Clip":
        bounds = [
            numpy_helper.from_array(np.float32(v), f"{node.output[0]}__clip_{i}")
            for i, v in enumerate(params)
        ]
        clip = helper.make_node(
            "Clip", [hidden, *(b.name for b in bounds)], node.output, name=f"{node.name}/Clip"
        )
        return [linear, clip], bounds
    if activation not in names:
        raise UnsupportedOpError(
            f"{node.op_type} node {node.name!r}: unsupported fused activation {activation}"
        )
    keyword = dict(zip(names[activation], params, strict=False))
    return [
        linear,
        helper.make_node(activation, [hidden], node.output, name=f"{node.name}/{activation}", **keyword),
    ], []


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its local functions inlined, onnxruntime's fused ops spelled out and the nodes no
    output depends on removed; refused when its opset is too old, it has control flow (subgraphs) or
    ops of another domain."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise UnsupportedOpError(
            f"default-domain opset {opset} is not supported: convert the model to opset {MIN_OPSET} "
            "or later (onnx.version_converter)"
        )
    model = onnx.inliner.inline_local_functions(model) if model.functions else model
    nodes, initializers = [], []
    for node in _live_nodes(model.graph):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: control flow (subgraphs) is not supported: export the "
                "model without data-dependent branches or loops"
            )
        if node.domain == "com.microsoft" and node.op_type in _FUSED:
            unfused, constants = _unfused(node)
            nodes.extend(unfused)
            initializers.extend(constants)
        elif node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: unsupported op {node.domain}::{node.op_type}"
            )
        else:
            nodes.append(node)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    del prepared.graph.node[:]
    prepared.graph.node.extend(nodes)
    prepared.graph.initializer.extend(initializers)
    return prepared


BATCH_SIZES = (2, 5, 1)
"""The batch sizes a graph with a dynamic batch axis is analysed at (see :func:`graph_bound`)."""


def _input(
    graph: onnx.GraphProto, constants: dict[str, np.ndarray]
) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """Name, analysed batch sizes and example shape of the graph's one input-dependent input."""
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise UnsupportedOpError(f"the graph must have one input, it has {[i.name for i in inputs]}")
    (value_info,) = inputs
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise UnsupportedOpError(f"input {value_info.name!r} must have a batch axis and a shape")
    fixed_batch = dims[0].HasField("dim_value")
    if fixed_batch and dims[0].dim_value != 1:
        raise UnsupportedOpError(
            f"input {value_info.name!r} has a fixed batch of {dims[0].dim_value}: export it with a "
            "dynamic batch or a batch of 1"
        )
    example = tuple(d.dim_value for d in dims[1:])
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
        raise UnsupportedOpError(
            f"input {value_info.name!r} has dynamic dimensions {list(dims)[1:]}: a Lipschitz bound "
            "depends on the input size, export with a fixed size"
        )
    return value_info.name, (1,) if fixed_batch else BATCH_SIZES, example


def _input_dtype(graph: onnx.GraphProto, name: str) -> np.dtype:
    (value_info,) = [i for i in graph.input if i.name == name]
    return helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)


def _inferred_shapes(model: onnx.ModelProto, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Static shape of every tensor whose shape onnx.shape_inference infers with the input fixed."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    dims = next(i for i in fixed.graph.input if i.name == name).type.tensor_type.shape.dim
    for dim, size in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
        raise VerificationError(f"shape inference failed: {error}") from error
    shapes = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[info.name] = tuple(d.dim_value for d in tensor.shape.dim)
    return shapes


def _layer_name(node: onnx.NodeProto) -> str:
    """The source module's path from the torch exporter's name scopes, else the node's name."""
    for entry in node.metadata_props:
        if entry.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2])
    return node.name or node.output[0]


def _node_outputs(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """The values of a node's outputs. Default-deny: only numpy arrays are constants (folded by
    :func:`_fold`); every other value reaches only the rules that accept it."""
    for name, value in zip(node.input, inputs, strict=True):
        if isinstance(value, NotLipschitz) or (isinstance(value, Comparison) and node.op_type != "Where"):
            raise UnsupportedOpError(f"its input {name!r} is {value.what}, not a Lipschitz function")
    _check_axes(node, inputs)
    if any(isinstance(value, BatchSized) for value in inputs):
        target = TARGET_SHAPES.get(node.op_type)
        sized = [i for i, value in enumerate(inputs) if isinstance(value, BatchSized)]
        if not (isinstance(inputs[0], Signal) and sized == [target] and _keeps_batch(inputs[target])):
            return _batch_sized(walk, node, inputs)
        if node.op_type != "Reshape":  # the batch entry of the target is the input's own: a constant here
            inputs = [*inputs[:target], inputs[target].values, *inputs[target + 1 :]]
    if (
        any(isinstance(value, Squares | SignOfSquares) for value in inputs)
        and node.op_type not in SQUARES_OPS
    ):
        raise UnsupportedOpError(
            "it reads squares of input-dependent values: only their pooled square root is bounded"
        )
    if all(value is None or isinstance(value, np.ndarray) for value in inputs):
        return _fold(walk, node, inputs)
    rule = RULES.get(node.op_type)
    if rule is None:
        raise UnsupportedOpError(f"unsupported op {node.op_type}: no Lipschitz rule")
    if node.op_type not in REINDEXING:
        _require_batch_first(inputs, "it reads")
    return rule(walk, node, inputs)


def _rank(value: Value) -> int | None:
    if isinstance(value, Signal):
        return value.index.ndim
    if isinstance(value, Squares):
        return len(value.shape)
    if isinstance(value, np.ndarray):
        return value.ndim
    return value.values.ndim if isinstance(value, BatchSized) else None


TARGET_SHAPES = {"Reshape": 1, "Resize": 3}
"""Ops whose input (at this position) is a target shape, which may take its batch entry from a Shape
node: that entry keeps the batch axis as it is."""


def _keeps_batch(value: BatchSized) -> bool:
    """Whether the batch size appears only as the first entry of ``value`` (a target shape)."""
    marks = value.marks.ravel()
    return value.marks.ndim == 1 and bool(marks[0]) and not marks[1:].any()


def _check_axes(node: onnx.NodeProto, inputs: list[Value]) -> None:
    """An ``axes`` list (attribute, or input 1 from opset 13 on) must name each axis once: runtimes
    disagree on repeated axes, and a rule would count the axis twice."""
    axes = _attributes(node).get("axes")
    if axes is None and node.op_type != "Slice" and len(inputs) > 1 and isinstance(inputs[1], np.ndarray):
        axes = (
            inputs[1]
            if node.op_type.startswith("Reduce") or node.op_type in ("Squeeze", "Unsqueeze")
            else None
        )
    if node.op_type == "Slice" and len(inputs) > 3 and isinstance(inputs[3], np.ndarray):
        axes = inputs[3]
    rank = _rank(inputs[0]) if inputs else None
    if axes is None or rank is None:
        return
    axes = [int(a) for a in np.asarray(axes).ravel()]
    if node.op_type == "Unsqueeze":
        rank += len(axes)
    if any(not -rank <= a < rank for a in axes):
        raise UnsupportedOpError(f"its axes {axes} are out of range for rank {rank}")
    if len({a % rank for a in axes}) != len(axes):
        raise UnsupportedOpError(f"its axes {axes} name one axis twice")


def _require_batch_first(values: list[Value], what: str) -> None:
    for value in values:
        if isinstance(value, Signal) and value.batch_axis != 0:
            raise UnsupportedOpError(
                f"{what} a tensor whose batch axis was moved to axis {value.batch_axis} (only ops that "
                "move values may, until it is first again)"
            )


def graph_bound(model: onnx.ModelProto, progress: Progress | None = None) -> GraphBound:
    """Sound per-example bound of the L2 Lipschitz constant of ``model``'s outputs w.r.t. its input,
    reporting each node to ``progress`` first.

    A graph with a dynamic batch axis is walked at each of :data:`BATCH_SIZES`: at 1, constants that
    line up with the batch axis would broadcast one example to several rows; at 2 and 5, ops that mix
    examples are seen. No value may compute with the batch size (BatchSized), so every op acts on
    each example alike at every batch size; the bound is the largest of the walks.

    Raises:
        UnsupportedOpError: an op (or op configuration) without a sound rule, naming the node.
        VerificationError: a graph that cannot be analysed (shapes, batch axis, evaluation).
    """
    model = _prepared(model)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    name, batches, example = _input(model.graph, constants)
    gains = GainCache()
    nodes = len(model.graph.node) * len(batches)
    walks = []
    for number, batch in enumerate(batches):

        def report(done: int, op: str, number: int = number, batch: int = batch) -> None:
            if progress is not None:
                suffix = f" (batch {batch})" if len(batches) > 1 else ""
                progress(number * len(model.graph.node) + done, nodes, f"{op}{suffix}")

        walks.append(_walk(model, constants, name, (batch, *example), Tracker(batch, gains), report))
    return max(walks, key=lambda walk: walk.lipschitz_bound)


def _walk(
    model: onnx.ModelProto,
    constants: dict[str, np.ndarray],
    name: str,
    shape: tuple[int, ...],
    tracker: Tracker,
    report: Callable[[int, str], None],
) -> GraphBound:
    """The bound of the graph walked once, with the input ``name`` of ``shape`` (batch first)."""
    graph = model.graph
    try:
        walk = _Walk(model, _inferred_shapes(model, name, shape), tracker, _input_dtype(model.graph, name))
    except VerificationError as error:
        raise VerificationError(f"the graph does not run at batch size {shape[0]}: {error}") from error
    values: dict[str, Value] = {**constants, name: tracker.source(shape, 1.0)}
    uses = Counter(i for node in graph.node for i in node.input) + Counter(o.name for o in graph.output)
    layers = []
    for done, node in enumerate(graph.node):
        report(done, f"{node.op_type} {_layer_name(node)}")
        inputs = [values[i] if i else None for i in node.input]
        try:
            walk.node, walk.inputs = node, inputs
            outputs = _node_outputs(walk, node, inputs)
        except ValueError as error:  # VerificationError, or a bound engine's refusal
            kind = type(error) if isinstance(error, VerificationError) else VerificationError
            kind = UnsupportedOpError if isinstance(error, OutOfDomainError) else kind
            at = f" at batch size {tracker.batch}" if tracker.batch != 1 else ""
            raise kind(f"{node.op_type} node {node.name!r} ({_layer_name(node)}){at}: {error}") from error
        values.update((o, value) for o, value in zip(node.output, outputs, strict=False) if o)
        first = next((v for v in outputs if isinstance(v, Signal)), None)
        if first is not None and node.op_type not in REINDEXING:
            shape_in = next(v.shape[1:] for v in inputs if isinstance(v, Signal | Squares))
            layers.append(LayerBound(_layer_name(node), node.op_type, tracker.bound(first), shape_in))
        for i in filter(None, node.input):
            uses[i] -= 1
            if uses[i] == 0:
                del values[i]
    results = [values[o.name] for o in graph.output]
    for output, result in zip(graph.output, results, strict=True):
        if not isinstance(result, Signal | np.ndarray):
            what = getattr(result, "what", "squares of input-dependent values")
            raise UnsupportedOpError(f"graph output {output.name!r} is {what}")
        _require_batch_first([result], f"graph output {output.name!r} is")
    signals = [r for r in results if isinstance(r, Signal)]
    bound = tracker.bound(*signals) if signals else 0.0
    return GraphBound(bound, tuple(layers), shape[1:])
