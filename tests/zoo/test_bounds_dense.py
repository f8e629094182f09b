"""Dense spectral bounds: exact path against numpy, Gram iteration soundness and tightness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from zoo.bounds import RELATIVE_MARGIN, gram_iteration_bound, matrix_norm_bound
from zoo.bounds.dense import batch_max_eigenvalue_bound


def _random(shape: tuple[int, ...], seed: int, complex_: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=generator, dtype=torch.float64)
    if not complex_:
        return real
    return torch.complex(real, torch.randn(shape, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (30, 20), (20, 30), (64, 64)])
@pytest.mark.parametrize("complex_", [False, True])
def test_exact_path_matches_numpy_with_margin(shape, complex_):
    matrix = _random(shape, seed=sum(shape), complex_=complex_)
    truth = np.linalg.norm(matrix.numpy(), ord=2)
    assert matrix_norm_bound(matrix) == pytest.approx(truth * (1 + RELATIVE_MARGIN), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_input_is_bounded_in_float64(dtype):
    matrix = _random((12, 9), seed=3).to(dtype)
    truth = np.linalg.norm(matrix.double().numpy(), ord=2)
    assert matrix_norm_bound(matrix) == pytest.approx(truth * (1 + RELATIVE_MARGIN), rel=1e-12)


def test_parameter_with_grad_is_accepted():
    layer = torch.nn.Linear(5, 4)
    truth = np.linalg.norm(layer.weight.detach().double().numpy(), ord=2)
    assert matrix_norm_bound(layer.weight) >= truth


ROUNDING = 1e-13  # float64 rounding of an essentially exact bound, far below RELATIVE_MARGIN


@pytest.mark.parametrize("seed", range(1, 4))
def test_gram_iteration_is_sound_and_tight_after_12_steps(seed):
    matrix = _random((300, 200), seed=seed)
    truth = np.linalg.norm(matrix.numpy(), ord=2)
    bound = float(gram_iteration_bound(matrix, steps=12))
    assert truth * (1 - ROUNDING) <= bound <= truth * (1 + 1e-6)


def test_gram_iteration_converges_even_with_close_top_singular_values():
    matrix = _random((300, 200), seed=0)
    singular = np.linalg.svd(matrix.numpy(), compute_uv=False)
    assert singular[1] / singular[0] > 0.999  # the hard case: 12 steps leave about 2e-6
    bounds = [float(gram_iteration_bound(matrix, steps=t)) for t in (12, 16)]
    assert singular[0] * (1 - ROUNDING) <= bounds[1] <= singular[0] * (1 + 1e-10)
    assert bounds[1] <= bounds[0] <= singular[0] * (1 + 1e-5)


def test_gram_iteration_batches_complex_matrices():
    matrices = _random((4, 3, 40, 25), seed=7, complex_=True)
    truth = np.linalg.norm(matrices.numpy(), ord=2, axis=(-2, -1))
    bounds = gram_iteration_bound(matrices, steps=12)
    assert bounds.shape == (4, 3)
    assert (bounds.numpy() >= truth * (1 - ROUNDING)).all()
    assert (bounds.numpy() <= truth * (1 + 1e-6)).all()


def test_gram_iteration_is_a_bound_at_every_step():
    matrix = _random((50, 80), seed=11)
    truth = np.linalg.norm(matrix.numpy(), ord=2)
    bounds = [float(gram_iteration_bound(matrix, steps=t)) for t in range(8)]
    assert bounds[0] == pytest.approx(float(torch.linalg.matrix_norm(matrix)), rel=1e-12)  # Frobenius
    assert all(b >= truth for b in bounds)
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in itertools.pairwise(bounds))


def test_gram_iteration_handles_huge_and_zero_matrices():
    huge = _random((20, 20), seed=5) * 1e200  # ||G_t|| would overflow without rescaling
    assert float(gram_iteration_bound(huge, steps=12)) == pytest.approx(
        np.linalg.norm(huge.numpy(), ord=2), rel=1e-6
    )
    assert float(gram_iteration_bound(torch.zeros(6, 4), steps=5)) == 0.0


def test_large_matrices_use_gram_iteration_and_stay_sound():
    matrix = _random((120, 90), seed=2)
    truth = np.linalg.norm(matrix.numpy(), ord=2)
    bound = matrix_norm_bound(matrix, exact_max_dim=50, gram_steps=12)
    assert truth <= bound <= truth * (1 + 2e-6)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (torch.ones(3), "2-D"),
        (torch.ones(2, 2, 2), "2-D"),
        (torch.ones(3, 3, dtype=torch.int64), "floating point"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        (torch.tensor([[1.0, float("inf")]]), "infinite"),
    ],
)
def test_bad_matrices_raise(value, message):
    with pytest.raises(ValueError, match=message):
        matrix_norm_bound(value)


def _psd_batch(count: int, size: int, seed: int) -> torch.Tensor:
    factors = _random((count, size, size), seed=seed, complex_=True)
    return factors.mH @ factors


@pytest.mark.parametrize("size", [3, 40])  # solved directly / pruned by Cholesky
def test_batch_max_eigenvalue_bound_is_sound_and_tight(size):
    grams = _psd_batch(100, size, seed=4)
    truth = float(torch.linalg.eigvalsh(grams)[:, -1].max())
    upper, lower = batch_max_eigenvalue_bound(grams)
    assert lower <= truth <= upper <= truth * (1 + 1e-8)


def test_batch_max_eigenvalue_bound_when_power_iteration_misleads():
    size = 32
    # the start vector of the power iteration is orthogonal to the top eigenvector of every matrix
    top = torch.zeros(size, dtype=torch.float64)
    top[:2] = torch.tensor([1.0, 0.5])  # the start is (-0.5, 1, -0.5, 1, ...)
    top /= top.norm()
    grams = _psd_batch(50, size, seed=9).real / 100 + 100.0 * torch.outer(top, top)
    truth = float(torch.linalg.eigvalsh(grams)[:, -1].max())
    upper, _ = batch_max_eigenvalue_bound(grams)
    assert truth <= upper <= truth * (1 + 1e-8)


def test_batch_max_eigenvalue_bound_with_ties_and_a_known_lower_value():
    grams = torch.eye(32, dtype=torch.complex128).repeat(30, 1, 1)  # every eigenvalue is 1
    upper, lower = batch_max_eigenvalue_bound(grams)
    assert lower == pytest.approx(1.0, rel=1e-12)
    assert 1.0 <= upper <= 1 + 1e-8
    upper, lower = batch_max_eigenvalue_bound(grams, known_lower=3.0)
    assert lower == 3.0
    assert 3.0 <= upper <= 3.0 * (1 + 1e-8)
