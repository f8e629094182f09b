"""Sound Lipschitz bound of a TorchScript module or a torch.export program, from the artifact alone.

The artifact's own program runs, with its own weights, on a batch whose values are tracked (see
:mod:`export.propagation`): the input is a :class:`_Tracked` tensor, a tensor subclass that carries a
Signal and its index array instead of values. Every aten op the program applies to a tracked tensor
reaches ``__torch_dispatch__``:

* ops that only move values (:data:`REINDEXING`: views, concatenation, padding...) run on the index
  arrays themselves, as torch views of each other, so that an in-place ``copy_`` into a view (how
  torch pads circularly) is tracked like any move;
* every other op needs a rule in :data:`RULES`, whose docstring's first line says why it is sound;
  an op without one is an :class:`UnsupportedOpError` naming it, never skipped.

The run is a dispatch mode, so it also sees the ops on constants: they run as usual, unless they are
random or write into a tensor the program did not create during the run (a parameter, a buffer);
``out=`` arguments are refused. TorchScript and .pt2 programs both run through the dispatcher,
so one set of rules serves both; composite ops (``linear``, ``pad``, ``batch_norm``...) arrive
decomposed into the aten ops listed here. What is bounded is the path the program takes: a program
whose control flow reads input values is refused (reading a tracked value has no rule), and so is an
op that merges the batch axis with another (a Linear on 3-D inputs, for one). Paths that depend on
something else are all run: every batch size of :data:`BATCH_SIZES` the program accepts, and for a
TorchScript program that reads ``self.training`` or ``torch.is_grad_enabled()``, both values; a
program that computes with a size that may be the batch size is refused before it runs
(:func:`torchscript_bound`, :func:`exported_program_bound`). Layers are named by their position in
the program: a dispatched op does not know its module.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from export.propagation import (
    GainCache,
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
    kronecker_norm_bound,
    matrix_norm_bound,
)
from zoo.bounds import elementwise as slopes
from zoo.bounds.elementwise import OutOfDomainError
from zoo.bounds.pooling import (
    Windows,
    average_pool_gain,
    log_softmax_gain,
    max_pool_gain,
    reduction_gain,
    softmax_gain,
    window_spread,
)
from zoo.certificate import LayerBound

__all__ = [
    "BATCH_SIZES",
    "REINDEXING",
    "RULES",
    "exported_program_bound",
    "program_bound",
    "torchscript_bound",
]

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
        raise VerificationError(
            f"aten.{_op_name(func)} reached a tracked tensor outside of a verification run"
        )


Rule = Callable[["_Run", torch._ops.OpOverload, dict[str, Any]], Any]


def _op_name(func: torch._ops.OpOverload) -> str:
    """The op's name without its overload and without the trailing ``_`` of an in-place variant."""
    return func.overloadpacket.__name__.removesuffix("_")


def _refusal(error: ValueError) -> type[VerificationError]:
    """The kind of refusal a rule's error makes: a parameter outside the domain of a bound is an
    unsupported op configuration."""
    if isinstance(error, VerificationError):
        return type(error)
    return UnsupportedOpError if isinstance(error, OutOfDomainError) else VerificationError


def _storage(tensor: torch.Tensor) -> int:
    """The address of a (non-tracked) tensor's memory, shared by its views."""
    return tensor.untyped_storage().data_ptr()


def _written_arguments(func: torch._ops.OpOverload) -> set[str]:
    """The arguments ``func`` writes into (``self`` of an in-place op, ``out=`` arguments)."""
    return {a.name for a in func._schema.arguments if a.alias_info is not None and a.alias_info.is_write}


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
    floor = _constant(floor, "floor of squares")
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


