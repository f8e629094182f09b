"""Sound Lipschitz bound of an ONNX graph, from the graph and its initializers alone.

:func:`graph_bound` fixes the input shape (a dynamic batch axis is analysed at 2 examples, so that an
op mixing examples is caught), infers every tensor's shape with ``onnx.shape_inference``, then walks
the nodes in their (topological) order. It keeps, for every tensor, its value when it is a constant
and its :class:`~export.propagation.Signal` when it depends on the input (see
:mod:`export.propagation` for that bookkeeping and why its bounds are sound):

* a node with no input-dependent input is evaluated with ``onnx.reference`` (constant folding);
* an op of :data:`REINDEXING` only moves values: it is evaluated on the index arrays themselves;
* any other op needs a rule in :data:`RULES`, whose docstring's first line says why it is sound;
  an op without one is an :class:`UnsupportedOpError` naming it, never skipped.

Assumptions: the graph has one input-dependent input (initializers are constants, also when listed
as graph inputs), its first axis is the batch axis and its other dimensions are fixed (a bound
depends on the input size); the default-domain opset is >= 13. Not supported, among others: using the
batch size read by a Shape node as a value, products and quotients of two
input-dependent tensors (not globally Lipschitz), 3-D convolutions, normalisations
other than inference-mode BatchNormalization, Softmax, control flow (If, Loop), ConvTranspose with
auto_pad or output_shape.
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
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from export.propagation import (
    GraphBound,
    Progress,
    Signal,
    SignOfSquares,
    Squares,
    Tracker,
    UnsupportedOpError,
    VerificationError,
)
from zoo.bounds import LinearMap, conv_bound, conv_transpose_bound, matrix_norm_bound
from zoo.bounds import elementwise as slopes
from zoo.bounds.pooling import (
    Windows,
    average_pool_gain,
    lp_pool_gain,
    max_pool_gain,
    reduction_gain,
    window_spread,
)
from zoo.certificate import LayerBound

__all__ = ["MIN_OPSET", "REINDEXING", "RULES", "SCALAR_MAPS", "GraphBound", "graph_bound"]

MIN_OPSET = 13
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class NotLipschitz:
    """An input-dependent output with no Lipschitz bound (e.g. the indices of a TopK): using it is an
    error, and so is returning it."""

    what: str


@dataclass(frozen=True)
class BatchShape:
    """The output of a Shape node that includes the batch axis: ``dims`` is the analysed shape, whose
    first entry (the batch size) is not a constant of the graph. Only ops that select entries may
    read it, and only to pick example dimensions (:func:`_select_from_shape`)."""

    dims: np.ndarray
    what = "a shape that includes the batch size"

    def with_batch(self, batch: int) -> np.ndarray:
        dims = self.dims.copy()
        dims[0] = batch
        return dims


@dataclass(frozen=True)
class Comparison:
    """The output of ``Greater(s, t)`` for an input-dependent ``s`` and a constant number ``t``: not
    Lipschitz, and read only by the Where rule, which recognises torch's softplus in it."""

    signal: Signal
    threshold: float
    what = "a comparison of input-dependent values"


Value = np.ndarray | Signal | Squares | SignOfSquares | NotLipschitz | BatchShape | Comparison | None

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
    """State of one walk: the graph, the inferred shapes and the tracker."""

    model: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]
    tracker: Tracker

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise VerificationError(f"the shape of tensor {name!r} could not be inferred")
        return self.shapes[name]

    def evaluate(self, node: onnx.NodeProto, feeds: list[np.ndarray | None]) -> list[np.ndarray]:
        """Run ``node`` alone with ``onnx.reference`` on ``feeds`` (None for an absent input)."""
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
        try:
            results = ReferenceEvaluator(model).run(
                None, {name: feed for name, feed in zip(names, feeds, strict=True) if name}
            )
        except Exception as error:  # the reference implementation raises many kinds
            raise VerificationError(f"cannot evaluate it with onnx.reference: {error}") from error
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
    floor = _constant(inputs, position, "floor")
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


