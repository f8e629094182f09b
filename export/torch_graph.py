"""Sound Lipschitz bound of a TorchScript module or a torch.export program, from the artifact alone.

The artifact's own program runs once, with its own weights, on a batch whose values are tracked (see
:mod:`export.propagation`): the input is a :class:`_Tracked` tensor, a tensor subclass that carries a
Signal and its index array instead of values. Every aten op the program applies to a tracked tensor
reaches ``__torch_dispatch__``:

* ops that only move values (:data:`REINDEXING`: views, concatenation, padding...) run on the index
  arrays themselves, as torch views of each other, so that an in-place ``copy_`` into a view (how
  torch pads circularly) is tracked like any move;
* every other op needs a rule in :data:`RULES`, whose docstring's first line says why it is sound;
  an op without one is an :class:`UnsupportedOpError` naming it, never skipped.

Ops on constants only run as usual. TorchScript and .pt2 programs both run through the dispatcher,
so one set of rules serves both; composite ops (``linear``, ``pad``, ``batch_norm``...) arrive
decomposed into the aten ops listed here. What is bounded is the path the program takes: a program
whose control flow reads input values is refused (reading a tracked value has no rule), and so is an
op that merges the batch axis with another (a Linear on 3-D inputs, for one). Layers are named by
their position in the program: a dispatched op does not know its module.
"""

from __future__ import annotations

import contextvars
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_leaves, tree_map

from export.propagation import (
    GraphBound,
    Progress,
    Signal,
    Squares,
    Tracker,
    UnsupportedOpError,
    VerificationError,
)
from zoo.bounds import (
    LinearMap,
    adaptive_average_pool_bound,
    conv_bound,
    conv_transpose_bound,
    matrix_norm_bound,
)
from zoo.bounds import elementwise as slopes
from zoo.bounds.pooling import Windows, average_pool_gain, max_pool_gain, reduction_gain, window_spread
from zoo.certificate import LayerBound

__all__ = ["REINDEXING", "RULES", "program_bound"]

REINDEXING = frozenset(
    {
        "alias",
        "cat",
        "chunk",
        "clone",
        "constant_pad_nd",
        "contiguous",
        "detach",
        "expand",
        "flip",
        "index_select",
        "narrow",
        "permute",
        "pixel_shuffle",
        "pixel_unshuffle",
        "reflection_pad1d",
        "reflection_pad2d",
        "repeat",
        "replication_pad1d",
        "replication_pad2d",
        "reshape",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "squeeze",
        "stack",
        "t",
        "transpose",
        "unbind",
        "unsqueeze",
        "view",
        "_unsafe_view",
    }
)
"""aten ops whose every output value is a copy of an input value or a constant."""

_ACTIVE: contextvars.ContextVar[_Run] = contextvars.ContextVar("lipschitz_run")


class _Tracked(torch.Tensor):
    """A tensor of the running program whose values depend on the input.

    ``signal`` says how (None when they have no bound: ``unusable`` says why), and ``index`` holds
    the signal's index array as a torch tensor, which views of this tensor share. ``squares`` is set
    instead of ``signal`` for squares on the way to their pooled square root, ``sign_of`` for their
    sign (only the rules of :data:`SQUARES_OPS` read them).
    """

    index: torch.Tensor
    signal: Signal | None
    unusable: str | None
    squares: Squares | None = None
    sign_of: Squares | None = None

    @staticmethod
    def __new__(cls, index: torch.Tensor, dtype: torch.dtype, signal: Signal | None, unusable: str | None):
        return torch.Tensor._make_wrapper_subclass(
            cls, index.shape, strides=index.stride(), storage_offset=index.storage_offset(), dtype=dtype
        )

    def __init__(self, index: torch.Tensor, dtype: torch.dtype, signal: Signal | None, unusable: str | None):
        self.index, self.signal, self.unusable = index, signal, unusable

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _ACTIVE.get().call(func, args, kwargs or {})


Rule = Callable[["_Run", torch._ops.OpOverload, dict[str, Any]], Any]


def _op_name(func: torch._ops.OpOverload) -> str:
    """The op's name without its overload and without the trailing ``_`` of an in-place variant."""
    return func.overloadpacket.__name__.removesuffix("_")


