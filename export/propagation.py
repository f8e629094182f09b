"""Sound Lipschitz bounds of the tensors of a computation graph, propagated value by value.

The verifiers of exported artifacts walk a graph op by op and keep, for every tensor that depends on
the graph input, a :class:`Signal` saying which input-dependent values it is made of. This module
holds that bookkeeping (:class:`Tracker`) and the bounds that all graph formats share.

Sources and signals
    A *source* is a tensor made by a rule that knows a sound bound ``L`` of it with respect to the
    graph input ``x``: ``||S(x) - S(y)|| <= L ||x - y||``. The input itself is a source with
    ``L = 1``; the output of a convolution of a source is one with ``L = ||conv|| * L_in``. Every value
    of every source gets its own integer id.

    A :class:`Signal` is an integer array of the tensor's shape: entry ``k`` holds the id of one source
    value ``s`` with ``out_k = phi_k(s)`` for a 1-Lipschitz scalar map ``phi_k`` (the identity, ReLU,
    adding a constant...), or ``-1`` when ``out_k`` does not depend on the input. Ops that only move
    values (reshape, slice, concat, transpose, pad...) are evaluated on these arrays, so they are
    tracked exactly, copies included, and so is the pairing of values that a MaxMin or GroupSort makes.

    Bound of a signal: if value ``s`` appears ``m_s`` times and ``m_S`` is the largest ``m_s`` over
    the values of source ``S``, then
    ``||out(x) - out(y)||^2 <= sum_s m_s |s(x) - s(y)|^2 <= sum_S m_S L_S^2 ||x - y||^2``.

Variants
    A signal whose ``variant`` is not None is *uniform*: entries holding the same id hold the same
    value. Sources are; moving values keeps it when all moved signals that hold ids share one
    variant; a map applied alike to every entry (ReLU, a scalar clamp) makes a new variant; anything
    else (a concat of a ReLU of ``s`` with ``s`` itself, a per-entry clamp) gives None. A uniform
    tensor whose index array is a padding of its central part *is* that padding of a vector, which
    lets a convolution absorb a pad that a graph spells as separate ops (:meth:`Tracker.padding_of`).

Composite rules
    A rule that bounds a linear layer records it (:meth:`Tracker.linear`, with its weight as a
    :class:`~zoo.bounds.LinearMap`), and so does a ReLU (:meth:`Tracker.relu`). When a sum has two
    terms ``x`` and ``B relu(A x + b)``, with ``A``, ``B`` an adjoint pair of layers applied to that
    very signal ``x`` (the form of a folded SLL block), :meth:`Tracker.summed` also bounds the block
    as a whole (:func:`~zoo.bounds.adjoint_residual_bound`, about 1 instead of about 3) and keeps
    the smaller bound. Likewise ``x - mean(x)`` is a projection (:meth:`Tracker.centered`). The
    match is by signal identity: signals never change, so the same object means the same values.

Squares
    ``sqrt`` of a nonnegative combination of squares (an L2-norm pool, spelled square, pool, scale,
    floor, sqrt) is tracked as :class:`Squares` between the square and the root, see there.

Batch
    Arrays keep the batch axis first, and sources number their values example after example. So
    :meth:`Tracker.reindexed` refuses any op that moves a value into another example's row: a bound
    is per example, and holds for every batch size, only when no op mixes the examples of a batch.
    Ops that move values may, when their rule allows it, move the batch axis elsewhere (an ONNX
    exporter gathers pooling windows from a transposed tensor): such a signal records its
    ``batch_axis``, and only ops that move values may read it until the axis is first again.

Nonnegative combinations
    A sum or mean over some axes of a signal with copies (overlapping pooling windows) is bounded by
    a *majorant*: a nonnegative matrix ``M`` from the source values to the outputs with ``|out_p(x) -
    out_p(y)| <= sum_s M_ps |s(x) - s(y)|`` (``|sum_e w_e d_e| <= sum_e |w_e| |d_e|``), so the output
    moves by at most ``sum_S ||M_S|| L_S`` (:meth:`Tracker.reduced`), exact where counting copies is
    not. The majorant is recorded and carried on through sums and differences (:meth:`Tracker.summed`)
    and scalings by constants (:meth:`Tracker.scaled`): torch.onnx spells an adaptive pool with uneven
    windows as masked sums divided by the window sizes, which thus gets the exact norm too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from zoo.bounds import LinearMap, adjoint_residual_bound, sparse_matrix_norm_bound
from zoo.bounds.elementwise import FIXED_SLOPES, scaling, softplus, softsign
from zoo.bounds.pooling import reduction_gain
from zoo.certificate import LayerBound

__all__ = [
    "GainCache",
    "GraphBound",
    "Progress",
    "SignOfSquares",
    "Signal",
    "Squares",
    "Tracker",
    "UnsupportedOpError",
    "VerificationError",
]


Progress = Callable[[int, int | None, str], None]
"""Called by a verifier before each op: ops done so far, their total (None when it is not known
before the end, as for a program that is run), and the op's name."""


