"""Exact norms of averaging operators: adaptive average pools, and sums of copied values with
nonnegative weights (how exporters spell pools whose windows overlap).

Both are certified bounds: float64 norms times ``1 + RELATIVE_MARGIN`` (:func:`matrix_norm_bound`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from torch.nn import functional as F

from zoo.bounds.dense import matrix_norm_bound

__all__ = [
    "adaptive_average_pool_bound",
    "adaptive_averaging_matrix",
    "kronecker_norm_bound",
    "sparse_matrix_norm_bound",
]


def adaptive_averaging_matrix(size: int, out: int) -> torch.Tensor:
    """The (out, size) float64 matrix of a 1-D adaptive average pool: row ``i`` averages torch's
    window ``[floor(i size / out), ceil((i + 1) size / out))``, the pool's response to one-hot rows."""
    one_hot_rows = torch.eye(size, dtype=torch.float64).unsqueeze(0)
    return F.adaptive_avg_pool1d(one_hot_rows, out)[0].T


def adaptive_average_pool_bound(input_size: Sequence[int], output_size: Sequence[int | None]) -> float:
    """Norm of an adaptive average pool over the trailing axes of sizes ``input_size``.

    On each channel the pool is the Kronecker product of one 1-D averaging matrix per axis, whose
    norm is the product of theirs: exact for windows of any overlap (a tiling pool gets
    ``1 / sqrt(window size)``). ``None`` in ``output_size`` keeps that axis's size (torch's rule).
    """
    bound = 1.0
    for size, out in zip(input_size, output_size, strict=True):
        bound *= matrix_norm_bound(adaptive_averaging_matrix(size, out or size))
    return bound


def kronecker_norm_bound(factors: Sequence[np.ndarray | torch.Tensor]) -> float:
    """Norm of the Kronecker product of ``factors`` (dense matrices): the product of their norms
    (the singular values of ``A (x) B`` are the products of theirs). A separable map of the spatial
    axes (a resize, whose interpolation acts on each axis alone) is such a product of one matrix per
    axis, applied to each channel alike."""
    bound = 1.0
    for factor in factors:
        matrix = (
            factor
            if isinstance(factor, torch.Tensor)
            else torch.from_numpy(np.asarray(factor, dtype=np.float64))
        )
        bound *= matrix_norm_bound(matrix)
    return bound


def _members(labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{label: the positions holding it}``."""
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    return {int(labels[group[0]]): group for group in groups}


def sparse_matrix_norm_bound(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> float:
    """Norm of the sparse (m, n) matrix with ``values`` at ``(rows, cols)`` (repeats are summed).

    The matrix is block diagonal over the connected components of its rows and columns (linked by
    nonzero entries), so its norm is the largest norm of a block; each block's is
    :func:`matrix_norm_bound` of its dense form, computed once per distinct block.
    """
    matrix = sparse.coo_matrix((values, (rows, cols)), shape=shape).tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    if matrix.nnz == 0:
        return 0.0
    pattern = (matrix != 0).astype(np.int8)
    graph = sparse.bmat([[None, pattern], [pattern.T, None]], format="csr")
    _, labels = connected_components(graph, directed=False)
    row_groups, col_groups = _members(labels[: shape[0]]), _members(labels[shape[0] :])
    norms: dict[tuple[tuple[int, int], bytes], float] = {}
    for label, block_cols in col_groups.items():
        block_rows = row_groups.get(label)
        if block_rows is None:  # columns without entries
            continue
        block = matrix[block_rows][:, block_cols].toarray()
        key = (block.shape, block.tobytes())
        if key not in norms:
            norms[key] = matrix_norm_bound(torch.from_numpy(block))
    return max(norms.values())
