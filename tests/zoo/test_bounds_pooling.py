"""``zoo.bounds.pooling``: window coverage against brute force, average pools against their dense
matrices, max / Lp pools and reductions against attained difference quotients and autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.bounds.elementwise import OutOfDomainError
from zoo.bounds.pooling import (
    Windows,
    average_pool_gain,
    lp_pool_gain,
    max_pool_gain,
    norm_gain,
    reduction_gain,
    window_coverage,
    window_spread,
)

# (size, kernel, stride, dilation, pad): 1-D pooling geometries, overlapping or not
GEOMETRIES = [(7, 3, 1, 1, 1), (8, 2, 2, 1, 0), (9, 3, 2, 2, 1), (5, 4, 3, 1, 2), (6, 1, 2, 1, 0)]


def _out(size: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_window_coverage_counts_the_windows_of_the_busiest_position(geometry):
    size, kernel, stride, dilation, pad = geometry
    out = _out(*geometry)
    counts = [0] * size
    for o in range(out):
        for j in range(kernel):
            position = o * stride - pad + dilation * j
            if 0 <= position < size:
                counts[position] += 1
    assert window_coverage(size, out, kernel, stride, dilation, pad) == max(counts)


def _dense(pool, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear pool of one channel, from one-hot inputs."""
    size = math.prod(shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, 1, *shape)
    return pool(basis).reshape(size, -1).T.numpy()


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0))]
)
def test_average_pool_gain_is_the_norm_of_its_matrix(kernel, stride, padding, include_pad):
    shape = (6, 5)

    def pool(x):
        return F.avg_pool2d(x, kernel, stride, padding, count_include_pad=include_pad)

    matrix = _dense(pool, shape)
    out = pool(torch.zeros(1, 1, *shape)).shape[2:]
    exact = float(np.linalg.norm(matrix, 2))
    windows = Windows(shape, out, kernel, stride, (1, 1), padding)
    gain = average_pool_gain(windows, include_pad)
    assert exact * (1 - 1e-12) <= gain <= exact * (1 + 1e-5)
    spread = window_spread(windows, include_pad)
    assert spread == pytest.approx(float(matrix.sum(axis=0).max()), rel=1e-12)


def test_average_pool_gain_with_a_divisor_override():
    def pool(x):
        return F.avg_pool2d(x, 2, 1, 1, divisor_override=3)

    shape = (4, 5)
    out = pool(torch.zeros(1, 1, *shape)).shape[2:]
    exact = float(np.linalg.norm(_dense(pool, shape), 2))
    gain = average_pool_gain(Windows(shape, out, (2, 2), (1, 1), (1, 1), (1, 1)), divisor_override=3)
    assert exact * (1 - 1e-12) <= gain <= exact * (1 + 1e-5)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_max_pool_gain_is_attained_by_a_spike_at_the_busiest_position(geometry):
    size, kernel, stride, dilation, pad = geometry
    out = _out(*geometry)
    gain = max_pool_gain(Windows((size,), (out,), (kernel,), (stride,), (dilation,), (pad,)))
    best = 0.0
    for position in range(size):
        spike = torch.zeros(1, 1, size, dtype=torch.float64)
        spike[..., position] = 1.0
        moved = F.max_pool1d(spike, kernel, stride, pad, dilation) - F.max_pool1d(
            0 * spike, kernel, stride, pad, dilation
        )
        best = max(best, float(moved.norm()))
    assert best == pytest.approx(gain, rel=1e-12)


def test_lp_pool_gain_bounds_the_pool_and_its_jacobian():
    kernel, stride = (2, 3), (1, 2)
    shape = (5, 7)
    out = F.lp_pool2d(torch.zeros(1, 1, *shape), 1.5, kernel, stride).shape[2:]
    for p in (1.0, 1.5, 2.0, 3.0):
        gain = lp_pool_gain(p, Windows(shape, out, kernel, stride, (1, 1), (0, 0)))

        def pool(x, p=p):
            # the p-norm of each window (torch's lp_pool is that only for even p)
            return F.avg_pool2d(x.abs() ** p, kernel, stride).mul(math.prod(kernel)) ** (1 / p)

        x = torch.randn(64, 1, *shape, dtype=torch.float64) + 3  # away from 0, where the norm is smooth
        y = x + 0.01 * torch.randn_like(x)
        ratios = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        assert float(ratios.max()) <= gain
    # p = 1 of a constant-sign change on one full window is attained: sqrt(6) per window
    one_window = Windows((2, 3), (1, 1), (2, 3), (1, 1), (1, 1), (0, 0))
    assert lp_pool_gain(1.0, one_window) == pytest.approx(math.sqrt(6))


def test_norm_gain_is_attained_and_refuses_what_is_no_norm():
    assert norm_gain(2.0, 9) == 1.0 and norm_gain(math.inf, 9) == 1.0
    assert norm_gain(1.0, 9) == pytest.approx(3.0)  # ||(1, ..., 1)||_1 = 9 = 3 ||.||_2
    with pytest.raises(OutOfDomainError, match=r"p=0\.5 is not a norm"):
        norm_gain(0.5, 4)


REDUCTIONS = {
    "sum": (lambda v: v.sum(dim=1), "sum", 2.0),
    "mean": (lambda v: v.mean(dim=1), "mean", 2.0),
    "max": (lambda v: v.amax(dim=1), "max", 2.0),
    "min": (lambda v: v.amin(dim=1), "min", 2.0),
    "logsumexp": (lambda v: v.logsumexp(dim=1), "logsumexp", 2.0),
    "l1 norm": (lambda v: torch.linalg.vector_norm(v, 1, dim=1), "norm", 1.0),
    "l2 norm": (lambda v: torch.linalg.vector_norm(v, 2, dim=1), "norm", 2.0),
}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reduction_gain_bounds_the_gradient_and_is_attained(name):
    reduce, kind, p = REDUCTIONS[name]
    count = 5
    gain = reduction_gain(kind, count, p)
    x = torch.randn(200, count, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(reduce(x).sum(), x)
    norms = gradient.norm(dim=1)
    assert float(norms.max()) <= gain * (1 + 1e-12)
    # attained: at a point where the gradient is the extreme one (a tie-free max, a one-sided norm...)
    if kind in ("sum", "mean", "norm"):
        assert float(norms.max()) == pytest.approx(gain, rel=1e-9)
    with pytest.raises(ValueError, match="unknown reduction"):
        reduction_gain("median", count)