class VerificationError(ValueError):
    """An artifact cannot be verified: unreadable, malformed, or outside what can be bounded."""


class UnsupportedOpError(VerificationError):
    """The graph has an op (or an op configuration) with no sound Lipschitz rule."""


@dataclass(frozen=True, eq=False)
class Signal:
    """An input-dependent tensor: for each entry, the id of the source value it is a 1-Lipschitz
    function of, or -1 for a constant entry (shape: the tensor's, batch axis first); ``variant`` is
    not None when entries with the same id hold the same value."""

    index: np.ndarray
    variant: int | None
    batch_axis: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self.index.shape


@dataclass(frozen=True, eq=False)
class Squares:
    """Nonnegative combinations of the squares of a signal's values, on the way to their square root.

    Value ``o`` (of a tensor of ``shape``) is ``sum_e W[o, e] s_e^2`` over the entries ``s_e`` of
    ``signal``, for some ``W >= 0`` whose column sums are at most ``spread``. Its root is
    ``sqrt(spread)`` times the signal's bound: per value, ``|sqrt(W_o a^2) - sqrt(W_o b^2)| <=
    sqrt(W_o (a - b)^2)`` (triangle inequality of the ``W_o``-weighted norm), and summing the squares
    over ``o`` gives at most ``spread ||a - b||^2``. ``floored``: a max with constants >= 0 was
    taken, which only the root may follow (``sqrt(max(v, c)) = max(sqrt(v), sqrt(c))``, a
    1-Lipschitz map of the root). Squares are nonnegative, so Abs and ReLU leave them as they are,
    and ``sign(v) * v = v`` (:class:`SignOfSquares`): how torch spells its LPPool.
    """

    signal: Signal
    shape: tuple[int, ...]
    spread: float = 1.0
    floored: bool = False

    def combined(self, spread: float, shape: Sequence[int]) -> Squares:
        """After a nonnegative linear map whose column sums are at most ``spread`` (the column sums of
        a product of nonnegative matrices are at most the product of theirs)."""
        if self.floored:
            raise UnsupportedOpError("it combines squares after a floor: only their square root may follow")
        if not spread >= 0:
            raise UnsupportedOpError("it combines squares with a negative weight")
        return Squares(self.signal, tuple(shape), self.spread * spread)

    def with_floor(self) -> Squares:
        return Squares(self.signal, self.shape, self.spread, floored=True)


@dataclass(frozen=True, eq=False)
class SignOfSquares:
    """``sign(v)`` of :class:`Squares` ``v`` (0 or 1 entry by entry): not Lipschitz, and only a product
    with those very squares reads it (``sign(v) * v = v`` for ``v >= 0``)."""

    squares: Squares
    what = "the sign of squares of input-dependent values"


