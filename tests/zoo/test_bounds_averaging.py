"""zoo.bounds.averaging: adaptive pools and sparse nonnegative matrices against dense exact norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zoo.bounds import RELATIVE_MARGIN, adaptive_average_pool_bound, sparse_matrix_norm_bound


@pytest.mark.parametrize(
    ("input_size", "output_size"),
    [((7, 5), (3, 2)), ((2, 2), (3, 3)), ((1, 1), (7, 7)), ((8, 6), (4, 3)), ((5, 9), (None, 4))],
    ids=["overlapping", "uneven upsampling", "copies", "tiling", "one axis kept"],
)
def test_adaptive_average_pool_bound_is_the_exact_norm(input_size, output_size):
    pool = nn.AdaptiveAvgPool2d(output_size)
    size = int(np.prod(input_size))
    basis = torch.eye(size, dtype=torch.float64).reshape(size, 1, *input_size)
    exact = float(torch.linalg.matrix_norm(pool(basis).reshape(size, -1), ord=2))
    bound = adaptive_average_pool_bound(input_size, output_size)
    assert exact <= bound <= exact * (1 + 3 * RELATIVE_MARGIN)


@pytest.mark.parametrize("seed", range(6))
def test_sparse_matrix_norm_bound_is_the_dense_norm(seed):
    """Random sparse matrices with repeated entries (summed) and several blocks, some identical."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(1, 50, size=2)
    count = int(rng.integers(1, 3 * max(rows, cols)))
    r, c = rng.integers(0, rows, count), rng.integers(0, cols, count)
    values = rng.random(count) * (1 if seed % 2 else -1)
    # an identical copy of the whole pattern in a second, disjoint block
    r, c, values = np.r_[r, r + rows], np.r_[c, c + cols], np.r_[values, values]
    dense = np.zeros((2 * rows, 2 * cols))
    np.add.at(dense, (r, c), values)
    exact = np.linalg.norm(dense, 2)
    bound = sparse_matrix_norm_bound(r, c, values, (2 * rows, 2 * cols))
    assert exact * (1 - 1e-12) <= bound <= exact * (1 + 2 * RELATIVE_MARGIN)


def test_a_sparse_matrix_without_entries_has_norm_zero():
    empty = np.array([], dtype=np.int64)
    assert sparse_matrix_norm_bound(empty, empty, np.array([]), (3, 4)) == 0.0
    assert sparse_matrix_norm_bound(np.array([1, 1]), np.array([2, 2]), np.array([1.0, -1.0]), (3, 4)) == 0.0
