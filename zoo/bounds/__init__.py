"""Sound spectral bounds: the Lipschitz constants that certificates are made of.

* :func:`matrix_norm_bound`, :func:`gram_iteration_bound` — dense matrices (``zoo.bounds.dense``).
* :func:`conv_bound`, :func:`conv_transpose_bound`, :func:`conv_operator_matrix` — 1-D / 2-D / 3-D
  (transposed) convolutions with torch semantics (``zoo.bounds.conv``).
* :func:`adaptive_average_pool_bound`, :func:`sparse_matrix_norm_bound`, :func:`kronecker_norm_bound`
  — averaging and resizing operators, exact for overlapping windows, for sums of copied values and
  for separable maps (``zoo.bounds.averaging``).
* :mod:`zoo.bounds.elementwise` — the slopes of activations, clamps and scalings (GELU, ELU, PReLU...),
  each proven in its docstring, with the domain of its parameters.
* :mod:`zoo.bounds.pooling` — max / Lp / average pools and reductions (window coverage, averaging
  matrices, the gains of sums, means, norms...).
* :func:`adjoint_residual_bound` — residual blocks ``x + B relu(A x + b)`` with ``B`` of ``A``'s
  adjoint geometry, such as folded SLL blocks (``zoo.bounds.residual``).
* :func:`empirical_lipschitz` — a *lower* bound by attack, to measure how tight a certificate is
  (``zoo.bounds.empirical``); never a certificate.

Every certified bound is the float64 value times ``1 + RELATIVE_MARGIN``. The certifier
(``zoo.certify``) and the artifact verifiers (``export``) take every constant from here: they only
translate a module's or an op's arguments into a call.
"""

from zoo.bounds.averaging import adaptive_average_pool_bound, kronecker_norm_bound, sparse_matrix_norm_bound
from zoo.bounds.conv import conv_bound, conv_operator_matrix, conv_transpose_bound
from zoo.bounds.dense import RELATIVE_MARGIN, gram_iteration_bound, matrix_norm_bound
from zoo.bounds.empirical import empirical_lipschitz
from zoo.bounds.residual import LinearMap, adjoint_kernel, adjoint_residual_bound

__all__ = [
    "RELATIVE_MARGIN",
    "LinearMap",
    "adaptive_average_pool_bound",
    "adjoint_kernel",
    "adjoint_residual_bound",
    "conv_bound",
    "conv_operator_matrix",
    "conv_transpose_bound",
    "empirical_lipschitz",
    "gram_iteration_bound",
    "kronecker_norm_bound",
    "matrix_norm_bound",
    "sparse_matrix_norm_bound",
]