def _reindex(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Moves values only: evaluated on the index arrays, so exact, copies included."""
    data_positions = {"Concat": range(len(inputs)), "Where": (1, 2)}.get(node.op_type, (0,))
    feeds = []
    for position, value in enumerate(inputs):
        if position in data_positions and isinstance(value, Signal):
            feeds.append(value.index)
        elif position in data_positions:
            feeds.append(np.full(_constant(inputs, position, "data").shape, -1, np.int64))
        else:
            feeds.append(_constant(inputs, position, "shape, index or condition argument"))
    moved = [value for value in inputs if isinstance(value, Signal)]
    reshape = node.op_type == "Reshape"
    if reshape and any(signal.batch_axis != 0 for signal in moved):
        raise UnsupportedOpError("it reshapes a tensor whose batch axis is not first")
    if reshape and walk.tracker.batch > 1:
        first = int(feeds[1][0])
        if not (first == -1 or (first == 0 and not _attributes(node).get("allowzero", 0))):
            raise UnsupportedOpError(f"it reshapes to a fixed batch size ({first})")
    if node.op_type == "Pad":
        feeds = [*feeds[:2], np.array(-1, np.int64), *feeds[3:]]  # constant entries are marked -1
    return [
        walk.tracker.reindexed(index, moved, batch_moves=not reshape) for index in walk.evaluate(node, feeds)
    ]


def _shape(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """Shape reads no value: the example dimensions are constants (the input size is fixed); a shape
    that includes the batch axis is a BatchShape, whose batch entry may not be used."""
    x, attributes = _data(inputs), _attributes(node)
    axes = list(range(x.index.ndim))[attributes.get("start", 0) : attributes.get("end")]
    dims = np.array([x.shape[axis] for axis in axes], dtype=np.int64)
    return [BatchShape(dims) if axes and axes[0] == 0 else dims]


SHAPE_SELECTIONS = frozenset({"Concat", "Gather", "Identity", "Slice", "Squeeze", "Unsqueeze"})
"""Ops that may read a BatchShape: they select entries, so an output that is the same for two batch
sizes does not contain the batch entry."""


def _select_from_shape(walk: _Walk, node: onnx.NodeProto, inputs: list[Value]) -> list[Value]:
    """A selection from a shape that includes the batch axis is a constant when it is the same for
    two batch sizes (it then holds example dimensions only); using the batch size itself is refused."""
    if node.op_type not in SHAPE_SELECTIONS:
        raise UnsupportedOpError("it computes with a shape that includes the batch size")
    runs = [
        walk.evaluate(node, [v.with_batch(batch) if isinstance(v, BatchShape) else v for v in inputs])
        for batch in (2, 3)
    ]
    if any(not np.array_equal(a, b) for a, b in zip(*runs, strict=True)):
        raise UnsupportedOpError("it uses the batch size read by a Shape node as a value")
    return runs[0]


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
        with np.errstate(divide="ignore"):
            factors = 1.0 / factors
    if not np.all(np.isfinite(factors)):
        raise UnsupportedOpError("it divides by zero")
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
    if len(spatial) not in (1, 2):
        raise UnsupportedOpError(f"{len(spatial)} spatial dimensions (the bound engine handles 1 or 2)")
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
    gain = conv_bound(
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
    gain = conv_transpose_bound(
        weight,
        input_size=spatial,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        output_padding=layer.output_padding,
        groups=layer.groups,
    )
    return [walk.tracker.linear(x, gain, walk.shape(node.output[0]), layer if symmetric else None)]


def _matrix_gain(matrix: np.ndarray) -> float:
    """matrix_norm_bound of a (out, in) matrix, the orientation of torch's Linear weight."""
    return matrix_norm_bound(torch.tensor(matrix))


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
    return [walk.tracker.linear(x, _matrix_gain(matrix), walk.shape(node.output[0]), layer)]


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
    return [walk.tracker.linear(x, _matrix_gain(matrix), walk.shape(node.output[0]), layer)]


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
    gain = average_pool_gain(windows, include_pad)
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


_GROUP_GAINS: dict[str, Callable[[int, dict[str, Any]], float]] = {
    "ReduceMax": lambda n, attributes: reduction_gain("max", n),
    "GlobalMaxPool": lambda n, attributes: reduction_gain("max", n),
    "ReduceMin": lambda n, attributes: reduction_gain("min", n),
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
    if node.op_type in _GROUP_GAINS:
        return [walk.tracker.transformed(x, _GROUP_GAINS[node.op_type](count, attributes), shape)]
    return [walk.tracker.reduced(x, axes, shape, mean=node.op_type != "ReduceSum")]


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
    **dict.fromkeys((*_SQUARES_SPREADS, *_GROUP_GAINS), _reduce),
}
"""ONNX op type (default domain) -> rule computing the values of the node's outputs."""


# --- the walk -----------------------------------------------------------------------------------


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise UnsupportedOpError(
            f"default-domain opset {opset} is not supported: convert the model to opset {MIN_OPSET} "
            "or later (onnx.version_converter)"
        )
    return onnx.inliner.inline_local_functions(model) if model.functions else model


def _input(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> tuple[str, int, tuple[int, ...]]:
    """Name, analysed batch size and example shape of the graph's one input-dependent input."""
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
    batch = 1 if fixed_batch else 2
    example = tuple(d.dim_value for d in dims[1:])
    if not all(example):
        raise UnsupportedOpError(
            f"input {value_info.name!r} has dynamic dimensions {list(dims)[1:]}: a Lipschitz bound "
            "depends on the input size, export with a fixed size"
        )
    return value_info.name, batch, example


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
    for name, value in zip(node.input, inputs, strict=True):
        if isinstance(value, NotLipschitz) or (isinstance(value, Comparison) and node.op_type != "Where"):
            raise UnsupportedOpError(f"its input {name!r} is {value.what}, not a Lipschitz function")
    if any(isinstance(value, BatchShape) for value in inputs):
        return _select_from_shape(walk, node, inputs)
    if (
        any(isinstance(value, Squares | SignOfSquares) for value in inputs)
        and node.op_type not in SQUARES_OPS
    ):
        raise UnsupportedOpError(
            "it reads squares of input-dependent values: only their pooled square root is bounded"
        )
    if all(value is None or isinstance(value, np.ndarray) for value in inputs):
        return walk.evaluate(node, inputs)
    rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        domain = f"{node.domain}::" if node.domain else ""
        raise UnsupportedOpError(f"unsupported op {domain}{node.op_type}: no Lipschitz rule")
    if node.op_type not in REINDEXING:
        _require_batch_first(inputs, "it reads")
    return rule(walk, node, inputs)


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

    Raises:
        UnsupportedOpError: an op (or op configuration) without a sound rule, naming the node.
        VerificationError: a graph that cannot be analysed (shapes, batch axis, evaluation).
    """
    model = _prepared(model)
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    name, batch, example = _input(graph, constants)
    tracker = Tracker(batch)
    walk = _Walk(model, _inferred_shapes(model, name, (batch, *example)), tracker)
    values: dict[str, Value] = {**constants, name: tracker.source((batch, *example), 1.0)}
    uses = Counter(i for node in graph.node for i in node.input) + Counter(o.name for o in graph.output)
    layers = []
    for done, node in enumerate(graph.node):
        if progress is not None:
            progress(done, len(graph.node), f"{node.op_type} {_layer_name(node)}")
        inputs = [values[i] if i else None for i in node.input]
        try:
            outputs = _node_outputs(walk, node, inputs)
        except ValueError as error:  # VerificationError, or a bound engine's refusal
            kind = type(error) if isinstance(error, VerificationError) else VerificationError
            raise kind(f"{node.op_type} node {node.name!r} ({_layer_name(node)}): {error}") from error
        values.update((o, value) for o, value in zip(node.output, outputs, strict=False) if o)
        first = next((v for v in outputs if isinstance(v, Signal)), None)
        if first is not None and node.op_type not in REINDEXING:
            shape = next(v.shape[1:] for v in inputs if isinstance(v, Signal | Squares))
            layers.append(LayerBound(_layer_name(node), node.op_type, tracker.bound(first), shape))
        for i in filter(None, node.input):
            uses[i] -= 1
            if uses[i] == 0:
                del values[i]
    results = [values[o.name] for o in graph.output]
    for output, result in zip(graph.output, results, strict=True):
        if isinstance(result, NotLipschitz | BatchShape | Comparison):
            raise UnsupportedOpError(f"graph output {output.name!r} is {result.what}")
        if isinstance(result, Squares):
            raise UnsupportedOpError(f"graph output {output.name!r} holds squares of input-dependent values")
        _require_batch_first([result], f"graph output {output.name!r} is")
    signals = [r for r in results if isinstance(r, Signal)]
    bound = tracker.bound(*signals) if signals else 0.0
    return GraphBound(bound, tuple(layers), example)