def _arguments(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by name (from its schema), defaults filled in."""
    values = {}
    for position, argument in enumerate(func._schema.arguments):
        if position < len(args):
            values[argument.name] = args[position]
        elif argument.name in kwargs:
            values[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            values[argument.name] = argument.default_value
    return values


def _invoke(func: torch._ops.OpOverload, a: dict[str, Any], convert: Callable[[Any], Any]) -> Any:
    """Call ``func`` with the named arguments ``a``, each passed through ``convert``."""
    args, kwargs = [], {}
    for argument in func._schema.arguments:
        if argument.name in a:
            value = tree_map(convert, a[argument.name])
            if argument.kwarg_only:
                kwargs[argument.name] = value
            else:
                args.append(value)
    return func(*args, **kwargs)


def _signal(value: Any, what: str = "input") -> Signal:
    if not isinstance(value, _Tracked):
        raise UnsupportedOpError(f"its {what} must depend on the graph input")
    if value.squares is not None:
        raise UnsupportedOpError(
            "it reads squares of input-dependent values: only their pooled square root is bounded"
        )
    return value.signal


def _floor(run: _Run, squares: Squares, floor: Any, dtype: torch.dtype) -> _Tracked:
    """A max of squares with constants ``floor`` >= 0 (Squares.floored)."""
    floor = _constant(floor, "floor")
    smallest = float(floor.min()) if isinstance(floor, torch.Tensor) else floor
    if smallest is None or not smallest >= 0:
        raise UnsupportedOpError("only a floor >= 0 of squares is supported (before their square root)")
    return run.wrap_squares(squares.with_floor(), dtype)


def _constant(value: Any, what: str) -> Any:
    if isinstance(value, _Tracked):
        raise UnsupportedOpError(f"its {what} depends on the graph input")
    return value


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() == 1


class _Run:
    """One run of a program on a tracked input: the tracker, the layers met, the first error."""

    def __init__(self, tracker: Tracker, progress: Progress | None = None) -> None:
        self.tracker = tracker
        self.progress = progress
        self.calls = 0
        self.layers: list[LayerBound] = []
        self.error: VerificationError | None = None
        self._tracked: list[weakref.ref[_Tracked]] = []

    def wrap(self, signal: Signal, dtype: torch.dtype, index: torch.Tensor | None = None) -> _Tracked:
        """A tracked tensor for ``signal`` (``index``: its index array as a view of another one)."""
        index = torch.tensor(signal.index) if index is None else index
        tracked = _Tracked(index, dtype, signal, None)
        self._tracked.append(weakref.ref(tracked))
        return tracked

    def wrap_squares(self, squares: Squares, dtype: torch.dtype) -> _Tracked:
        """A tracked tensor holding ``squares`` (no signal: no other rule may read it)."""
        index = torch.full(squares.shape, -1, dtype=torch.int64)
        tracked = _Tracked(index, dtype, None, "squares of input-dependent values")
        tracked.squares = squares
        return tracked

    def shadow(self, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
        """``func`` run on zeros in place of the tracked tensors: the shapes of its outputs."""

        def zeros(value: Any) -> Any:
            return torch.zeros(value.shape, dtype=value.dtype) if isinstance(value, _Tracked) else value

        return _invoke(func, a, zeros)

    def call(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
        name = func.overloadpacket.__name__
        if self.progress is not None:
            self.progress(self.calls, None, f"aten.{name}")
        self.calls += 1
        try:
            leaves = tree_leaves((args, kwargs))
            special = [
                v for v in leaves if isinstance(v, _Tracked) and not (v.squares is None and v.sign_of is None)
            ]
            if special:
                if _op_name(func) not in SQUARES_OPS or name != _op_name(func):
                    raise UnsupportedOpError(
                        f"aten.{name} reads squares of input-dependent values: only their pooled "
                        "square root is bounded (by out-of-place ops)"
                    )
                return self.apply(func, args, kwargs)
            for value in leaves:
                if isinstance(value, _Tracked) and value.signal is None:
                    if name in REINDEXING:  # moving values that have no bound: still none
                        return self.unusable(func, args, kwargs, value.unusable)
                    raise UnsupportedOpError(
                        f"it uses {value.unusable}, not a Lipschitz function of the input"
                    )
            if name in REINDEXING:
                return self.reindex(func, args, kwargs)
            if name == "copy_":
                return _copy(self, _arguments(func, args, kwargs))
            if _op_name(func) not in RULES:  # relu_ and the like use the rule of relu
                raise UnsupportedOpError(f"unsupported op aten.{name}: no Lipschitz rule")
            outputs = self.apply(func, args, kwargs)
            in_place = name != _op_name(func)  # then move the result into self
            return _copy(self, {"self": args[0], "src": outputs}) if in_place else outputs
        except ValueError as error:  # VerificationError, or a bound engine's refusal
            kind = type(error) if isinstance(error, VerificationError) else VerificationError
            self.error = self.error or kind(f"aten.{name} (op {len(self.layers)}): {error}")
            raise self.error from error

    def apply(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
        """Apply the rule of ``func`` and record its first tracked output as a layer."""
        name = _op_name(func)
        outputs = RULES[name](self, func, _arguments(func, args, kwargs))
        first = next((o for o in tree_leaves(outputs) if isinstance(o, _Tracked) and o.signal), None)
        inputs = [value for value in tree_leaves((args, kwargs)) if isinstance(value, _Tracked)]
        if first is not None and name not in ("new_empty", "new_zeros"):
            bound = self.tracker.bound(first.signal)
            self.layers.append(
                LayerBound(str(len(self.layers)), f"aten.{name}", bound, tuple(inputs[0].shape[1:]))
            )
        return outputs

    def unusable(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict, why: str) -> Any:
        """The outputs of ``func`` (which moves values) as tracked tensors without a bound (``why``)."""

        def wrap(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            return _Tracked(torch.full(value.shape, -1, dtype=torch.int64), value.dtype, None, why)

        return tree_map(wrap, self.shadow(func, _arguments(func, args, kwargs)))

    def reindex(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
        """Moves values only: run on the index arrays (constant values marked -1), so exact."""

        def as_index(value: Any) -> Any:
            if isinstance(value, _Tracked):
                return value.index
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return torch.full(value.shape, -1, dtype=torch.int64)
            return value

        a = _arguments(func, args, kwargs)
        if _op_name(func) == "constant_pad_nd":
            a["value"] = -1
        tracked_inputs = [value for value in tree_leaves(a) if isinstance(value, _Tracked)]
        moved, dtype = [value.signal for value in tracked_inputs], tracked_inputs[0].dtype
        outputs = _invoke(func, a, as_index)

        def tracked(index: Any) -> Any:
            if not isinstance(index, torch.Tensor):
                return index
            return self.wrap(self.tracker.reindexed(index.numpy(), moved), dtype, index)

        return tree_map(tracked, outputs)

    def aliases(self, index: torch.Tensor) -> list[_Tracked]:
        """The live tracked tensors whose index arrays share ``index``'s memory."""
        storage = index.untyped_storage().data_ptr()
        alive = [ref() for ref in self._tracked]
        return [t for t in alive if t is not None and t.index.untyped_storage().data_ptr() == storage]


# --- rules --------------------------------------------------------------------------------------


def _copy(run: _Run, a: dict[str, Any]) -> Any:
    """copy_ (and in-place ops) move values into a tracked tensor, through torch's views of the index
    arrays; every tracked tensor sharing that memory is re-checked, and is uniform only if its old
    values (unless all overwritten: same view) and the moved ones share a variant."""
    destination, source = a["self"], a["src"]
    if not isinstance(destination, _Tracked):
        raise UnsupportedOpError("it writes input-dependent values into a constant tensor")
    moved = [source.signal] if isinstance(source, _Tracked) else []
    values = source.index if isinstance(source, _Tracked) else torch.full(source.shape, -1, dtype=torch.int64)

    def geometry(index: torch.Tensor) -> tuple:
        return index.shape, index.stride(), index.storage_offset()

    aliases = [(alias, alias.signal) for alias in run.aliases(destination.index)]
    destination.index.copy_(values)
    for alias, before in aliases:
        overwritten = geometry(alias.index) == geometry(destination.index)
        alias.signal = run.tracker.reindexed(alias.index.numpy(), moved if overwritten else [before, *moved])
    return destination


def _allocation(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """new_empty / new_zeros allocate a tensor that does not depend on the input (then filled by
    copy_): all its entries are constants."""
    shape = tuple(a["size"])
    if not shape or shape[0] != run.tracker.batch:
        return run.shadow(func, a)
    return run.wrap(run.tracker.constant(shape), a.get("dtype") or a["self"].dtype)


def _conv(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """convolution is linear with operator norm at most conv_bound (bias excluded), a transposed one
    is the adjoint of a convolution on its output size (conv_transpose_bound); a padding spelled as
    separate ops before a convolution is absorbed (Tracker.padding_of)."""
    x, weight = a["input"], _constant(a["weight"], "weight")
    _constant(a["bias"], "bias")
    layer = LinearMap(
        weight,
        transposed=a["transposed"],
        stride=tuple(a["stride"]),
        padding=tuple(a["padding"]),
        dilation=tuple(a["dilation"]),
        output_padding=tuple(a["output_padding"]),
        groups=a["groups"],
    )
    source = _signal(x)
    shape = run.shadow(func, a).shape
    if layer.transposed:
        gain = conv_transpose_bound(
            weight,
            input_size=source.shape[2:],
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            output_padding=layer.output_padding,
            groups=layer.groups,
        )
        return run.wrap(run.tracker.linear(source, gain, shape, layer), x.dtype)
    padding, mode = layer.padding, "zeros"
    padded = None if any(padding) else run.tracker.padding_of(source, weight.shape[2:])
    if padded is not None:
        source, padding, mode = padded
    gain = conv_bound(
        weight,
        input_size=source.shape[2:],
        stride=layer.stride,
        padding=padding,
        dilation=layer.dilation,
        groups=layer.groups,
        padding_mode=mode,
    )
    plain = padded is None  # zero padding, in the convolution itself
    return run.wrap(run.tracker.linear(source, gain, shape, layer if plain else None), x.dtype)


def _matrix_product(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """addmm / mm with the data as mat1 (one row per example) and constant mat2, bias: x -> beta b +
    alpha x W has norm |alpha| ||W||."""
    x, bias = (a["mat1"], a["self"]) if "mat1" in a else (a["self"], None)
    _constant(bias, "bias")
    matrix = a.get("alpha", 1) * _constant(a["mat2"], "matrix").T  # torch's (out, in) layout
    shape = (x.shape[0], matrix.shape[0])
    layer = LinearMap(matrix)
    return run.wrap(
        run.tracker.linear(_signal(x, "first matrix"), matrix_norm_bound(matrix), shape, layer), x.dtype
    )


def _fixed(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda a: slopes.FIXED_SLOPES[name]


_SCALAR_MAPS: dict[str, Callable[[dict[str, Any]], float]] = {
    **{name: _fixed(name) for name in ("relu", "abs", "neg", "tanh", "atan", "sin", "cos", "sigmoid")},
    **{name: _fixed(name) for name in ("gelu", "silu", "mish", "erf", "hardswish", "hardsigmoid", "selu")},
    "hardtanh": lambda a: slopes.clamp(a["min_val"], a["max_val"]),
    "clamp": lambda a: slopes.clamp(a.get("min"), a.get("max")),
    "clamp_min": lambda a: slopes.clamp(a["min"], None),
    "clamp_max": lambda a: slopes.clamp(None, a["max"]),
    "leaky_relu": lambda a: slopes.leaky_relu(a["negative_slope"]),
    "celu": lambda a: slopes.celu(a["alpha"]),
    "elu": lambda a: slopes.elu(a["alpha"], scale=a["scale"], input_scale=a["input_scale"]),
    "softplus": lambda a: slopes.softplus(a["beta"], a["threshold"]),
}
"""aten scalar maps -> their Lipschitz constant (:mod:`zoo.bounds.elementwise`) from the op's arguments."""


_RECORDED_MAPS = frozenset({"relu", "sigmoid", "abs", "softplus"})
"""Scalar maps that composite rules look for (Tracker.mapped)."""


def _elementwise(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """Each output value is a scalar function of one input value, whose Lipschitz constant
    _SCALAR_MAPS gives (zoo.bounds.elementwise)."""
    x = a["self"]
    if x.squares is not None and _op_name(func) in ("abs", "relu"):
        return run.wrap_squares(x.squares, x.dtype)  # squares are >= 0: abs and relu leave them
    if x.squares is not None:
        if a.get("max") is not None:
            raise UnsupportedOpError("only a floor (no ceiling) of squares is supported")
        return _floor(run, x.squares, a["min"], x.dtype)
    if _op_name(func) in _RECORDED_MAPS:
        return run.wrap(
            run.tracker.mapped(_signal(x), _op_name(func), _SCALAR_MAPS[_op_name(func)](a)), x.dtype
        )
    bounds = [_constant(a[k], "bound") for k in ("min", "max", "min_val", "max_val") if k in a]
    alike = all(_is_scalar(bound) for bound in bounds if bound is not None)
    factor = _SCALAR_MAPS[_op_name(func)](a)
    return run.wrap(run.tracker.elementwise(_signal(x), factor, alike), x.dtype)


def _prelu(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """prelu: each output value is x or a x for its constant slope a, max(1, max |a|)-Lipschitz."""
    x, slope = a["self"], _constant(a["weight"], "slope")
    return run.wrap(
        run.tracker.elementwise(_signal(x), slopes.prelu(slope), alike=slope.numel() == 1), x.dtype
    )


def _float64(value: Any) -> np.ndarray:
    """A constant argument (a tensor or a number) as a float64 array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(float(value))


def _sum(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """add / sub / rsub (x + alpha y, x - alpha y, y - alpha x): a constant term only translates;
    input-dependent terms, scaled by |alpha| where it applies, are summed with their signs
    (Tracker.summed); x - mean(x) is a projection (Tracker.centered)."""
    alpha = float(a.get("alpha", 1))
    coefficients = {"add": (1.0, alpha), "sub": (1.0, -alpha), "rsub": (-alpha, 1.0)}[_op_name(func)]
    shape = run.shadow(func, a).shape
    dtype = next(v.dtype for v in (a["self"], a["other"]) if isinstance(v, _Tracked))
    if coefficients == (1.0, -1.0) and all(isinstance(a[k], _Tracked) for k in ("self", "other")):
        centered = run.tracker.centered(a["self"].signal, a["other"].signal, shape)
        if centered is not None:
            return run.wrap(centered, dtype)
    terms, signs, offset = [], [], np.float64(0.0)
    for key, coefficient in zip(("self", "other"), coefficients, strict=True):
        value = a[key]
        if not isinstance(value, _Tracked):
            offset = offset + coefficient * _float64(value)
            continue
        signal = run.tracker.broadcast(value.signal, shape)
        if abs(coefficient) != 1:
            signal = run.tracker.scaled(signal, np.float64(abs(coefficient)), shape)
        terms.append(signal)
        signs.append(math.copysign(1.0, coefficient))
    if len(terms) > 1:
        return run.wrap(run.tracker.summed(terms, signs), dtype)
    return run.wrap(run.tracker.shifted(terms[0], offset, negated=signs[0] < 0), dtype)


def _product(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """mul / div by a constant c: value k is multiplied by c_k, so the map is max |c|-Lipschitz (exact
    for a scalar, Tracker.scaled); x / (c + |x|) is softsign (Tracker.quotient); other products and
    quotients of input-dependent tensors are not globally Lipschitz."""
    x, other = a["self"], a["other"]
    if _op_name(func) == "mul" and isinstance(x, _Tracked) and other is x:
        return run.wrap_squares(run.tracker.squares(_signal(x)), x.dtype)
    for sign, value in ((x, other), (other, x)):
        if isinstance(sign, _Tracked) and sign.sign_of is not None:
            if _op_name(func) == "mul" and isinstance(value, _Tracked) and value.squares is sign.sign_of:
                return run.wrap_squares(value.squares, value.dtype)  # sign(v) * v = v for squares v >= 0
            raise UnsupportedOpError("it uses the sign of squares other than to multiply those squares")
    if any(isinstance(v, _Tracked) and v.squares is not None for v in (x, other)):
        return _scaled_squares(run, func, a)
    if a.get("rounding_mode"):
        raise UnsupportedOpError("a rounded division is not Lipschitz")
    if isinstance(x, _Tracked) and isinstance(other, _Tracked):
        known = (run.tracker.product if _op_name(func) == "mul" else run.tracker.quotient)(
            x.signal, other.signal
        )
        if known is None:
            raise UnsupportedOpError(
                f"a {'product' if _op_name(func) == 'mul' else 'quotient'} of two input-dependent tensors "
                "is not globally Lipschitz"
            )
        return run.wrap(known, x.dtype)
    if _op_name(func) == "div" and isinstance(other, _Tracked):
        raise UnsupportedOpError("a division by an input-dependent tensor is not Lipschitz")
    data, constant = (x, other) if isinstance(x, _Tracked) else (other, x)
    factors = _float64(constant)
    if _op_name(func) == "div":
        with np.errstate(divide="ignore"):
            factors = 1.0 / factors
    if not np.all(np.isfinite(factors)):
        raise UnsupportedOpError("it divides by zero")
    shape = run.shadow(func, a).shape
    return run.wrap(run.tracker.scaled(run.tracker.broadcast(data.signal, shape), factors, shape), data.dtype)


def _scaled_squares(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """Squares times (or divided by) constants c >= 0: a nonnegative map with column sums max c."""
    x, other = a["self"], a["other"]
    squares, factor = (x, other) if isinstance(x, _Tracked) and x.squares is not None else (other, x)
    if _op_name(func) == "div" and squares is other:
        raise UnsupportedOpError("a division by squares of input-dependent values is not Lipschitz")
    factors = torch.as_tensor(_constant(factor, "factor"), dtype=torch.float64)
    if not bool((factors > 0).all() if _op_name(func) == "div" else (factors >= 0).all()):
        raise UnsupportedOpError("squares may only be scaled by constants >= 0")
    spread = float((1 / factors if _op_name(func) == "div" else factors).max())
    return run.wrap_squares(squares.squares.combined(spread, run.shadow(func, a).shape), squares.dtype)


def _power(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """pow by 2 makes squares (Squares); sqrt, or pow by 0.5, of squares pooled by nonnegative weights
    is bounded by their spread (Tracker.root). Other powers are not globally Lipschitz."""
    x = a["self"]
    exponent = 0.5 if _op_name(func) == "sqrt" else _constant(a["exponent"], "exponent")
    if not _is_scalar(exponent):
        raise UnsupportedOpError("only a scalar exponent is supported")
    exponent = float(exponent)
    if isinstance(x, _Tracked) and x.squares is None and exponent == 2:
        return run.wrap_squares(run.tracker.squares(_signal(x)), x.dtype)
    if isinstance(x, _Tracked) and x.squares is not None and exponent == 0.5:
        return run.wrap(run.tracker.root(x.squares), x.dtype)
    raise UnsupportedOpError(
        "only the square of an input-dependent tensor, and the square root of its pooled squares, are bounded"
    )


def _extremum(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """maximum / minimum of two input-dependent tensors is the top / bottom rank of each sorted pair
    (Tracker.sorted_group: a sort is 1-Lipschitz); with a constant, only a clamp (1-Lipschitz)."""
    x, other = a["self"], a["other"]
    for squares, floor in ((x, other), (other, x)):
        if isinstance(squares, _Tracked) and squares.squares is not None:
            if _op_name(func) != "maximum":
                raise UnsupportedOpError("only a maximum of squares with a constant floor is supported")
            return _floor(run, squares.squares, floor, squares.dtype)
    shape = run.shadow(func, a).shape
    operands = [run.tracker.broadcast(v.signal, shape) for v in (x, other) if isinstance(v, _Tracked)]
    dtype = next(v.dtype for v in (x, other) if isinstance(v, _Tracked))
    if len(operands) == 1:
        constant = other if isinstance(x, _Tracked) else x
        return run.wrap(run.tracker.elementwise(operands[0], 1.0, alike=_is_scalar(constant)), dtype)
    ranks = run.tracker.sorted_group(operands)
    return run.wrap(ranks[-1] if _op_name(func) == "maximum" else ranks[0], dtype)


def _sign(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """sign jumps at 0: it is read only of squares, and only to multiply those squares (sign(v) * v =
    v for v >= 0, how torch spells its LPPool)."""
    x = a["self"]
    if x.squares is None:
        raise UnsupportedOpError("the sign of an input-dependent tensor is not continuous")
    sign = _Tracked(torch.full(x.shape, -1, dtype=torch.int64), x.dtype, None, "the sign of squares")
    sign.sign_of = x.squares
    return sign


def _sorted(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """sort / topk values: each line's values sorted (some of them): a sort is 1-Lipschitz and so is
    keeping some of its values; the indices are not a Lipschitz function of the input."""
    x = a["self"]
    if a.get("dim", -1) % x.dim() == 0:
        raise UnsupportedOpError("it sorts along the batch axis")
    values, indices = run.shadow(func, a)
    tracked = run.wrap(run.tracker.transformed(_signal(x), 1.0, values.shape), x.dtype)
    unusable = _Tracked(indices, indices.dtype, None, f"the indices of aten.{_op_name(func)}")
    return tracked, unusable


def _spatial(x: _Tracked, values: Sequence[int]) -> tuple[int, ...]:
    """A per-spatial-axis argument, an int or a list of them (torch's pooling arguments)."""
    values = list(values) if isinstance(values, Sequence) else [values]
    return tuple(values * (x.dim() - 2) if len(values) == 1 else values)


def _average_pool(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """avg_pool is linear: average_pool_gain (a depthwise convolution with the constant kernel 1 /
    prod(kernel) when the padding counts, else per-axis averaging matrices); adaptive pools whose
    windows tile the input are such pools, the others have the exact norm of
    adaptive_average_pool_bound; of squares, a nonnegative map with column sums window_spread."""
    x = a["self"]
    spatial = tuple(x.shape[2:])
    include_pad, divisor = True, None
    if "output_size" in a:
        out = _spatial(x, a["output_size"])
        if any(n % o for n, o in zip(spatial, out, strict=True)):
            if x.squares is not None:
                raise UnsupportedOpError("adaptive windows that do not tile the input, over squares")
            gain = adaptive_average_pool_bound(spatial, out)
            return run.wrap(run.tracker.transformed(_signal(x), gain, run.shadow(func, a).shape), x.dtype)
        kernel = stride = tuple(n // o for n, o in zip(spatial, out, strict=True))
        padding = (0,) * len(spatial)
    else:
        kernel = _spatial(x, a["kernel_size"])
        stride = _spatial(x, a["stride"] or kernel)
        padding = _spatial(x, a["padding"])
        include_pad, divisor = a["count_include_pad"], a.get("divisor_override")
    shape = run.shadow(func, a).shape
    floor = tuple(
        (n + 2 * p - k) // s + 1 for n, p, k, s in zip(spatial, padding, kernel, stride, strict=True)
    )
    if tuple(shape[2:]) != floor:
        raise UnsupportedOpError("ceil_mode=True adds partial windows")
    windows = Windows(spatial, shape[2:], kernel, stride, (1,) * len(spatial), padding)
    if x.squares is not None:
        if divisor is not None:
            raise UnsupportedOpError("divisor_override over squares is not supported")
        return run.wrap_squares(x.squares.combined(window_spread(windows, include_pad), shape), x.dtype)
    gain = average_pool_gain(windows, include_pad, divisor)
    return run.wrap(run.tracker.transformed(_signal(x), gain, shape), x.dtype)


def _max_pool(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """max_pool: max_pool_gain (each output moves by at most the norm of its window's change); the
    indices are not Lipschitz."""
    x = a["self"]
    kernel = _spatial(x, a["kernel_size"])
    stride = _spatial(x, a["stride"] or kernel)
    padding, dilation = _spatial(x, a["padding"]), _spatial(x, a["dilation"])
    outputs = run.shadow(func, a)
    values = outputs[0] if isinstance(outputs, tuple) else outputs
    gain = max_pool_gain(Windows(x.shape[2:], values.shape[2:], kernel, stride, dilation, padding))
    tracked = run.wrap(run.tracker.transformed(_signal(x), gain, values.shape), x.dtype)
    if not isinstance(outputs, tuple):
        return tracked
    return tracked, _Tracked(outputs[1], outputs[1].dtype, None, "the indices of aten.max_pool")


def _norm_order(a: dict[str, Any]) -> float:
    """The ``ord`` of linalg_vector_norm, the ``p`` of norm (2 when not given)."""
    order = a.get("ord", a.get("p"))
    return 2.0 if order is None else float(order)


_GROUP_GAINS: dict[str, Callable[[int, dict[str, Any]], float]] = {
    "amax": lambda n, a: reduction_gain("max", n),
    "amin": lambda n, a: reduction_gain("min", n),
    "logsumexp": lambda n, a: reduction_gain("logsumexp", n),
    **dict.fromkeys(("linalg_vector_norm", "norm"), lambda n, a: reduction_gain("norm", n, _norm_order(a))),
}
"""Reductions of each group of ``n`` values to one: (n, arguments) -> reduction_gain."""


_SQUARES_SPREADS: dict[str, Callable[[int], float]] = {"mean": lambda n: 1 / n, "sum": lambda n: 1.0}


def _reduce(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """mean / sum / amax / amin / logsumexp / norms over dims (never the batch axis) combine
    disjoint groups of n values: sums and means are bounded by Tracker.reduced (copies included),
    the others by reduction_gain (``_GROUP_GAINS``)."""
    x = a["self"]
    dims = a.get("dim") or list(range(x.dim()))
    dims = [d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)]
    if 0 in dims:
        raise UnsupportedOpError("it reduces over the batch axis")
    count, shape = math.prod(x.shape[d] for d in dims), run.shadow(func, a).shape
    if x.squares is not None:
        return run.wrap_squares(x.squares.combined(_SQUARES_SPREADS[_op_name(func)](count), shape), x.dtype)
    if _op_name(func) in _GROUP_GAINS:
        gain = _GROUP_GAINS[_op_name(func)](count, a)
        return run.wrap(run.tracker.transformed(_signal(x), gain, shape), x.dtype)
    return run.wrap(run.tracker.reduced(_signal(x), dims, shape, mean=_op_name(func) == "mean"), x.dtype)


def _batch_norm(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """Inference batch norm is y = x * w / sqrt(var + eps) + shift per channel: an elementwise map
    with Lipschitz constant max |w / sqrt(var + eps)|."""
    x = a["input"]
    if a.get("training"):
        raise UnsupportedOpError("training-mode batch norm depends on the whole batch")
    weight, variance = _constant(a["weight"], "weight"), _constant(a["running_var"], "statistics")
    factor = slopes.batch_norm(weight, variance, a["eps"])
    _, *statistics = run.shadow(func, a)
    signal = run.tracker.elementwise(_signal(x), factor, alike=False)
    return run.wrap(signal, x.dtype), *statistics


RULES: dict[str, Rule] = {
    **dict.fromkeys(("new_empty", "new_zeros"), _allocation),
    **dict.fromkeys(("convolution", "_convolution"), _conv),
    **dict.fromkeys(("addmm", "mm"), _matrix_product),
    **dict.fromkeys(_SCALAR_MAPS, _elementwise),
    **dict.fromkeys(("prelu", "_prelu_kernel"), _prelu),
    **dict.fromkeys(("add", "sub", "rsub"), _sum),
    **dict.fromkeys(("mul", "div"), _product),
    **dict.fromkeys(("maximum", "minimum"), _extremum),
    **dict.fromkeys(("sort", "topk"), _sorted),
    "sign": _sign,
    **dict.fromkeys(
        ("avg_pool1d", "avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool2d"), _average_pool
    ),
    **dict.fromkeys(
        ("max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices"), _max_pool
    ),
    **dict.fromkeys((*_SQUARES_SPREADS, *_GROUP_GAINS), _reduce),
    **dict.fromkeys(("native_batch_norm", "_native_batch_norm_legit_no_training"), _batch_norm),
    **dict.fromkeys(("pow", "sqrt"), _power),
}
"""aten op name (overload packet) -> rule returning the op's outputs."""

SQUARES_OPS = frozenset(
    {"avg_pool1d", "avg_pool2d", "sum", "mean", "mul", "div", "clamp", "clamp_min", "maximum", "minimum"}
    | {"pow", "sqrt", "abs", "relu", "sign"}
)
"""aten ops whose rules accept squares (Squares): pooling and scaling them, a floor, their root, and
the identities of nonnegative values (abs, relu, sign(v) * v)."""


def program_bound(
    program: Callable[[torch.Tensor], Any],
    input_shape: Sequence[int],
    batch: int,
    dtype: torch.dtype,
    progress: Progress | None = None,
) -> GraphBound:
    """Sound per-example bound of the L2 Lipschitz constant of ``program``'s outputs w.r.t. its input.

    Args:
        program: a TorchScript module or a torch.export program's ``module()``, taking one tensor.
        input_shape: shape of one input example.
        batch: 2 when the program takes any batch size (so that mixing examples is caught), else 1.
        dtype: dtype of the input.
        progress: told of each aten op before its rule runs (their total is not known in advance).

    Raises:
        UnsupportedOpError: an op (or op configuration) without a sound rule, naming it.
        VerificationError: a program that cannot be bounded (batch axis, a failure on the input).
    """
    tracker = Tracker(batch)
    run = _Run(tracker, progress)
    token = _ACTIVE.set(run)
    try:
        with torch.no_grad():
            outputs = program(run.wrap(tracker.source((batch, *input_shape), 1.0), dtype))
    except Exception as error:  # the TorchScript interpreter re-raises a rule's error as its own
        if run.error is not None:
            raise run.error from None
        raise VerificationError(f"the program failed on a tracked input: {error}") from error
    finally:
        _ACTIVE.reset(token)
    signals = []
    for output in tree_leaves(outputs):
        if isinstance(output, _Tracked):
            if output.signal is None:
                raise UnsupportedOpError(f"an output is {output.unusable}")
            signals.append(output.signal)
    bound = tracker.bound(*signals) if signals else 0.0
    return GraphBound(bound, tuple(run.layers), tuple(input_shape))