class _Run(TorchDispatchMode):
    """One run of a program on a tracked input: the tracker, the layers met, the first error.

    As a dispatch mode it sees every aten op the program runs: those on tracked tensors go to their
    rule (:meth:`call`); those on constants run as usual, unless they are random, or write into a
    tensor the program did not create during this run (a parameter, a buffer, a constant: the next
    call would compute something else), which is refused (:meth:`check_constant_op`).
    """

    def __init__(self, tracker: Tracker, progress: Progress | None = None) -> None:
        super().__init__()
        self.created: set[int] = set()
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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(isinstance(value, _Tracked) for value in tree_leaves((args, kwargs))):
            return self.call(func, args, kwargs)
        try:
            self.check_constant_op(func, args, kwargs)
        except VerificationError as error:
            self.error = self.error or type(error)(f"aten.{_op_name(func)}: {error}")
            raise self.error from error
        outputs = func(*args, **kwargs)
        inputs = {_storage(value) for value in tree_leaves((args, kwargs)) if isinstance(value, torch.Tensor)}
        for output in tree_leaves(outputs):
            if isinstance(output, torch.Tensor) and _storage(output) not in inputs:  # not a view of an input
                self.created.add(_storage(output))
        return outputs

    def check_constant_op(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> None:
        """Refuse a random op, and an op writing into a tensor not created during this run."""
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise UnsupportedOpError("it is random: the program computes another function at each call")
        written = _written_arguments(func)
        for argument, value in _arguments(func, args, kwargs).items():
            if (
                argument in written
                and isinstance(value, torch.Tensor)
                and value.numel()
                and _storage(value) not in self.created
            ):
                raise UnsupportedOpError(
                    f"it writes into its argument {argument!r}, a tensor the program did not create in "
                    "this call (a parameter, a buffer or a constant): the next call would compute "
                    "another function"
                )

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
            written = _written_arguments(func) - {"self"}
            if written or (name == _op_name(func) and "self" in _written_arguments(func)):
                raise UnsupportedOpError(f"it writes into its arguments {sorted(written or {'self'})} (out=)")
            if _op_name(func) not in RULES:  # relu_ and the like use the rule of relu
                raise UnsupportedOpError(f"unsupported op aten.{name}: no Lipschitz rule")
            outputs = self.apply(func, args, kwargs)
            in_place = name != _op_name(func)  # then move the result into self
            return _copy(self, {"self": args[0], "src": outputs}) if in_place else outputs
        except ValueError as error:  # VerificationError, or a bound engine's refusal
            self.error = self.error or _refusal(error)(f"aten.{name} (op {len(self.layers)}): {error}")
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


def _filled_like(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """zeros_like / ones_like / full_like: a constant of the input's shape, the same finite value in
    every entry (empty_like, uninitialised memory, has no rule)."""
    x = a["self"]
    value = {"zeros_like": 0.0, "ones_like": 1.0}.get(_op_name(func), a.get("fill_value"))
    if not math.isfinite(float(value)):
        raise UnsupportedOpError(f"it fills a tensor with {value}")
    return run.wrap(run.tracker.constant(x.shape), a.get("dtype") or x.dtype)


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
        gain = run.tracker.gain(
            conv_transpose_bound,
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
    gain = run.tracker.gain(
        conv_bound,
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
        run.tracker.linear(
            _signal(x, "first matrix"), run.tracker.gain(matrix_norm_bound, matrix), shape, layer
        ),
        x.dtype,
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
        if np.any(factors == 0):
            raise UnsupportedOpError("it divides by zero")
        factors = 1.0 / factors
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
    largest = _op_name(func) in ("maximum", "max")
    for squares, floor in ((x, other), (other, x)):
        if isinstance(squares, _Tracked) and squares.squares is not None:
            if not largest:
                raise UnsupportedOpError("only a maximum of squares with a constant floor is supported")
            return _floor(run, squares.squares, floor, squares.dtype)
    shape = run.shadow(func, a).shape
    operands = [run.tracker.broadcast(v.signal, shape) for v in (x, other) if isinstance(v, _Tracked)]
    dtype = next(v.dtype for v in (x, other) if isinstance(v, _Tracked))
    if len(operands) == 1:
        constant = other if isinstance(x, _Tracked) else x
        if isinstance(constant, torch.Tensor) and constant.is_floating_point() and constant.isnan().any():
            raise UnsupportedOpError("it compares with NaN constants")
        return run.wrap(run.tracker.elementwise(operands[0], 1.0, alike=_is_scalar(constant)), dtype)
    ranks = run.tracker.sorted_group(operands)
    return run.wrap(ranks[-1] if largest else ranks[0], dtype)


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
            gain = run.tracker.gain(adaptive_average_pool_bound, spatial, out)
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
    gain = run.tracker.gain(average_pool_gain, windows, include_pad, divisor)
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


_GROUP_RANKS = {"amax": -1, "amin": 0, "max": -1, "min": 0}
"""Reductions that keep one rank of each sorted group (Tracker.group_rank)."""


def _reduce(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """mean / sum / amax / amin / max / min / logsumexp / norms over dims (never the batch axis, each
    dim once) combine disjoint groups of n values: sums and means are bounded by Tracker.reduced
    (copies included), extremes are a rank of each sorted group (Tracker.group_rank), the others
    reduction_gain (``_GROUP_GAINS``). ``max`` and ``min`` of two tensors are maximum and minimum."""
    if func._overloadname == "other":
        return _extremum(run, func, a)
    x = a["self"]
    dims = a.get("dim")
    dims = list(range(x.dim())) if dims is None or dims == [] else dims
    dims = [d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)]
    if len(set(dims)) != len(dims):
        raise UnsupportedOpError(f"its dims {dims} name one axis twice")
    if 0 in dims:
        raise UnsupportedOpError("it reduces over the batch axis")
    outputs = run.shadow(func, a)
    values = outputs[0] if isinstance(outputs, tuple) else outputs
    count, shape = math.prod(x.shape[d] for d in dims), values.shape
    if x.squares is not None:
        return run.wrap_squares(x.squares.combined(_SQUARES_SPREADS[_op_name(func)](count), shape), x.dtype)
    if _op_name(func) in _GROUP_RANKS:
        ranked = run.wrap(
            run.tracker.group_rank(_signal(x), dims, shape, _GROUP_RANKS[_op_name(func)]), x.dtype
        )
        if not isinstance(outputs, tuple):
            return ranked
        return ranked, _Tracked(outputs[1], outputs[1].dtype, None, f"the indices of aten.{_op_name(func)}")
    if _op_name(func) in _GROUP_GAINS:
        gain = _GROUP_GAINS[_op_name(func)](count, a)
        return run.wrap(run.tracker.transformed(_signal(x), gain, shape), x.dtype)
    return run.wrap(run.tracker.reduced(_signal(x), dims, shape, mean=_op_name(func) == "mean"), x.dtype)


def _softmax(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """_softmax / _log_softmax of each group along ``dim``: softmax_gain / log_softmax_gain."""
    x = a["self"]
    dim = a["dim"] % x.dim()
    if dim == 0:
        raise UnsupportedOpError("it normalises along the batch axis")
    gain = softmax_gain() if _op_name(func) == "_softmax" else log_softmax_gain(x.shape[dim])
    return run.wrap(run.tracker.transformed(_signal(x), gain, x.shape), x.dtype)


_SCALE_ARGUMENTS = {1: ("scales",), 2: ("scales_h", "scales_w"), 3: ("scales_d", "scales_h", "scales_w")}


def _upsample(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """upsample_* (nearest, linear, cubic) interpolates along each spatial axis alone: on each
    channel the Kronecker product of one matrix per axis (kronecker_norm_bound), each the op's own
    response to one-hot inputs along its axis (the other axes of size 1, scale 1: the identity)."""
    x = a["input"] if "input" in a else a["self"]
    out_shape = run.shadow(func, a).shape
    spatial = tuple(x.shape[2:])
    scale_names = _SCALE_ARGUMENTS[len(spatial)]
    factors = []
    for axis, n in enumerate(spatial):
        b = dict(a)
        sizes = [n if i == axis else 1 for i in range(len(spatial))]
        b["input" if "input" in a else "self"] = torch.eye(n, dtype=x.dtype).reshape(n, 1, *sizes)
        if b.get("output_size") is not None:
            b["output_size"] = [out_shape[2 + i] if i == axis else 1 for i in range(len(spatial))]
        for i, name in enumerate(scale_names):
            if b.get(name) is not None and i != axis:
                b[name] = 1.0
        if b.get("scale_factors") is not None:
            b["scale_factors"] = [f if i == axis else 1.0 for i, f in enumerate(b["scale_factors"])]
        factors.append(_invoke(func, b, lambda value: value).double().reshape(n, -1).T)
    gain = run.tracker.gain(kronecker_norm_bound, factors)
    return run.wrap(run.tracker.transformed(_signal(x), gain, out_shape), x.dtype)


def _dropout(run: _Run, func: torch._ops.OpOverload, a: dict[str, Any]) -> Any:
    """Dropout in inference mode (train=False) is the identity; in training mode it is random."""
    x = a["input"]
    if a["train"] is not False:
        raise UnsupportedOpError("training-mode dropout is random")
    output = run.wrap(_signal(x), x.dtype)
    if _op_name(func) != "native_dropout":
        return output
    return output, torch.ones(x.shape, dtype=torch.bool)


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
    **dict.fromkeys(("zeros_like", "ones_like", "full_like"), _filled_like),
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
    **dict.fromkeys((*_SQUARES_SPREADS, *_GROUP_GAINS, *_GROUP_RANKS), _reduce),
    **dict.fromkeys(("_softmax", "_log_softmax"), _softmax),
    **dict.fromkeys(("dropout", "native_dropout", "feature_dropout", "alpha_dropout"), _dropout),
    **dict.fromkeys(
        (
            *(f"upsample_{mode}{d}d" for mode, d in (("nearest", 1), ("nearest", 2), ("nearest", 3))),
            *(f"_upsample_nearest_exact{d}d" for d in (1, 2, 3)),
            "upsample_linear1d",
            "upsample_bilinear2d",
            "upsample_trilinear3d",
            "upsample_bicubic2d",
            "_upsample_bilinear2d_aa",
            "_upsample_bicubic2d_aa",
        ),
        _upsample,
    ),
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


BATCH_SIZES = (2, 5, 1)
"""The batch sizes a program taking any batch size is run at (see :func:`program_bound`)."""


def program_bound(
    program: Callable[[torch.Tensor], Any],
    input_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    batches: Sequence[int] = BATCH_SIZES,
    progress: Progress | None = None,
    grad_modes: Sequence[bool] = (False,),
) -> GraphBound:
    """Sound per-example bound of the L2 Lipschitz constant of ``program``'s outputs w.r.t. its input,
    the largest over runs at each of ``batches`` and with gradients enabled or not (``grad_modes``).

    At batch 1, constants that line up with the batch axis would broadcast one example to several
    rows; at 2 and 5, ops that mix examples are seen. Whether the program may read the batch size at
    all is for the callers to check first (:func:`torchscript_bound`, :func:`exported_program_bound`).

    Args:
        program: a TorchScript module or a torch.export program's ``module()``, taking one tensor.
        input_shape: shape of one input example.
        dtype: dtype of the input.
        batches: the batch sizes to run at ((1,) for a program fixed to one example).
        progress: told of each aten op before its rule runs (their total is not known in advance).
        grad_modes: the values of ``torch.is_grad_enabled()`` to run with.

    Raises:
        UnsupportedOpError: an op (or op configuration) without a sound rule, naming it.
        VerificationError: a program that cannot be bounded (batch axis, a failure on the input).
    """
    gains, calls = GainCache(), itertools.count()

    def report(done: int, total: int | None, op: str) -> None:  # one count over all the runs
        if progress is not None:
            progress(next(calls), None, op)

    runs = [
        _run(program, input_shape, dtype, batch, grad, Tracker(batch, gains), report)
        for batch in batches
        for grad in grad_modes
    ]
    return max(runs, key=lambda run: run.lipschitz_bound)


def _run(
    program: Callable[[torch.Tensor], Any],
    input_shape: Sequence[int],
    dtype: torch.dtype,
    batch: int,
    grad: bool,
    tracker: Tracker,
    progress: Progress | None,
) -> GraphBound:
    """The bound of one run of ``program`` on a tracked batch of ``batch`` examples."""
    run = _Run(tracker, progress)
    where = f" at batch size {batch}" + (" with gradients enabled" if grad else "")
    try:
        with torch.set_grad_enabled(grad), run:
            outputs = program(run.wrap(tracker.source((batch, *input_shape), 1.0), dtype))
    except Exception as error:  # the TorchScript interpreter re-raises a rule's error as its own
        if run.error is not None:
            raise type(run.error)(f"{run.error}{where}") from None
        raise VerificationError(f"the program failed on a tracked input{where}: {error}") from error
    signals = []
    for output in tree_leaves(outputs):
        if isinstance(output, _Tracked):
            if output.signal is None:
                raise UnsupportedOpError(f"an output is {output.unusable}{where}")
            signals.append(output.signal)
        elif isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
            raise UnsupportedOpError(f"an output holds constant NaN or infinite values{where}")
    bound = tracker.bound(*signals) if signals else 0.0
    return GraphBound(bound, tuple(run.layers), tuple(input_shape))


# --- what a program may read besides its input ----------------------------------------------------

_CONVERSIONS = frozenset({"prim::NumToTensor", "aten::Int", "aten::ScalarImplicit", "aten::IntImplicit"})
_VIEWS = frozenset(
    {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::expand"}
)


def _read_axis(read: torch._C.Node) -> int | None:
    """The axis ``aten::size(t, d)`` reads, counted from the front (None when it is not a constant, or
    negative on a tensor of unknown rank)."""
    tensor, dim = list(read.inputs())
    if dim.node().kind() != "prim::Constant":
        return None
    axis = dim.toIValue()
    rank = tensor.type().dim() if isinstance(tensor.type(), torch._C.TensorType) else None
    if axis < 0:
        return None if rank is None else axis % rank
    return axis


def _input_dependent(graph: torch._C.Graph) -> set[str]:
    """The names of the values of a TorchScript graph computed from its input (its second input:
    the first is the module), through every block."""
    dependent = {list(graph.inputs())[1].debugName()}
    pending = [graph.block()]
    while pending:
        for node in pending.pop().nodes():
            pending.extend(node.blocks())
            if any(value.debugName() in dependent for value in node.inputs()):
                dependent.update(value.debugName() for value in node.outputs())
    return dependent


def _keeps_its_axis(read: torch._C.Node, axis: int, dependent: set[str]) -> bool:
    """Whether ``aten::size(t, axis)`` is only used (through int conversions) as entry ``axis`` of the
    shape of views of tensors computed from the input: their batch axis is first, of the batch
    size, so such a view keeps it as it is (how torch spells ``t.view(t.size(0), -1)``), and the
    batch size is no value of the program."""
    frontier = [read.output()]
    while frontier:
        for use in frontier.pop().uses():
            user = use.user
            if user.kind() in _CONVERSIONS:
                frontier.append(user.output())
            elif user.kind() == "prim::ListConstruct" and use.offset == axis:
                for view in user.output().uses():
                    viewed = view.user.inputsAt(0).debugName()
                    if view.user.kind() not in _VIEWS or view.offset != 1 or viewed not in dependent:
                        return False
            else:
                return False
    return True


_SIZE_READS = frozenset({"aten::size", "aten::sym_size", "aten::numel", "aten::len", "prim::shape"})


def _torchscript_reads(module: torch.jit.ScriptModule) -> set[str]:
    """What the TorchScript program reads besides its input and weights ('training', 'grad mode'),
    refusing what no run can bound: attribute assignments, and sizes that may be the batch size used
    as values.

    The batch axis of every tracked tensor stays first (the rules refuse ops that move it), so a size
    read along another axis is an example dimension, a constant; a read of axis 0 may be the batch
    size, and is accepted only where it keeps that axis in a view (:func:`_keeps_its_axis`).
    """
    reads = set()
    graph = module.inlined_graph  # kept alive while its nodes are read
    dependent = _input_dependent(graph)
    pending = [graph.block()]
    while pending:
        for node in pending.pop().nodes():
            pending.extend(node.blocks())
            kind = node.kind()
            if kind == "prim::SetAttr":
                raise UnsupportedOpError(
                    f"the program assigns the attribute {node.s('name')!r} of its module"
                )
            if kind == "prim::GetAttr" and node.s("name") == "training":
                reads.add("training")
            if kind == "aten::is_grad_enabled":
                reads.add("grad mode")
            if kind not in _SIZE_READS or node.inputsAt(0).debugName() not in dependent:
                continue  # the size of a tensor of constants is a constant
            axis = _read_axis(node) if kind == "aten::size" and len(list(node.inputs())) == 2 else None
            if axis is not None and (axis != 0 or _keeps_its_axis(node, axis, dependent)):
                continue
            raise UnsupportedOpError(
                f"the program reads a size ({kind}) that may be the batch size, and computes with it: it "
                "would compute another function at another batch size"
            )
    return reads


def torchscript_bound(
    module: torch.jit.ScriptModule,
    input_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> GraphBound:
    """:func:`program_bound` of a TorchScript module in every mode it can run in.

    The module runs as loaded (a TorchScript file keeps each module's training flag); when its
    program reads ``self.training`` it also runs with every module in training and in eval mode, and
    when it reads ``torch.is_grad_enabled()``, with gradients enabled and disabled. A program that
    assigns module attributes, or computes with a size read from a tensor, is refused.
    """
    reads = _torchscript_reads(module)
    saved = {name: child.training for name, child in module.named_modules()}
    flags: list[bool | None] = [None, True, False] if "training" in reads else [None]
    grad_modes = (False, True) if "grad mode" in reads else (False,)
    runs = []
    try:
        for flag in flags:
            if flag is not None:
                module.train(flag)
            runs.append(program_bound(module, input_shape, dtype, BATCH_SIZES, progress, grad_modes))
    finally:
        for name, child in module.named_modules():
            child.training = saved[name]
    return max(runs, key=lambda run: run.lipschitz_bound)


def _exported_batches(
    program: torch.export.ExportedProgram,
) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
    """(batch sizes to run at, example shape, dtype) of a program's one input: the batch sizes of
    BATCH_SIZES its range constraints allow, or 1 for a program fixed to one example."""
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise UnsupportedOpError(f"the program must have one input, it has {list(user_inputs)}")
    (node,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0]]
    example = node.meta["val"]
    batch, *shape = example.shape
    if not all(isinstance(d, int) for d in shape):
        raise UnsupportedOpError(f"the input shape {tuple(example.shape)} has dynamic dimensions")
    if not isinstance(batch, torch.SymInt):
        if batch != 1:
            raise UnsupportedOpError(
                f"the program takes a fixed batch of {batch}: export it with a dynamic one"
            )
        return (1,), tuple(shape), example.dtype
    ranges = [r for symbol, r in program.range_constraints.items() if str(symbol) == str(batch)]
    allowed = tuple(b for b in BATCH_SIZES if all(int(r.lower) <= b <= r.upper for r in ranges))
    return allowed or (1,), tuple(shape), example.dtype


def _check_exported_graph(program: torch.export.ExportedProgram) -> None:
    """Refuse a program that mutates its buffers or inputs, or computes with a size (a SymInt) other
    than as the same axis of a view (``x.view(x.size(0), -1)``)."""
    signature = program.graph_signature
    mutated = {**signature.buffers_to_mutate, **signature.user_inputs_to_mutate}
    if mutated:
        raise UnsupportedOpError(
            f"the program writes into {sorted(mutated.values())}: the next call would compute another "
            "function"
        )
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            arguments = dict(zip([a.name for a in node.target._schema.arguments], node.args, strict=False))
            arguments.update(node.kwargs)
            for name in _written_arguments(node.target):
                target = arguments.get(name)
                if isinstance(target, torch.fx.Node) and target.op == "placeholder":
                    raise UnsupportedOpError(
                        f"the program writes into {target.target!r} ({node.name}): the next call would "
                        "compute another function"
                    )
    views = {
        torch.ops.aten.view.default,
        torch.ops.aten.reshape.default,
        torch.ops.aten._unsafe_view.default,
        torch.ops.aten.expand.default,
    }
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.sym_size.int:
            continue
        tensor, axis = node.args
        size = str(node.meta["val"])
        for user in node.users:
            keeps = user.op == "call_function" and user.target in views and node in list(user.args[1])
            position = list(user.args[1]).index(node) if keeps else None
            viewed = user.args[0].meta.get("val") if keeps else None
            # a view whose entry is the size its own tensor has on that axis keeps the axis as it is
            if not (viewed is not None and position < viewed.dim() and str(viewed.shape[position]) == size):
                raise UnsupportedOpError(
                    f"the program computes with the size of axis {axis} of {tensor.name} ({user.name}): the "
                    "batch size may be a value of the program, which would then compute another function"
                )


def exported_program_bound(
    program: torch.export.ExportedProgram, progress: Progress | None = None
) -> GraphBound:
    """:func:`program_bound` of a torch.export program at the batch sizes its input allows, after
    :func:`_check_exported_graph`."""
    _check_exported_graph(program)
    batches, shape, dtype = _exported_batches(program)
    return program_bound(program.module(), shape, dtype, batches, progress)