@dataclass(frozen=True)
class GraphBound:
    """The result of bounding a graph.

    Attributes:
        lipschitz_bound: sound bound, per example, of the L2 Lipschitz constant of the graph's outputs
            (all of them together) with respect to its input.
        layers: one entry per op that is not a mere move of values, in execution order; its ``bound``
            is the bound of the op's output with respect to the graph input (cumulative).
        input_shape: shape of one input example.
    """

    lipschitz_bound: float
    layers: tuple[LayerBound, ...]
    input_shape: tuple[int, ...]


def _cache_key(value: Any) -> Hashable:
    """A hashable key of a bound function's argument: arrays and tensors by dtype, shape and a digest
    of their bytes, dataclasses (LinearMap) and sequences by their items."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return (
            "array",
            value.dtype.str,
            value.shape,
            hashlib.blake2b(value.tobytes(), digest_size=16).digest(),
        )
    if dataclasses.is_dataclass(value):
        return (
            type(value).__name__,
            *(_cache_key(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, list | tuple):
        return tuple(_cache_key(item) for item in value)
    return value


class GainCache:
    """Gains computed once per artifact: the walks of one graph at several batch sizes meet the same
    layers, whose bounds (pure functions of their weights and geometry) need computing only once."""

    def __init__(self) -> None:
        self._values: dict[Hashable, float] = {}

    def __call__(self, function: Callable[..., float | None], *args: Any, **kwargs: Any) -> float | None:
        """``function(*args, **kwargs)``, computed on the first call with these arguments."""
        key = (
            function.__module__,
            function.__qualname__,
            _cache_key(args),
            _cache_key(sorted(kwargs.items())),
        )
        if key not in self._values:
            self._values[key] = function(*args, **kwargs)
        return self._values[key]


class Tracker:
    """The sources of one graph walk and the bounds of signals made of them.

    Args:
        batch: size of the batch axis of every signal (the walks of a graph whose batch is dynamic
            run at several sizes, so that mixing examples, and constants that line up with the batch
            axis, are caught; 1 for a graph fixed to one example).
        gains: computes the gains of layers (shared by the walks of one artifact).
    """

    def __init__(self, batch: int, gains: GainCache | None = None) -> None:
        self.batch = batch
        self.gain = gains or GainCache()
        self._starts: list[int] = []
        self._example_sizes: list[int] = []
        self._bounds: list[float] = []
        self._size = 0
        self._variants = itertools.count()
        self._groups: dict[tuple[int, ...], tuple[Sequence[Signal], list[Signal]]] = {}
        self._ranked: dict[tuple[int, ...], tuple[Signal, Signal]] = {}
        # id(output) -> (output, input, layer) / (output, input); the output is kept alive with its id
        self._linear: dict[int, tuple[Signal, Signal, LinearMap]] = {}
        self._means: dict[int, tuple[Signal, Signal]] = {}
        self._maps: dict[int, tuple[Signal, str, Signal, float]] = {}  # (output, kind, input, parameter)
        self._majorants: dict[int, tuple[Signal, sparse.csr_matrix]] = {}

    def source(self, shape: Sequence[int], bound: float) -> Signal:
        """A new source of ``shape`` (batch first) whose bound with respect to the graph input is
        ``bound``."""
        shape = tuple(shape)
        if not shape or shape[0] != self.batch:
            raise VerificationError(f"an op changes the batch axis (output shape {shape})")
        if not math.isfinite(bound):
            raise VerificationError(f"a bound is not finite ({bound})")
        count = math.prod(shape)
        self._starts.append(self._size)
        self._example_sizes.append(max(1, count // self.batch))
        self._bounds.append(float(bound))
        index = np.arange(self._size, self._size + count, dtype=np.int64).reshape(shape)
        self._size += count
        return Signal(index, next(self._variants))

    def constant(self, shape: Sequence[int]) -> Signal:
        """A signal of ``shape`` with no input-dependent entry, for a tensor that a program allocates
        and then fills with input-dependent values."""
        return self.reindexed(np.full(tuple(shape), -1, dtype=np.int64), [])

    def _owners(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self._starts), ids, side="right") - 1

    def bound(self, *signals: Signal) -> float:
        """Sound bound, per example, of the signals taken together (as one concatenated vector)."""
        ids = np.concatenate([signal.index.ravel() for signal in signals])
        ids, counts = np.unique(ids[ids >= 0], return_counts=True)
        worst = np.zeros(len(self._bounds), dtype=np.int64)
        np.maximum.at(worst, self._owners(ids), counts)
        return math.sqrt(float(np.dot(worst, np.square(self._bounds))))

    def _keeps_examples_along(self, index: np.ndarray, axis: int) -> bool:
        """Whether every input-dependent entry of ``index`` at position ``i`` of ``axis`` (of size
        batch) holds a value of example ``i``."""
        rows = np.moveaxis(index, axis, 0).reshape(self.batch, -1)
        used = rows >= 0
        ids = rows[used]
        owners = self._owners(ids)
        examples = (ids - np.asarray(self._starts)[owners]) // np.asarray(self._example_sizes)[owners]
        return bool(np.all(examples == np.broadcast_to(np.arange(self.batch)[:, None], rows.shape)[used]))

    def reindexed(self, index: np.ndarray, moved: Sequence[Signal], batch_moves: bool = False) -> Signal:
        """The signal of an op that only moved the values of the signals ``moved``, given ``index``,
        the op applied to their index arrays; refuses an op that mixes examples, or that moves the
        batch axis unless ``batch_moves`` (then the signal records where it went)."""
        index = np.array(index, dtype=np.int64)  # a copy: the signal must not change with its origin
        candidates = [a for a in range(index.ndim) if index.shape[a] == self.batch]
        if not candidates or (candidates[0] != 0 and not batch_moves):
            raise VerificationError(f"an op changes the batch axis (output shape {index.shape})")
        axes = [a for a in (candidates if batch_moves else [0]) if self._keeps_examples_along(index, a)]
        if not axes:
            raise VerificationError("an op mixes the examples of a batch: the bound would not be per example")
        if axes[0] != 0 and len(axes) > 1 and self.batch > 1:
            raise VerificationError(f"an op leaves the batch axis ambiguous (output shape {index.shape})")
        variants = {signal.variant for signal in moved if np.any(signal.index >= 0)}
        if not variants:
            return Signal(index, next(self._variants), axes[0])
        return Signal(index, variants.pop() if len(variants) == 1 else None, axes[0])

    def broadcast(self, signal: Signal, shape: Sequence[int]) -> Signal:
        """``signal`` broadcast to ``shape`` (numpy rules): values are copied, which its bound counts."""
        shape = tuple(shape)
        return (
            signal
            if signal.shape == shape
            else self.reindexed(np.broadcast_to(signal.index, shape), [signal])
        )

    def elementwise(self, signal: Signal, factor: float, alike: bool) -> Signal:
        """An elementwise map of ``signal`` whose scalar maps are ``factor``-Lipschitz, the same map
        for every entry when ``alike``: the same ids when ``factor`` is 1 (so pairings survive a
        ReLU), else a source bounded by ``factor`` times the signal's bound."""
        if factor != 1:
            return self.source(signal.shape, factor * self.bound(signal))
        uniform = alike and signal.variant is not None
        return Signal(signal.index, next(self._variants) if uniform else None)

    def transformed(self, signal: Signal, gain: float, shape: Sequence[int]) -> Signal:
        """The output, of ``shape``, of a ``gain``-Lipschitz map of the whole tensor ``signal``."""
        return self.source(shape, gain * self.bound(signal))

    def linear(self, signal: Signal, gain: float, shape: Sequence[int], layer: LinearMap | None) -> Signal:
        """:meth:`transformed` for a linear layer of operator norm at most ``gain``; ``layer`` (None
        when the rule has no :class:`~zoo.bounds.LinearMap` for it) is kept for composite rules."""
        output = self.transformed(signal, gain, shape)
        if layer is not None:
            self._linear[id(output)] = (output, signal, layer)
        return output

    def _majorant(self, signal: Signal) -> sparse.csr_matrix:
        """The recorded majorant of ``signal`` (see Nonnegative combinations), else its own: entry
        ``p`` of example 0 (flattened) moves by at most the move of the source value it holds."""
        recorded = self._majorants.get(id(signal))
        if recorded is not None:
            widened = recorded[1].copy()  # sources made since then are new columns
            widened.resize((widened.shape[0], self._size))
            return widened
        example = signal.index.reshape(self.batch, -1)[0]
        positions = np.flatnonzero(example >= 0)
        weights = np.ones(len(positions))
        return sparse.csr_matrix((weights, (positions, example[positions])), shape=(example.size, self._size))

    def _majorant_bound(self, majorant: sparse.csr_matrix) -> float:
        """``sum_S ||M_S|| L_S`` over the sources ``S`` of the majorant's columns."""
        majorant = majorant.tocoo()
        owners = self._owners(majorant.col)
        total = 0.0
        for owner in np.unique(owners):
            mine = owners == owner
            columns = majorant.col[mine] - self._starts[owner]
            shape = (majorant.shape[0], self._example_sizes[owner])
            total += (
                sparse_matrix_norm_bound(majorant.row[mine], columns, majorant.data[mine], shape)
                * (self._bounds[owner])
            )
        return total

    def _combined(self, shape: Sequence[int], bound: float, majorant: sparse.csr_matrix) -> Signal:
        """A source of ``shape`` bounded by the smaller of ``bound`` and the majorant's, which is
        recorded for the ops that combine it further."""
        output = self.source(shape, min(bound, self._majorant_bound(majorant)))
        self._majorants[id(output)] = (output, majorant)
        return output

    def _copies(self, majorant: sparse.csr_matrix) -> bool:
        """Whether a source value reaches more than one entry (else counting copies is exact)."""
        return majorant.nnz > len(np.unique(majorant.tocoo().col))

    def reduced(self, signal: Signal, axes: Sequence[int], shape: Sequence[int], mean: bool) -> Signal:
        """The sum (or the mean) of ``signal`` over ``axes`` (not the batch axis), of ``shape``.

        Disjoint groups of ``n`` entries: ``|sum| <= sqrt(n) ||group||`` and ``|mean| <=
        ||group|| / sqrt(n)``, with the signal's bound counting its copies; when a source value
        reaches several entries (overlapping windows) or the signal has a recorded majorant, the
        majorant's bound is used too (Nonnegative combinations). A mean that keeps its axes (size 1)
        is recorded for :meth:`centered`.
        """
        count = math.prod(signal.shape[a] for a in axes)
        weight = 1 / count if mean else 1.0
        bound = reduction_gain("mean" if mean else "sum", count) * self.bound(signal)
        majorant = self._majorant(signal)
        if id(signal) in self._majorants or self._copies(majorant):
            # example 0's entries, grouped by output: row o lists the positions summed into output o
            positions = np.arange(majorant.shape[0]).reshape(signal.shape[1:])
            groups = np.moveaxis(positions, [a - 1 for a in axes], list(range(-len(axes), 0)))
            groups = groups.reshape(-1, count)
            outputs = np.repeat(np.arange(len(groups)), count)
            weights = np.full(groups.size, weight)
            summing = sparse.csr_matrix((weights, (outputs, groups.ravel())), (len(groups), positions.size))
            output = self._combined(shape, bound, summing @ majorant)
        else:
            output = self.source(shape, bound)
        if mean and len(output.shape) == len(signal.shape):
            self._means[id(output)] = (output, signal)
        return output

    def scaled(self, signal: Signal, factors: np.ndarray, shape: Sequence[int]) -> Signal:
        """``signal`` (already of ``shape``) times constants ``factors`` (broadcast to ``shape``):
        max |factors|-Lipschitz (:func:`~zoo.bounds.elementwise.scaling`), entry by entry; with a
        recorded majorant, its rows are scaled too. A scaling by one number is kept for composite
        rules."""
        alike = np.size(factors) == 1
        gain = scaling(factors)
        output = self.elementwise(signal, gain, alike)
        if id(signal) in self._majorants:
            rows = np.abs(np.broadcast_to(np.asarray(factors, dtype=np.float64), tuple(shape)))
            majorant = sparse.diags(rows.reshape(self.batch, -1)[0]) @ self._majorant(signal)
            output = self._combined(shape, self.bound(output), majorant)
        return (
            self._record(output, "scale", signal, float(np.asarray(factors).ravel()[0])) if alike else output
        )

    def _record(self, output: Signal, kind: str, signal: Signal, parameter: float = 0.0) -> Signal:
        """Remember that ``output`` is the map ``kind`` (with ``parameter``) of ``signal``, applied
        alike to every entry, for the composite rules (which match by identity: signals never change,
        so the same object means the same values)."""
        self._maps[id(output)] = (output, kind, signal, parameter)
        return output

    def _recorded(self, output: Signal, kind: str) -> tuple[Signal, float] | None:
        """(input, parameter) when ``output`` was recorded as the map ``kind`` of its input."""
        entry = self._maps.get(id(output))
        return (entry[2], entry[3]) if entry is not None and entry[1] == kind else None

    def centered(self, x: Signal, mean: Signal, shape: Sequence[int]) -> Signal | None:
        """``x - mean`` (of ``shape``) when ``mean`` is a recorded mean of this very ``x``: subtracting
        from each group of entries its average is an orthogonal projection, so the result is bounded
        by ``x``'s bound; None otherwise."""
        recorded = self._means.get(id(mean))
        if recorded is None or recorded[1] is not x or tuple(shape) != x.shape:
            return None
        return self.source(x.shape, self.bound(x))

    def mapped(self, signal: Signal, kind: str, factor: float) -> Signal:
        """:meth:`elementwise` map ``kind`` ('relu', 'sigmoid', 'abs', 'softplus'...) of ``signal``,
        applied alike to every entry and ``factor``-Lipschitz, kept for the composite rules."""
        return self._record(self.elementwise(signal, factor, alike=True), kind, signal)

    def shifted(self, signal: Signal, offset: np.ndarray | float, negated: bool = False) -> Signal:
        """``signal + offset`` (``offset - signal`` when ``negated``) for finite constants ``offset``: a
        translation (the same ids); ``signal + c`` for one number ``c`` is kept for :meth:`quotient`."""
        offset = np.asarray(offset, dtype=np.float64)
        if not np.all(np.isfinite(offset)):
            raise UnsupportedOpError("it adds a NaN or infinite constant")
        output = self.elementwise(signal, 1.0, alike=offset.size == 1)
        if offset.size != 1 or negated:
            return output
        return self._record(output, "shift", signal, float(offset.ravel()[0]))

    def product(self, a: Signal, b: Signal) -> Signal | None:
        """``a * b`` when one factor is the recorded sigmoid of the other, very same, signal: SiLU
        (``x sigmoid(x)``), applied alike to every entry; None otherwise."""
        for x, gate in ((a, b), (b, a)):
            recorded = self._recorded(gate, "sigmoid")
            if recorded is not None and recorded[0] is x:
                return self.elementwise(x, FIXED_SLOPES["silu"], alike=True)
        return None

    def quotient(self, x: Signal, denominator: Signal) -> Signal | None:
        """``x / (c + |x|)`` when ``denominator`` is recorded as ``c + |x|`` of this very ``x``
        (how exporters spell softsign): :func:`~zoo.bounds.elementwise.softsign` (c); None otherwise."""
        shifted = self._recorded(denominator, "shift")
        absolute = None if shifted is None else self._recorded(shifted[0], "abs")
        if absolute is None or absolute[0] is not x:
            return None
        return self.elementwise(x, softsign(shifted[1]), alike=True)

    def thresholded_softplus(
        self, compared: Signal, threshold: float, above: Signal, below: Signal
    ) -> Signal | None:
        """``where(b x > t, x, softplus(b x) / b)`` (how torch.onnx spells torch's softplus with
        ``beta = b``, ``threshold = t``), given ``compared``, ``above`` and ``below``: one map of ``x``
        bounded by :func:`~zoo.bounds.elementwise.softplus` (b, t); None when they are not that."""
        readings = [(compared, 1.0)]  # compared is x itself (b = 1), or a recorded b x
        scale = self._recorded(compared, "scale")
        if scale is not None:
            readings.append(scale)
        for x, beta in readings:
            unscaled = below
            if beta != 1.0:
                divided = self._recorded(below, "scale")
                if divided is None or not math.isclose(divided[1] * beta, 1.0, rel_tol=1e-6):
                    continue
                unscaled = divided[0]
            inner = self._recorded(unscaled, "softplus")
            if x is above and inner is not None and inner[0] is compared:
                return self.elementwise(x, softplus(beta, threshold), alike=True)
        return None

    def squares(self, signal: Signal) -> Squares:
        """The squares of ``signal``'s values (not Lipschitz until pooled and rooted)."""
        return Squares(signal, signal.shape)

    def root(self, squares: Squares) -> Signal:
        """The square root of ``squares``: a source bounded by ``sqrt(spread)`` times the signal's bound."""
        return self.source(squares.shape, math.sqrt(squares.spread) * self.bound(squares.signal))

    def summed(self, terms: Sequence[Signal], signs: Sequence[float] | None = None) -> Signal:
        """The sum of same-shape terms, each times its sign (+1 or -1; all +1 when not given),
        bounded by the smaller of the triangle inequality (the sum of their bounds) and
        Cauchy-Schwarz (``sqrt(len(terms))`` times their joint bound), and for a residual block
        ``x +- B relu(A x + b)`` by :meth:`adjoint_residual_gain` times ``x``'s bound."""
        signs = [1.0] * len(terms) if signs is None else list(signs)
        if any(abs(sign) != 1 for sign in signs):
            raise ValueError(f"the signs of a sum must be +1 or -1, got {signs}")
        triangle = sum(self.bound(term) for term in terms)
        bound = min(triangle, math.sqrt(len(terms)) * self.bound(*terms))
        if len(terms) == 2:
            for (x, branch), relative in ((terms, signs[1] * signs[0]), (terms[::-1], signs[0] * signs[1])):
                gain = self.adjoint_residual_gain(x, branch, relative)
                if gain is not None:
                    bound = min(bound, gain * self.bound(x))
        majorant = sum(self._majorant(term) for term in terms)
        if any(id(term) in self._majorants for term in terms) or self._copies(majorant):
            return self._combined(terms[0].shape, bound, majorant)
        return self.source(terms[0].shape, bound)

    def adjoint_residual_gain(self, x: Signal, branch: Signal, sign: float = 1.0) -> float | None:
        """Bound of the map ``x -> x + sign * branch`` when ``branch`` was computed as ``B relu(A x +
        b)`` from this very ``x``, with recorded layers ``A`` and ``B`` of adjoint geometry: that of
        the block whose outer layer is ``sign * B`` (:func:`~zoo.bounds.adjoint_residual_bound`, sound
        for any weights, so for ``-B`` too); None otherwise."""
        outer = self._linear.get(id(branch))
        relu = None if outer is None else self._recorded(outer[1], "relu")
        inner = None if relu is None else self._linear.get(id(relu[0]))
        if inner is None or inner[1] is not x or branch.shape != x.shape:
            return None
        outer_map = outer[2] if sign == 1 else dataclasses.replace(outer[2], weight=sign * outer[2].weight)
        return self.gain(adjoint_residual_bound, inner[2], outer_map, x.shape[2:])

    def sorted_group(self, operands: Sequence[Signal]) -> list[Signal]:
        """Ranks of same-shape operands sorted value by value: ``ranks[r][k]`` is the r-th smallest of
        ``operands[i][k]`` over i (so Max is the last rank, Min the first).

        Sorting each group of values is 1-Lipschitz (``||sort(u) - sort(v)|| <= ||u - v||``), so all
        ranks together are a source bounded by the operands' joint bound. The group is cached for
        this set of operand objects (kept alive with it): a Max and a Min of the same operands share
        it, so together (MaxMin, GroupSort2) they cost no more than the operands themselves.
        """
        key = tuple(sorted(id(operand) for operand in operands))
        if key not in self._groups:
            first = operands[0].shape
            stacked = self.source((first[0], len(operands), *first[1:]), self.bound(*operands))
            ranks = [Signal(stacked.index[:, rank], stacked.variant) for rank in range(len(operands))]
            self._groups[key] = (operands, ranks)
        return self._groups[key][1]

    def group_rank(self, signal: Signal, axes: Sequence[int], shape: Sequence[int], rank: int) -> Signal:
        """Rank ``rank`` (0: the smallest, -1: the largest) of the values of ``signal`` in each group
        along ``axes`` (not the batch axis), as a tensor of ``shape`` (the reduction's output).

        All ranks of the groups together are the groups sorted, 1-Lipschitz like any sort, so the
        ranks taken of one signal along the same axes share one source bounded by the signal's bound
        (cached for this very signal): a GroupSort2 spelled ReduceMin, ReduceMax and Concat over axes
        of size 2 is bounded like its input, not twice.
        """
        key = (id(signal), *sorted(axes))
        if key not in self._ranked:
            moved = np.moveaxis(signal.index, list(axes), list(range(1, len(axes) + 1)))
            count = math.prod(signal.shape[a] for a in axes)
            stacked = self.source((self.batch, count, *moved.shape[1 + len(axes) :]), self.bound(signal))
            self._ranked[key] = (signal, stacked)
        stacked = self._ranked[key][1]
        return Signal(stacked.index[:, rank].reshape(tuple(shape)), stacked.variant)

    def padding_of(self, signal: Signal, kernel: Sequence[int]) -> tuple[Signal, tuple[int, ...], str] | None:
        """How ``signal`` (N, C, *spatial) is a padding of its central part, if it is one.

        Returns (central part, padding per spatial axis, torch padding mode) when ``signal`` is
        uniform and its index array equals the zero ('zeros': constant entries), 'circular',
        'reflect' or 'replicate' padding of its central part, for a symmetric padding of at most
        ``kernel - 1`` per axis (the largest that matches); None otherwise. Then the tensor is that
        padding of the central part's values, up to constants, and a convolution reading it is one
        convolution with that padding mode.
        """
        if signal.variant is None:
            return None
        index = torch.from_numpy(signal.index).double()
        spatial = signal.shape[2:]
        ranges = [range(min(k - 1, (n - 1) // 2), -1, -1) for n, k in zip(spatial, kernel, strict=True)]
        for pads in itertools.product(*ranges):
            if not any(pads):
                continue
            center = index[(..., *(slice(p, n - p) for p, n in zip(pads, spatial, strict=True)))]
            torch_pads = [p for p in reversed(pads) for _ in range(2)]
            for mode in _PADDING_MODES:
                padded = _padded(center, torch_pads, mode)
                if padded is not None and torch.equal(padded, index):
                    return self.reindexed(center.numpy(), [signal]), pads, mode
        return None


_PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


def _padded(index: torch.Tensor, pads: list[int], mode: str) -> torch.Tensor | None:
    """``index`` padded like torch pads a convolution's input (-1 marks zero padding), or None when
    the mode does not allow that padding (reflect needs pads smaller than the size)."""
    try:
        if mode == "zeros":
            return F.pad(index, pads, mode="constant", value=-1.0)
        return F.pad(index, pads, mode=mode)
    except (RuntimeError, ValueError, NotImplementedError):
        return None
