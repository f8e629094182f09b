"""Lipschitz constants of pools and reductions: maps that combine groups of values into one.

A pool slides windows over the spatial axes of each channel; a reduction combines all values along
some axes. Both are bounded here, once, for the certifier (``zoo.certify``, from modules) and the
artifact verifiers (``export``, from ONNX nodes and aten ops), which only translate their op's
arguments (kernel, stride, padding, dilation per spatial axis; torch / ONNX conventions) into a call.

Windows are products of one range per axis: along an axis of ``n`` positions, window ``o`` reads
positions ``o * stride - pad + dilation * j`` for ``j < kernel``; positions outside ``[0, n)`` are
padding. Every pool below acts on each channel alike, so its norm is that of one channel's map.

* Max / Lp / L2-norm pools (:func:`max_pool_gain`, :func:`lp_pool_gain`): each output moves by at
  most the (L2) change of its window; summing over outputs counts each pixel once per window that
  contains it, so the gain is ``sqrt(m)`` for ``m`` the largest number of windows containing a pixel
  (:func:`window_coverage` per axis, their product), times the p-norm's :func:`norm_gain`.
* Average pools (:func:`average_pool_gain`): linear maps. With the padding counted in the divisor
  it is a depthwise convolution with the constant kernel ``1 / prod(kernel)``, bounded by
  :func:`~zoo.bounds.conv_bound`; without (ONNX's default, torch's ``count_include_pad=False``),
  border windows are divided by their number of real pixels, which is a product over axes, so the
  map is the Kronecker product of one matrix per axis (:func:`averaging_matrix`) and its norm is the
  product of theirs (exact).
* Reductions of groups of ``n`` values (:func:`reduction_gain`), and the softmax and log-softmax of
  each group (:func:`softmax_gain`, :func:`log_softmax_gain`).

Tested against dense matrices, brute-force coverage counts and autograd in
``tests/zoo/test_bounds_pooling.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from zoo.bounds.conv import conv_bound
from zoo.bounds.dense import matrix_norm_bound
from zoo.bounds.elementwise import OutOfDomainError

__all__ = [
    "REDUCTIONS",
    "Windows",
    "average_pool_gain",
    "averaging_matrix",
    "log_softmax_gain",
    "lp_pool_gain",
    "max_pool_gain",
    "norm_gain",
    "reduction_gain",
    "softmax_gain",
    "window_coverage",
    "window_spread",
]


def _taps(size: int, out_size: int, kernel: int, stride: int, dilation: int, pad: int) -> np.ndarray:
    """(out_size, kernel) positions read by each window along one axis (outside [0, size): padding)."""
    for name, value in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        if value < 1:
            raise OutOfDomainError(f"a pooling {name} of {value} (must be >= 1)")
    if pad < 0:
        raise OutOfDomainError(f"a negative pooling padding ({pad})")
    return np.arange(out_size)[:, None] * stride - pad + dilation * np.arange(kernel)[None, :]


def window_coverage(size: int, out_size: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
    """Largest number of windows, along one axis of ``size`` positions, that contain one position."""
    taps = _taps(size, out_size, kernel, stride, dilation, pad).ravel()
    taps = taps[(taps >= 0) & (taps < size)]
    return int(np.bincount(taps, minlength=size).max()) if taps.size else 0


def averaging_matrix(
    size: int,
    out_size: int,
    kernel: int,
    stride: int,
    dilation: int,
    pad: int,
    count_include_pad: bool,
    divisor: float | None = None,
) -> np.ndarray:
    """The (out_size, size) float64 matrix of an average pool along one axis: row ``o`` holds
    ``1 / divisor`` at the real positions of window ``o``; the divisor is ``kernel`` when the padding
    counts, else the number of real positions of the window (``divisor`` overrides both)."""
    taps = _taps(size, out_size, kernel, stride, dilation, pad)
    real = (taps >= 0) & (taps < size)
    if divisor is None:
        divisor = np.full(out_size, float(kernel)) if count_include_pad else real.sum(axis=1).astype(float)
    if np.any(np.asarray(divisor) <= 0):
        raise OutOfDomainError("a window holds no real pixel and its average divides by zero")
    matrix = np.zeros((out_size, size))
    rows = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)
    np.add.at(matrix, (rows[real], taps[real]), 1.0)
    return matrix / np.broadcast_to(np.asarray(divisor, dtype=np.float64), (out_size,))[:, None]


@dataclass(frozen=True)
class Windows:
    """The windows of a pool over ``len(size)`` spatial axes, one entry per axis: input size, output
    size, kernel, stride, dilation, and the padding before the axis (the padding after only decides
    how many windows there are, which ``out_size`` says)."""

    size: tuple[int, ...]
    out_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("size", "out_size", "kernel", "stride", "dilation", "pad"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != len(self.size):
                raise ValueError(f"{name} has {len(value)} entries for {len(self.size)} spatial axes")
            object.__setattr__(self, name, value)

    def axes(self) -> zip:
        """(size, out_size, kernel, stride, dilation, pad) of each axis."""
        return zip(self.size, self.out_size, self.kernel, self.stride, self.dilation, self.pad, strict=True)

    def coverage(self) -> int:
        """Largest number of windows containing one pixel: windows are products of per-axis ranges."""
        return math.prod(window_coverage(*axis) for axis in self.axes())


def max_pool_gain(windows: Windows) -> float:
    """Max pool (and L2-norm pool): ``sqrt(m)``, ``m`` the largest number of windows containing a
    pixel (module docstring)."""
    return math.sqrt(windows.coverage())


def norm_gain(p: float, count: int) -> float:
    """Lipschitz constant, with respect to the L2 norm, of the p-norm of ``count`` values.

    ``| ||a||_p - ||b||_p | <= ||a - b||_p``, and ``||v||_p <= ||v||_2`` for ``p >= 2`` (``inf``
    included), ``<= count^(1/p - 1/2) ||v||_2`` for ``1 <= p < 2`` (Hoelder). Below 1 it is no norm.
    """
    if not p >= 1:
        raise OutOfDomainError(f"p={p} is not a norm")
    return count ** max(0.0, 1 / p - 1 / 2)


def lp_pool_gain(p: float, windows: Windows) -> float:
    """Lp pool: each output is the p-norm of its window, ``norm_gain(p, window size)``-Lipschitz in
    L2, and the windows cover a pixel at most ``m`` times: :func:`max_pool_gain` times that."""
    return max_pool_gain(windows) * norm_gain(p, math.prod(windows.kernel))


def average_pool_gain(
    windows: Windows, count_include_pad: bool = True, divisor_override: float | None = None
) -> float:
    """Sound operator norm of an average pool whose padding (``windows.pad``) is the same on both
    sides of each axis.

    Padding counted in the divisor (and no ``divisor_override``): each channel is convolved with the
    same constant kernel ``1 / prod(kernel)``, a block-diagonal operator whose norm is that of one
    channel's convolution (:func:`~zoo.bounds.conv_bound`). Otherwise the product of the norms of the
    per-axis :func:`averaging_matrix` (exact): the map is their Kronecker product, since a window's
    divisor is the product of its per-axis counts (``divisor_override`` divides every window by one
    number: it goes to the first axis).
    """
    if count_include_pad and divisor_override is None:
        weight = torch.full((1, 1, *windows.kernel), 1.0 / math.prod(windows.kernel), dtype=torch.float64)
        return conv_bound(
            weight,
            input_size=windows.size,
            stride=windows.stride,
            padding=windows.pad,
            dilation=windows.dilation,
        )
    if divisor_override is not None and not divisor_override > 0:
        raise OutOfDomainError(f"divisor_override {divisor_override} is not positive")
    gain = 1.0
    for number, axis in enumerate(windows.axes()):
        divisor = None if divisor_override is None else (divisor_override if number == 0 else 1.0)
        gain *= matrix_norm_bound(torch.from_numpy(averaging_matrix(*axis, count_include_pad, divisor)))
    return gain


def window_spread(windows: Windows, count_include_pad: bool = True) -> float:
    """Largest column sum of an average pool's matrix (all weights >= 0): with the padding counted,
    the largest number of windows containing a pixel over ``prod(kernel)``; without, the product over
    axes of the largest column sums of the :func:`averaging_matrix` (column sums of a Kronecker
    product multiply)."""
    if count_include_pad:
        return windows.coverage() / math.prod(windows.kernel)
    return math.prod(float(averaging_matrix(*axis, False).sum(axis=0).max()) for axis in windows.axes())


def softmax_gain() -> float:
    """Softmax over a group of values: 1/2.

    Its Jacobian at ``p = softmax(z)`` is ``diag(p) - p p^T``, symmetric, with row ``i`` holding
    ``p_i (1 - p_i)`` on the diagonal and off-diagonal entries of moduli summing to ``p_i (1 - p_i)``:
    by Gershgorin every eigenvalue is at most ``2 p_i (1 - p_i) <= 1/2`` (and at least 0). Attained
    in the limit of two equal logits far above the others.
    """
    return 0.5


def log_softmax_gain(count: int) -> float:
    """Log-softmax over a group of ``count`` values: ``sqrt(count)``.

    Its Jacobian is ``I - 1 p^T``; ``(I - p 1^T)(I - 1 p^T) = I - p 1^T - 1 p^T + n p p^T`` is the
    identity off ``span(1, p)`` and has the eigenvalues 0 and ``n ||p||^2`` on it (with ``1^T p = 1``),
    so the norm is ``sqrt(max(1, n ||p||^2)) <= sqrt(n)``, approached when one logit dominates.
    """
    return math.sqrt(count)


REDUCTIONS = ("max", "min", "logsumexp", "sum", "mean", "norm")
"""The reductions :func:`reduction_gain` bounds."""


def reduction_gain(kind: str, count: int, p: float = 2.0) -> float:
    """Lipschitz constant (L2 to absolute value) of reducing a group of ``count`` values to one.

    * ``max``, ``min``: ``|max(a) - max(b)| <= max |a - b| <= ||a - b||``: 1.
    * ``logsumexp``: its gradient is the softmax, of L2 norm at most its L1 norm, 1: 1.
    * ``sum``: ``|sum(a - b)| <= sqrt(n) ||a - b||`` (Cauchy-Schwarz, equality for a constant
      difference): ``sqrt(n)``; ``mean``: ``1 / sqrt(n)``.
    * ``norm``: the p-norm, :func:`norm_gain`.

    Disjoint groups (a reduction over some axes) keep the constant: the squares of the groups'
    changes add up to at most the constant squared times ``||x - y||^2``.
    """
    if kind in ("max", "min", "logsumexp"):
        return 1.0
    if kind == "sum":
        return math.sqrt(count)
    if kind == "mean":
        return 1 / math.sqrt(count)
    if kind == "norm":
        return norm_gain(p, count)
    raise ValueError(f"unknown reduction {kind!r} (expected one of {REDUCTIONS})")
